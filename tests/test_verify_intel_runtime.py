"""`verify` against real Intel runtime wheels from PyPI: SYCL sonames and symbols, not "unchecked".

The runtime releases are the ones torch XPU pins (/work/shared/reference/torch-xpu-oneapi.tsv):
oneAPI 2025.3.2 (torch 2.11/2.12, libsycl.so.8) and 2026.0.0 (torch 2.13, libsycl.so.9), each as
intel-sycl-rt (libsycl) + intel-cmplr-lib-ur (libur_loader, which libsycl needs) +
intel-cmplr-lib-rt (libimf/libsvml/libirng/libintlc, which libur_loader needs). The wheels are
downloaded once by pip (~425 MB) into `.buildctl-cache/runtime-wheels/`; without PyPI the tests
that need them skip. The probe is built with g++ against the real libsycl.so.8 and references
real mangled libsycl functions picked here from the wheels' symbol tables.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel.reproducible import write_wheel
from buildctl.wheel.runtime_libs import RuntimeLibs, load_runtime
from buildctl.wheel.verify import TorchLibs, demangle, verify_wheel

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "sycl_probe"))
import sycl_probe_build as spb

OLD, NEW = "2025.3.2", "2026.0.0"
PACKAGES = ("intel-sycl-rt", "intel-cmplr-lib-ur", "intel-cmplr-lib-rt")
LIBSYCL = {OLD: "libsycl.so.8", NEW: "libsycl.so.9"}
PROBE = "sycl_probe/libsycl_probe.so"


@dataclass(frozen=True)
class Picked:
    gone: str | None  # exported by libsycl.so.8 (2025.3.2), not by libsycl.so.9 (2026.0.0)
    kept: str  # exported by both

    def symbols(self) -> list[str]:
        return [s for s in (self.gone, self.kept) if s]


@pytest.fixture(scope="module")
def torch213() -> TorchLibs:
    return TorchLibs.from_installed(sys.executable)


@pytest.fixture(scope="module")
def wheels() -> dict[str, dict[str, Path]]:
    try:
        return {rel: {pkg: spb.runtime_wheel(pkg, rel) for pkg in PACKAGES} for rel in (OLD, NEW)}
    except spb.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def runtime(wheels: dict[str, dict[str, Path]]) -> dict[str, list[RuntimeLibs]]:
    return {rel: load_runtime([wheels[rel][p] for p in PACKAGES]) for rel in (OLD, NEW)}


@pytest.fixture(scope="module")
def libsycl(wheels: dict[str, dict[str, Path]]) -> dict[str, Path]:
    return {rel: spb.extract_lib(wheels[rel]["intel-sycl-rt"], LIBSYCL[rel]) for rel in (OLD, NEW)}


@pytest.fixture(scope="module")
def picked(libsycl: dict[str, Path]) -> Picked:
    gone, kept = spb.pick_symbols(
        spb.exported_functions(libsycl[OLD]), spb.exported_functions(libsycl[NEW])
    )
    return Picked(gone, kept)


@pytest.fixture(scope="module")
def probe8(
    libsycl: dict[str, Path], picked: Picked, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    so = spb.build_probe(libsycl[OLD], picked.symbols())
    return spb.probe_wheel(tmp_path_factory.mktemp("probe8"), so)


@pytest.fixture(scope="module")
def probe9(
    libsycl: dict[str, Path], picked: Picked, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same probe built against 2026.0.0's libsycl.so.9 (only the symbol both export)."""
    so = spb.build_probe(libsycl[NEW], [picked.kept])
    return spb.probe_wheel(tmp_path_factory.mktemp("probe9"), so, "sycl-probe9")


# ---------------------------------------------------------------- the real runtime wheels


@pytest.mark.slow
def test_runtime_wheels_ship_libsycl_and_its_closure(runtime: dict[str, list[RuntimeLibs]]) -> None:
    sycl_old, ur_old, rt_old = runtime[OLD]
    assert sycl_old.label == f"intel-sycl-rt {OLD}" and sycl_old.has("libsycl.so.8")
    assert not sycl_old.has("libsycl.so.9") and runtime[NEW][0].has("libsycl.so.9")
    assert ur_old.has("libur_loader.so.0") and rt_old.has("libimf.so")
    # libintlc.so in intel-cmplr-lib-rt is a 21-byte linker script, not a library.
    assert not rt_old.has("libintlc.so") and rt_old.has("libintlc.so.5")
    assert sycl_old.families() == {"sycl/oneapi"}


@pytest.mark.slow
def test_probe_passes_against_2025_3_runtime(
    probe8: Path, torch213: TorchLibs, runtime: dict[str, list[RuntimeLibs]], picked: Picked
) -> None:
    started = time.monotonic()
    result = verify_wheel(probe8, torch213, runtime=runtime[OLD])
    assert result.ok, result.render()
    (ext,) = result.extensions
    assert ext.path == PROBE and "libsycl.so.8" in ext.needed
    assert not ext.unresolved and not ext.unchecked and not ext.external_needed
    # The DT_NEEDED closure runs through all three runtime wheels.
    assert ext.runtime_libs["libsycl.so.8"] == f"intel-sycl-rt {OLD}"
    assert ext.runtime_libs["libur_loader.so.0"] == f"intel-cmplr-lib-ur {OLD}"
    assert ext.runtime_libs["libimf.so"] == f"intel-cmplr-lib-rt {OLD}"
    text = result.render()
    assert "PASS" in text and f"runtime intel-sycl-rt {OLD}" in text
    assert not any("unchecked" in n for n in result.notes)
    assert all(s in runtime[OLD][0].index("libsycl.so.8").defined for s in picked.symbols())
    print(f"verify with 3 runtime wheels: {time.monotonic() - started:.2f} s")


@pytest.mark.slow
def test_probe_fails_against_2026_0_runtime(
    probe8: Path, torch213: TorchLibs, runtime: dict[str, list[RuntimeLibs]], picked: Picked
) -> None:
    result = verify_wheel(probe8, torch213, runtime=runtime[NEW])
    assert not result.ok
    (ext,) = result.extensions
    assert ext.missing_needed == ["libsycl.so.8"]
    (problem,) = ext.problems
    assert problem.startswith("DT_NEEDED libsycl.so.8 is not provided by the runtime")
    assert "(they ship libsycl.so.9)" in problem
    pretty = demangle(picked.symbols())
    notes = {s.symbol: s.note for s in ext.unresolved}
    assert set(notes) == set(picked.symbols())
    sycl9 = f"libsycl.so.9 (intel-sycl-rt {NEW})"
    # The symbol both releases export would be there, under the other soname...
    assert notes[picked.kept] == f"exported by {sycl9}, which the extension does not link"
    text = result.render()
    assert "FAIL" in text and pretty[picked.kept] in text
    if picked.gone is None:
        pytest.skip("libsycl.so.8 and .so.9 export the same sycl::_V1 functions: soname only")
    # ...the one 2026.0 dropped is gone for good (a real symbol-level difference).
    assert notes[picked.gone] == f"not exported by {sycl9}"
    assert pretty[picked.gone] in text
    with pytest.raises(BuildFailed) as info:
        result.raise_for_failure()
    assert info.value.exit_code == 1 and f"intel-sycl-rt {NEW}" in info.value.what


@pytest.mark.slow
def test_probe_without_runtime_lists_sycl_symbols_unchecked(
    probe8: Path, torch213: TorchLibs, picked: Picked
) -> None:
    result = verify_wheel(probe8, torch213)
    assert result.ok, result.render()
    (ext,) = result.extensions
    assert ext.external_needed == ["libsycl.so.8"] and not ext.runtime_libs
    assert sorted(s.symbol for s in ext.unchecked) == sorted(picked.symbols())
    assert all("libsycl.so.8" in s.note for s in ext.unchecked)
    assert any("external runtime" in n for n in result.notes)


@pytest.mark.slow
def test_incomplete_runtime_closure_fails(
    probe8: Path, torch213: TorchLibs, runtime: dict[str, list[RuntimeLibs]]
) -> None:
    """intel-sycl-rt alone: the symbols resolve, but libsycl.so.8 cannot load (no libur_loader)."""
    result = verify_wheel(probe8, torch213, runtime=runtime[OLD][:1])
    (ext,) = result.extensions
    assert not ext.unresolved and not ext.missing_needed and not result.ok
    assert ext.problems == [
        f"libsycl.so.8 (intel-sycl-rt {OLD}) needs libur_loader.so.0, which is not provided by "
        f"the runtime intel-sycl-rt {OLD}, by {torch213.describe()}, nor by this system"
    ]


@pytest.mark.slow
def test_probe9_and_mixed_runtime_releases(
    probe9: Path, torch213: TorchLibs, runtime: dict[str, list[RuntimeLibs]]
) -> None:
    good = verify_wheel(probe9, torch213, runtime=runtime[NEW])
    assert good.ok, good.render()
    # Built for torch 2.13's runtime, installed next to torch 2.12's: libsycl.so.9 is missing.
    old = verify_wheel(probe9, torch213, runtime=runtime[OLD])
    assert old.extensions[0].missing_needed == ["libsycl.so.9"]
    assert "(they ship libsycl.so.8)" in old.extensions[0].problems[0]
    # intel-sycl-rt 2026.0.0 with intel-cmplr-lib-ur 2025.3.2: the versioned UR references of
    # libsycl.so.9 that the older libur_loader does not define (computed here from the wheels).
    sycl9 = runtime[NEW][0].index("libsycl.so.9")
    ur_old = runtime[OLD][1].index("libur_loader.so.0")
    lacking = sorted(
        {u.key for u in sycl9.undefined if u.version_file == "libur_loader.so.0"}
        - {u.key for u in sycl9.undefined if ur_old.provides(u)}
    )
    mixed = verify_wheel(probe9, torch213, runtime=[runtime[NEW][0], runtime[OLD][1]])
    (ext,) = mixed.extensions
    if not lacking:
        assert mixed.ok, mixed.render()
        pytest.skip("libur_loader 2025.3.2 defines every UR symbol libsycl.so.9 uses")
    assert not mixed.ok
    (problem,) = [p for p in ext.problems if "does not define" in p]
    assert problem.startswith(
        f"libsycl.so.9 (intel-sycl-rt {NEW}) needs {len(lacking)} symbol(s) that "
        f"libur_loader.so.0 (intel-cmplr-lib-ur {OLD}) does not define"
    )
    assert lacking[0] in problem
    print(f"libsycl.so.9 needs from libur_loader 2025.3.2, missing: {lacking}")


# ---------------------------------------------------------------- local sources, no network


def cc(out: Path, src: str, *args: str) -> Path:
    source = out.with_name(out.name + ".c")
    source.write_text(src)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(source), *args], check=True)
    return out


@pytest.fixture
def fake_runtime(tmp_path: Path) -> tuple[Path, Path]:
    """A runtime dir with a stand-in libsycl.so.8, and an extension wheel linking it."""
    rt = tmp_path / "rt" / "lib"
    rt.mkdir(parents=True)
    cc(rt / "libsycl.so.8", "void sycl_fn(void) {}", "-Wl,-soname,libsycl.so.8")
    (rt / "libsycl.so").write_text("INPUT(libsycl.so.8)\n")  # linker script: skipped
    ext = cc(
        tmp_path / "ext.so",
        "void sycl_fn(void); void sycl_gone(void); void ze_fn(void);\n"
        "void f(int i) { if (i) sycl_fn(); else sycl_gone(); }",
        f"-L{rt}", "-l:libsycl.so.8",
    )  # fmt: skip
    whl = write_wheel(
        tmp_path / "dist",
        name="fake-ext",
        version="1.0",
        tag="cp311-cp311-linux_x86_64",
        files={"fake/ext.so": ext},
    )
    return rt, whl


def test_runtime_dir_checks_symbols(fake_runtime: tuple[Path, Path], torch213: TorchLibs) -> None:
    rt, whl = fake_runtime
    for spec in (rt, rt.parent):  # the lib dir, or a prefix with lib/
        (libs,) = load_runtime([spec])
        assert libs.names() == ["libsycl.so.8"]
        result = verify_wheel(whl, torch213, runtime=[libs])
        (ext,) = result.extensions
        assert ext.runtime_libs == {"libsycl.so.8": str(rt)}
        assert [(s.symbol, s.note) for s in ext.unresolved] == [
            ("sycl_gone", f"not exported by libsycl.so.8 ({rt})")
        ]
    assert not verify_wheel(whl, torch213).extensions[0].unresolved  # unchecked without runtime


def test_transitive_runtime_soname_checked(tmp_path: Path, torch213: TorchLibs) -> None:
    """A library in the wheel needs libsycl.so.9, the runtime ships .so.8: the extension fails."""
    rt, nine = tmp_path / "rt", tmp_path / "nine"
    rt.mkdir()
    nine.mkdir()
    cc(rt / "libsycl.so.8", "void sycl_fn(void) {}", "-Wl,-soname,libsycl.so.8")
    cc(nine / "libsycl.so.9", "void sycl_fn(void) {}", "-Wl,-soname,libsycl.so.9")
    helper = cc(tmp_path / "libhelper.so", "void sycl_fn(void); void h(void) { sycl_fn(); }",
                "-Wl,-soname,libhelper.so", f"-L{nine}", "-l:libsycl.so.9")  # fmt: skip
    ext = cc(tmp_path / "ext.so", "void h(void); void sycl_fn(void); void f() { h(); sycl_fn(); }",
             f"-L{tmp_path}", "-lhelper", f"-L{rt}", "-l:libsycl.so.8")  # fmt: skip
    whl = write_wheel(
        tmp_path / "dist", name="tr", version="1.0", tag="cp311-cp311-linux_x86_64",
        files={"tr/ext.so": ext, "tr/libhelper.so": helper},
    )  # fmt: skip
    result = verify_wheel(whl, torch213, runtime=load_runtime([rt]))
    by = {Path(e.path).name: e for e in result.extensions}
    assert by["libhelper.so"].missing_needed == ["libsycl.so.9"]
    assert by["ext.so"].missing_needed == [] and not by["ext.so"].ok
    (problem,) = by["ext.so"].problems
    assert problem.startswith("libhelper.so needs libsycl.so.9, which is not provided by the")
    assert "(they ship libsycl.so.8)" in problem


def _fake_dist(site: Path, prefix: Path, rt: Path) -> None:
    """An installed distribution the way pip lays out intel-sycl-rt: data files in <prefix>/lib."""
    (prefix / "lib").mkdir(parents=True, exist_ok=True)
    (prefix / "lib" / "libsycl.so.8").write_bytes((rt / "libsycl.so.8").read_bytes())
    info = site / "fake_sycl_rt-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-sycl-rt\nVersion: 9.9\n")
    rel = Path("..") / ".." / ".." / "lib" / "libsycl.so.8"  # from lib/python3.X/site-packages
    (info / "RECORD").write_text(f"{rel},,\nfake_sycl_rt-9.9.dist-info/METADATA,,\n")


def test_runtime_installed_distribution(
    fake_runtime: tuple[Path, Path], torch213: TorchLibs, tmp_path: Path
) -> None:
    rt, whl = fake_runtime
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    _fake_dist(site, venv, rt)
    libs = RuntimeLibs.from_source("fake-sycl-rt", python=python)
    assert libs.label == "fake-sycl-rt 9.9" and libs.names() == ["libsycl.so.8"]
    found = libs.refs["libsycl.so.8"].path
    assert found is not None and found.samefile(venv / "lib" / "libsycl.so.8")
    result = verify_wheel(whl, torch213, runtime=[libs])
    assert result.extensions[0].runtime_libs == {"libsycl.so.8": "fake-sycl-rt 9.9"}
    assert [s.symbol for s in result.extensions[0].unresolved] == ["sycl_gone"]
    with pytest.raises(BadInput, match="not installed in"):
        RuntimeLibs.from_source("buildctl-no-such-runtime", python=python)


def test_runtime_distribution_in_this_interpreter(
    fake_runtime: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _whl = fake_runtime
    prefix = tmp_path / "prefix"
    site = prefix / "lib" / "python3.11" / "site-packages"
    _fake_dist(site, prefix, rt)
    monkeypatch.syspath_prepend(str(site))
    (libs,) = load_runtime(["fake-sycl-rt"])
    assert libs.names() == ["libsycl.so.8"] and libs.label == "fake-sycl-rt 9.9"


def test_driver_libraries_stay_unchecked(tmp_path: Path, torch213: TorchLibs) -> None:
    """A runtime that covers sycl/oneapi does not make libze_loader (from the driver) missing."""
    rt = tmp_path / "rt"
    rt.mkdir()
    cc(rt / "libsycl.so.8", "void sycl_fn(void) {}", "-Wl,-soname,libsycl.so.8")
    stub = tmp_path / "stub"
    stub.mkdir()
    cc(stub / "libze_loader.so.1", "void zeInit(void) {}", "-Wl,-soname,libze_loader.so.1")
    ext = cc(
        tmp_path / "ext.so",
        "void sycl_fn(void); void zeInit(void); void f(void) { sycl_fn(); zeInit(); }",
        f"-L{rt}", f"-L{stub}", "-l:libsycl.so.8", "-l:libze_loader.so.1",
    )  # fmt: skip
    whl = write_wheel(
        tmp_path / "dist", name="ze-ext", version="1.0", tag="cp311-cp311-linux_x86_64",
        files={"ze/ext.so": ext},
    )  # fmt: skip
    result = verify_wheel(whl, torch213, runtime=load_runtime([rt]))
    (ext_report,) = result.extensions
    assert result.ok, result.render()
    assert ext_report.external_needed == ["libze_loader.so.1"]
    assert [s.symbol for s in ext_report.unchecked] == ["zeInit"]
    assert "libze_loader.so.1" in ext_report.unchecked[0].note


# ---------------------------------------------------------------- bad input


def test_bad_runtime_sources(tmp_path: Path) -> None:
    text = tmp_path / "runtime.txt"
    text.write_text("not a wheel")
    empty = tmp_path / "empty"
    empty.mkdir()
    pure = write_wheel(
        tmp_path / "dist", name="pure", version="1.0", tag="py3-none-any", files={"p.py": b""}
    )
    cases = [
        (text, "is neither a wheel nor a directory"),
        (tmp_path / "nope", "does not exist"),
        (tmp_path / "nope-1.0-py3-none-any.whl", "does not exist"),
        (empty, "holds no ELF shared libraries"),
        (pure, "holds no ELF shared libraries"),
        ("buildctl-no-such-runtime", "is not installed"),
        ("not a name!", "does not exist"),
    ]
    for spec, words in cases:
        with pytest.raises(BadInput) as info:
            load_runtime([spec])
        assert words in info.value.what, (spec, info.value.what)
        assert info.value.exit_code == 2 and info.value.fix
    fake = write_wheel(
        tmp_path / "dist", name="fake-rt", version="1.0", tag="py3-none-manylinux_2_28_x86_64",
        files={"fake_rt-1.0.data/data/lib/libfake.so.1": b"not ELF " * 16},
    )  # fmt: skip
    (libs,) = load_runtime([fake])
    with pytest.raises(BadInput, match="named like a shared object but is not ELF"):
        libs.index("libfake.so.1")
    bad_zip = tmp_path / "bad-1.0-py3-none-any.whl"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(BadInput, match="not a readable zip"):
        load_runtime([bad_zip])
