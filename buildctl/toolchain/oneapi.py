"""oneAPI compiler discovery, pinning, environment capture and mixed-version detection.

Two install layouts exist side by side on real machines:
- per component: `<root>/compiler/<ver>/env/vars.sh`, compiler in `<root>/compiler/<ver>/bin`,
  plus moving `compiler/latest` symlinks that the top-level `<root>/setvars.sh` follows;
- unified (2025+): `<root>/<ver>/oneapi-vars.sh`, compiler in `<root>/<ver>/bin`.

We never source `setvars.sh`: it follows `latest` (which moves when another toolkit is installed)
and silently does nothing when `SETVARS_COMPLETED` is inherited. Instead one pinned version's
vars script is sourced in a clean `env -i bash` and the resulting environment is diffed.

Pure functions: `parse_icpx_version`, `version_key`, `xpu_version_to_compiler`, `export_lines`,
`pinned_environ`, `find_mixed_versions`, `pin`. The runtime wheels torch pulls in are checked
against the compiler in `runtime_wheels.py`.
I/O: `discover`, `read_icpx_version`, `capture_env`, `env_command`.

Why these stay one module: discovery, pinning, environment capture and mixed-version
detection all apply the same rules about the two layouts (version keys, `latest` links, which
vars script belongs to which version), and the mixed-version check has to agree with discovery
on what one install is. Split apart, each part would need the others' rules.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from buildctl.errors import BadInput, BuildFailed

DEFAULT_ROOT = Path("/opt/intel/oneapi")
# Version directory names: 2025.3, 2026.0, occasionally 2024.0.2.
_VERSION_DIR_RE = re.compile(r"^\d{4}\.\d+(?:\.\d+)*$")
_ICPX_RE = re.compile(
    r"Intel\(R\) oneAPI DPC\+\+/C\+\+ Compiler\s+(?P<version>\d{4}\.\d+(?:\.\d+)*)"
    r"(?:\s+\((?P<build>[\d.]+)\))?"
)
# A clean, minimal base for sourcing vars scripts: nothing inherited from the user's shell.
_CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
_SPLIT = "__BUILDCTL_ENV_SPLIT__"
# Variables every shell changes by itself; they are not part of what a vars script sets.
_SHELL_NOISE = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})
# Variables the mixed-version check reads (PyTorch's CMake finds SYCL via SYCL_ROOT, CMPLR_ROOT).
CHECKED_VARS = ("PATH", "CPATH", "LIBRARY_PATH", "LD_LIBRARY_PATH", "CMPLR_ROOT", "SYCL_ROOT")
# Colon-separated list variables: pinned entries are prepended, not replacing the user's value.
PATH_LIST_VARS = frozenset(
    {
        "PATH",
        "LD_LIBRARY_PATH",
        "LIBRARY_PATH",
        "CPATH",
        "C_INCLUDE_PATH",
        "CPLUS_INCLUDE_PATH",
        "MANPATH",
        "INFOPATH",
        "PKG_CONFIG_PATH",
        "CMAKE_PREFIX_PATH",
        "NLSPATH",
        "OCL_ICD_FILENAMES",
        "DIAGUTIL_PATH",
        "PYTHONPATH",
    }
)

Layout = Literal["component", "unified"]


# ----------------------------------------------------------------------------- versions


def version_key(version: str) -> str:
    """The part of a oneAPI version that selects a toolkit: `2025.3.1.20251023` -> `2025.3`."""
    parts = version.strip().split(".")
    return ".".join(parts[:2])


def parse_icpx_version(text: str) -> tuple[str, str | None] | None:
    """`Intel(R) oneAPI DPC++/C++ Compiler 2025.3.1 (2025.3.1.20251023)` -> ("2025.3.1", build)."""
    match = _ICPX_RE.search(text)
    if not match:
        return None
    return match.group("version"), match.group("build")


def xpu_version_to_compiler(xpu: str | int | None) -> str | None:
    """`torch.version.xpu` ("20250301") -> "2025.3.1": torch packs year, minor, patch as digits."""
    if xpu is None:
        return None
    text = str(xpu).strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    return f"{int(text[:4])}.{int(text[4:6])}.{int(text[6:8])}"


def _same_toolkit(a: str, b: str) -> bool:
    return version_key(a) == version_key(b)


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class CompilerInstall:
    """One oneAPI DPC++/C++ compiler found on disk."""

    version: str  # the directory name: "2025.3"
    layout: Layout
    root: Path  # the oneAPI root holding it
    prefix: Path  # what CMPLR_ROOT becomes: compiler/2025.3 or 2025.3
    vars_script: Path
    icpx: Path | None
    full_version: str | None = None  # from `icpx --version`: "2025.3.1"
    build: str | None = None  # "2025.3.1.20251023"
    error: str | None = None  # why the version could not be read

    @property
    def key(self) -> str:
        return version_key(self.full_version or self.version)

    def describe(self) -> str:
        shown = self.full_version or self.version
        return f"oneAPI compiler {shown} ({self.layout} layout, {self.vars_script})"


@dataclass(frozen=True)
class Discovery:
    roots: tuple[Path, ...]
    installs: tuple[CompilerInstall, ...]
    # moving symlinks found: <root>/compiler/latest -> <root>/compiler/2026.0, <root>/latest -> ...
    latest_links: dict[str, str] = field(default_factory=dict)
    # the compiler version `<root>/setvars.sh` would select (it follows compiler/latest)
    setvars_selects: dict[str, str] = field(default_factory=dict)

    def versions(self) -> list[str]:
        return sorted({i.key for i in self.installs}, key=_numeric)


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def default_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    environ = os.environ if environ is None else environ
    roots = [DEFAULT_ROOT]
    if environ.get("ONEAPI_ROOT"):
        roots.insert(0, Path(environ["ONEAPI_ROOT"]))
    return roots


def read_icpx_version(
    icpx: Path, timeout: float = 30.0
) -> tuple[str | None, str | None, str | None]:
    """Run `icpx --version`: (version, build, error)."""
    try:
        proc = subprocess.run(
            [str(icpx), "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": _CLEAN_PATH, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, None, f"cannot run {icpx} --version: {exc}"
    parsed = parse_icpx_version(proc.stdout + "\n" + proc.stderr)
    if parsed is None:
        lines = (proc.stdout or proc.stderr).strip().splitlines()
        first = lines[0] if lines else "nothing"
        return None, None, f"{icpx} --version printed no version ({first})"
    return parsed[0], parsed[1], None


def _find_icpx(prefix: Path) -> Path | None:
    for rel in ("bin/icpx", "linux/bin/icpx"):
        candidate = prefix / rel
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _install(
    root: Path, version: str, layout: Layout, prefix: Path, script: Path
) -> CompilerInstall:
    icpx = _find_icpx(prefix)
    if icpx is None:
        error = f"no icpx in {prefix}"
        return CompilerInstall(version, layout, root, prefix, script, None, error=error)
    full, build, error = read_icpx_version(icpx)
    return CompilerInstall(version, layout, root, prefix, script, icpx, full, build, error)


def discover(
    extra_roots: Iterable[str | os.PathLike[str]] = (), environ: Mapping[str, str] | None = None
) -> Discovery:
    """Find every compiler under /opt/intel/oneapi, $ONEAPI_ROOT and `extra_roots`."""
    roots: list[Path] = []
    for candidate in [*map(Path, extra_roots), *default_roots(environ)]:
        resolved = candidate.expanduser()
        if resolved not in roots:
            roots.append(resolved)
    installs: list[CompilerInstall] = []
    links: dict[str, str] = {}
    selects: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for root in roots:
        if not root.is_dir():
            continue
        compiler_dir = root / "compiler"
        if compiler_dir.is_dir():
            for entry in sorted(compiler_dir.iterdir()):
                if entry.is_symlink():
                    links[str(entry)] = os.path.realpath(entry)
                    continue  # `latest` is reported, never treated as a version of its own
                script = entry / "env" / "vars.sh"
                if _VERSION_DIR_RE.match(entry.name) and script.is_file():
                    ident = (os.path.realpath(entry), "component")
                    if ident not in seen:
                        seen.add(ident)
                        installs.append(_install(root, entry.name, "component", entry, script))
        for entry in sorted(root.iterdir()):
            if entry.is_symlink() and entry.name == "latest":
                links[str(entry)] = os.path.realpath(entry)
                continue
            script = entry / "oneapi-vars.sh"
            if _VERSION_DIR_RE.match(entry.name) and script.is_file():
                ident = (os.path.realpath(entry), "unified")
                if ident not in seen:
                    seen.add(ident)
                    installs.append(_install(root, entry.name, "unified", entry, script))
        # setvars.sh follows compiler/latest (component layout) or latest (unified layout)
        for latest in (root / "compiler" / "latest", root / "latest"):
            if (root / "setvars.sh").is_file() and latest.exists():
                selects[str(root / "setvars.sh")] = Path(os.path.realpath(latest)).name
                break
    return Discovery(tuple(roots), tuple(installs), links, selects)


def pin(
    installs: Sequence[CompilerInstall], version: str, prefer: Layout = "component"
) -> CompilerInstall:
    """Choose the install for `version` ("2025.3" or "2025.3.1"); never follows `latest`.

    The per-component `compiler/<ver>/env/vars.sh` is preferred: it is the script the field
    report found to work where `setvars.sh` picked a newer, broken compiler.
    """
    wanted = version.strip()
    if not re.fullmatch(r"\d{4}\.\d+(?:\.\d+)*", wanted):
        raise BadInput(
            f"cannot read oneAPI compiler version {version!r}",
            "give a version like 2025.3 or 2025.3.1 (never 'latest': it moves)",
        )

    def matches(inst: CompilerInstall) -> bool:
        if inst.error is not None or inst.icpx is None:
            return False
        full = inst.full_version or inst.version
        if wanted.count(".") == 1:
            return version_key(full) == wanted
        return full == wanted or full.startswith(wanted + ".")

    found = [i for i in installs if matches(i)]
    if not found:
        known = sorted({i.full_version or i.version for i in installs if i.error is None})
        broken = [f"{i.prefix}: {i.error}" for i in installs if i.error is not None]
        fix = (
            f"install oneAPI DPC++/C++ compiler {wanted} (apt: intel-oneapi-compiler-dpcpp-cpp-"
            f"{wanted}) or pass its root with --oneapi-root"
        )
        found_text = ", ".join(known) if known else "none"
        what = f"oneAPI compiler {wanted} not found (found: {found_text})"
        if broken:
            what += "; unusable installs: " + "; ".join(broken)
        raise BadInput(what, fix)
    found.sort(key=lambda i: (i.layout != prefer, [-n for n in _numeric(i.full_version or "")]))
    return found[0]


# ----------------------------------------------------------------------------- env capture


@dataclass(frozen=True)
class CapturedEnv:
    """What sourcing one vars script changed, relative to a clean base environment."""

    version: str
    script: Path
    base: dict[str, str]
    values: dict[str, str]  # new or changed variables, full value after sourcing
    unset: tuple[str, ...] = ()

    def added_entries(self, key: str) -> list[str]:
        """The list entries the script added to a PATH-like variable, in order."""
        before = set(_split_list(self.base.get(key, "")))
        out: list[str] = []
        for entry in _split_list(self.values.get(key, "")):
            if entry not in before and entry not in out:
                out.append(entry)
        return out


def _split_list(value: str) -> list[str]:
    return [p for p in value.split(":") if p]


def _parse_env0(blob: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for record in blob.split(b"\0"):
        if not record:
            continue
        key, sep, value = record.decode("utf-8", "surrogateescape").partition("=")
        if sep:
            out[key] = value
    return out


_CAPTURE_SCRIPT = f"""
script="$1"
set --
unset SETVARS_COMPLETED
env -0
printf '%s\\0' {_SPLIT}
. "$script" >&2 </dev/null
rc=$?
env -0
exit $rc
"""


def capture_env(
    install: CompilerInstall, *, home: str | None = None, timeout: float = 120.0
) -> CapturedEnv:
    """Source the pinned vars script in `env -i bash` and return what it changed.

    Only HOME, a minimal PATH and LANG are passed in: nothing from the caller's shell (in
    particular no SETVARS_COMPLETED, no other compiler's PATH) can leak into the result.
    """
    home = home or os.environ.get("HOME") or "/tmp"
    argv = [
        "env",
        "-i",
        f"HOME={home}",
        f"PATH={_CLEAN_PATH}",
        "LANG=C.UTF-8",
        "bash",
        "--noprofile",
        "--norc",
        "-c",
        _CAPTURE_SCRIPT,
        "buildctl-capture",
        str(install.vars_script),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(
            f"sourcing {install.vars_script} did not finish within {timeout:.0f}s",
            "run it by hand in a clean shell (env -i bash --norc) to see where it waits",
        ) from exc
    marker = f"{_SPLIT}\0".encode()
    before_blob, sep, after_blob = proc.stdout.partition(marker)
    if proc.returncode != 0 or not sep:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BuildFailed(
            f"sourcing {install.vars_script} failed (exit {proc.returncode}): {' | '.join(tail)}",
            f"check the install of oneAPI {install.version}: run "
            f"`bash -c '. {install.vars_script}'` in a clean shell to see the error",
        )
    before = _parse_env0(before_blob)
    after = _parse_env0(after_blob)
    values = {k: v for k, v in after.items() if k not in _SHELL_NOISE and before.get(k) != v}
    values.pop("SETVARS_COMPLETED", None)  # never hand this on: it disables later vars scripts
    unset = tuple(sorted(k for k in before if k not in after and k not in _SHELL_NOISE))
    base = {k: v for k, v in before.items() if k not in _SHELL_NOISE}
    version = install.full_version or install.version
    return CapturedEnv(version, install.vars_script, base, values, unset)


def _is_list_var(key: str) -> bool:
    return key in PATH_LIST_VARS or key.endswith("_PATH")


def export_lines(captured: CapturedEnv) -> list[str]:
    """Shell lines for `eval "$(buildctl env --compiler X)"`.

    PATH-like variables get the pinned entries prepended to whatever the user's shell has, so a
    fresh shell keeps its own PATH; everything else is exported as captured. Values are quoted
    with `shlex.quote`, so spaces or `$` in paths cannot be expanded by the shell.
    """
    lines = [
        f"# oneAPI compiler {captured.version} from {captured.script}",
        "unset SETVARS_COMPLETED",
    ]
    for key in sorted(captured.values):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue  # bash functions exported by some scripts (BASH_FUNC_x%%) are not variables
        if _is_list_var(key):
            added = captured.added_entries(key)
            if not added:
                continue
            joined = shlex.quote(":".join(added))
            lines.append(f'export {key}={joined}"${{{key}:+:${key}}}"')
        else:
            lines.append(f"export {key}={shlex.quote(captured.values[key])}")
    lines.extend(f"unset {k}" for k in captured.unset if re.fullmatch(r"[A-Za-z_]\w*", k))
    return lines


def pinned_environ(
    captured: CapturedEnv, environ: Mapping[str, str], roots: Sequence[str] = ()
) -> dict[str, str]:
    """`environ` with the pinned compiler applied and every other oneAPI version removed.

    For build subprocesses: entries of other oneAPI versions are dropped from the PATH-like
    variables (mixing them is what breaks builds), the pinned entries go first.
    """
    env = dict(environ)
    env.pop("SETVARS_COMPLETED", None)
    pinned = version_key(captured.version)
    # Every list variable, also those the script does not touch (CPATH left by setvars.sh).
    list_keys = {k for k in (*env, *captured.values) if _is_list_var(k)}
    for key in sorted(list_keys):
        added = captured.added_entries(key)
        kept = [
            e
            for e in _split_list(env.get(key, ""))
            if e not in added and _entry_version(e, roots) in (None, pinned)
        ]
        if added or kept:
            env[key] = ":".join(added + kept)
        else:
            env.pop(key, None)
    for key, value in captured.values.items():
        if not _is_list_var(key):
            env[key] = value
    for key in CHECKED_VARS:
        stale = key in env and not _is_list_var(key) and key not in captured.values
        if stale and _entry_version(env[key], roots) not in (None, pinned):
            del env[key]  # e.g. a SYCL_ROOT left over from another toolkit
    for key in captured.unset:
        env.pop(key, None)
    return env


def env_command(compiler: str, roots: Iterable[str | os.PathLike[str]] = ()) -> str:
    """What `buildctl env --compiler 2025.3` prints: export lines to `eval`."""
    found = discover(roots)
    install = pin(found.installs, compiler)
    return "\n".join(export_lines(capture_env(install))) + "\n"


# ----------------------------------------------------------------------------- mixed versions

_COMPONENT_RE = re.compile(r"/compiler/(?P<ver>\d{4}\.\d+(?:\.\d+)*|latest)(?=/|$)")
_UNIFIED_RE = re.compile(r"/oneapi/(?P<ver>\d{4}\.\d+(?:\.\d+)*|latest)(?=/|$)")


def _entry_version(
    entry: str, roots: Sequence[str] = (), latest: Mapping[str, str] | None = None
) -> str | None:
    """The oneAPI toolkit version an env entry belongs to ("2025.3", "latest") or None."""
    for regex in (_COMPONENT_RE, _UNIFIED_RE):
        match = regex.search(entry)
        if match:
            return _resolve_latest(match.group("ver"), entry[: match.end()], latest)
    for root in roots:
        base = str(root).rstrip("/")
        if entry == base or entry.startswith(base + "/"):
            rest = entry[len(base) + 1 :].split("/", 1)[0]
            if _VERSION_DIR_RE.match(rest) or rest == "latest":
                return _resolve_latest(rest, f"{base}/{rest}", latest)
    return None


def _resolve_latest(ver: str, link_path: str, latest: Mapping[str, str] | None) -> str:
    if ver != "latest":
        return version_key(ver)
    if latest:
        target = latest.get(link_path)
        if target:
            name = Path(target).name
            if _VERSION_DIR_RE.match(name):
                return version_key(name)
    return "latest"


@dataclass(frozen=True)
class EnvConflict:
    var: str
    versions: tuple[str, ...]  # oneAPI versions found in this variable
    severity: Literal["fail", "warn"]
    message: str
    fix: str


def _fix_for(pinned: str | None, versions: Iterable[str]) -> str:
    if pinned:
        return (
            "start a new shell without setvars.sh and run: "
            f'eval "$(buildctl env --compiler {version_key(pinned)})"'
        )
    options = ", ".join(sorted({v for v in versions if v != "latest"}, key=_numeric)) or "X"
    first = options.split(", ")[0]
    return (
        "start a new shell without setvars.sh and run: "
        f'eval "$(buildctl env --compiler {first})" '
        f"(pick the one your torch was built with; found: {options})"
    )


def find_mixed_versions(
    environ: Mapping[str, str],
    pinned: str | None = None,
    roots: Sequence[str] = (),
    latest: Mapping[str, str] | None = None,
) -> list[EnvConflict]:
    """Report oneAPI version mixes in PATH, CPATH, LIBRARY_PATH, LD_LIBRARY_PATH, CMPLR_ROOT,
    SYCL_ROOT (pure: `latest` maps symlink paths to their targets when the caller knows them).

    Mixed versions surface as `LIBUR_LOADER_0.11 not found`, undefined UR symbols or a missing
    `libsycl.so.8`/`.9` long after configure; catching them here is cheap.
    """
    per_var: dict[str, list[str]] = {}
    for var in CHECKED_VARS:
        value = environ.get(var)
        if not value:
            continue
        entries = _split_list(value) if _is_list_var(var) else [value]
        found: list[str] = []
        for entry in entries:
            ver = _entry_version(entry, roots, latest)
            if ver is not None and ver not in found:
                found.append(ver)
        if found:
            per_var[var] = found
    concrete = {v for vs in per_var.values() for v in vs if v != "latest"}
    conflicts: list[EnvConflict] = []
    if pinned:
        want = version_key(pinned)
        for var, versions in per_var.items():
            foreign = [v for v in versions if v not in (want, "latest")]
            if foreign:
                conflicts.append(
                    EnvConflict(
                        var,
                        tuple(versions),
                        "fail",
                        f"{var} has oneAPI {', '.join(foreign)} but the pinned compiler is {want}",
                        _fix_for(pinned, concrete),
                    )
                )
    elif len(concrete) > 1:
        for var, versions in per_var.items():
            conflicts.append(
                EnvConflict(
                    var,
                    tuple(versions),
                    "fail",
                    f"oneAPI versions are mixed ({', '.join(sorted(concrete, key=_numeric))}); "
                    f"{var} has {', '.join(versions)}",
                    _fix_for(None, concrete),
                )
            )
    for var, versions in per_var.items():
        if "latest" in versions:
            conflicts.append(
                EnvConflict(
                    var,
                    tuple(versions),
                    "warn",
                    f"{var} goes through a oneAPI 'latest' symlink, which moves when another "
                    "toolkit is installed",
                    _fix_for(pinned, concrete),
                )
            )
    if environ.get("SETVARS_COMPLETED"):
        conflicts.append(
            EnvConflict(
                "SETVARS_COMPLETED",
                (),
                "warn",
                "SETVARS_COMPLETED is set: setvars.sh/vars scripts sourced from this shell "
                "silently do nothing",
                _fix_for(pinned, concrete),
            )
        )
    return conflicts
