"""Configure-time generator of the pagedattn kernel project (run by CMake via execute_process).

Reads a kernel config (preset name or path), then writes into --out-dir:
  pagedattn_instances.cpp  the heavy TU: preamble + one explicit instantiation per line
  pagedattn_dispatch.cpp   extern template declarations + the runtime lookup table
  built_configs.json       built kernels and preset contents (installed into the package)
  _build_info.py           torch version the package is built against (installed)
Files are only rewritten when their content changes, so a re-configure does not rebuild.
Exit codes: 0 ok, 2 bad config (every problem printed as file:line, what, fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_config import (
    ConfigError,
    KernelConfig,
    list_presets,
    load_config,
    render_build_info,
    render_dispatch,
    render_instances,
    render_manifest,
    resolve_config,
)

EXIT_BAD_INPUT = 2


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic, so an interrupted configure never leaves half a TU
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="preset name (configs/NAME.conf) or path")
    ap.add_argument("--configs-dir", type=Path, required=True, help="directory of preset files")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--torch-version", required=True, help="torch.__version__ built against")
    args = ap.parse_args(argv)

    try:
        name, path = resolve_config(args.config, args.configs_dir)
        config = load_config(path, name)
        presets: dict[str, KernelConfig] = {}
        for preset in list_presets(args.configs_dir):
            presets[preset] = load_config(args.configs_dir / f"{preset}.conf", preset)
    except ConfigError as exc:
        print(
            f"pagedattn: bad kernel config (PAGEDATTN_CONFIG={args.config})\n{exc}", file=sys.stderr
        )
        return EXIT_BAD_INPUT

    out = args.out_dir
    write_if_changed(out / "pagedattn_instances.cpp", render_instances(config))
    write_if_changed(out / "pagedattn_dispatch.cpp", render_dispatch(config))
    write_if_changed(out / "built_configs.json", render_manifest(config, presets))
    write_if_changed(out / "_build_info.py", render_build_info(config, args.torch_version))
    print(
        f"pagedattn: config '{config.name}' ({path}): {len(config.keys)} kernels "
        f"({config.count('decode')} decode, {config.count('prefill')} prefill)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
