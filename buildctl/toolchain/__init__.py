"""Toolchains and compatibility: oneAPI discovery and pinning, torch probes, the compatibility
matrix, the vllm-xpu-kernels adapter and `buildctl doctor`.

Modules:
- `oneapi`      find oneAPI installs, pin one compiler version, capture its environment, detect
                mixed versions in an environment, compare Intel runtime wheels with the compiler
- `compat`      torch -> kernel ref / compiler / runtime matrix (`data/compat_matrix.json`)
- `probes`      torch (in a subprocess of the target python), runtime wheels, Level Zero
- `doctor`      host and toolchain checks, rendered as a table or JSON
- `patches`     unified-diff parsing and idempotent patch application
- `xpu_adapter` vllm-xpu-kernels: AOT devices, link parallelism, CMake defines, dep pre-staging
"""
