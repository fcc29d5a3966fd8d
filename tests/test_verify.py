"""ELF symbol verification: the real abi_probe against torch 2.13.0 and 2.14.1, small C cases."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from buildctl.errors import BadInput, BuildFailed
from buildctl.wheel import elfsyms
from buildctl.wheel.reproducible import write_wheel
from buildctl.wheel.torchspec import parse_torch
from buildctl.wheel.verify import (
    TorchLibs,
    demangle,
    is_python_symbol,
    is_torch_symbol,
    verify_wheel,
)

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "abi_probe"))
import probe_build

CHOLESKY = "at::_ops::cholesky::call(at::Tensor const&, bool)"
CHOLESKY_MANGLED = "_ZN2at4_ops8cholesky4callERKNS_6TensorEb"
TORCH_2141_WHEEL = Path(
    os.environ.get(
        "BUILDCTL_TORCH_2141_WHEEL",
        "/opt/pypi-more/files/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    )
)
TAG = "cp311-cp311-linux_x86_64"


def installed_torch_dir() -> Path:
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.submodule_search_locations, "torch must be installed"
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def torch_dir() -> Path:
    return installed_torch_dir()


@pytest.fixture(scope="module")
def torch213(torch_dir: Path) -> TorchLibs:
    return TorchLibs.from_installed(sys.executable)


@pytest.fixture(scope="module")
def probe_whl(torch_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    so = probe_build.build_probe(torch_dir)
    return probe_build.probe_wheel(tmp_path_factory.mktemp("probe"), so, parse_torch("2.13.0+cpu"))


# ---------------------------------------------------------------- the real ABI probe


@pytest.mark.slow
def test_probe_passes_against_the_torch_it_was_built_with(
    probe_whl: Path, torch213: TorchLibs
) -> None:
    assert torch213.version == "2.13.0+cpu"
    result = verify_wheel(probe_whl, torch213)
    assert result.ok, result.render()
    (ext,) = result.extensions
    assert ext.path == "abi_probe/libabi_probe_ops.so"
    assert {"libc10.so", "libtorch_cpu.so", "libtorch.so"} <= set(ext.needed)
    assert ext.undefined_total > 10 and not ext.unresolved and not ext.unchecked
    assert "PASS" in result.render()
    result.raise_for_failure()  # no exception


@pytest.mark.slow
def test_probe_fails_against_torch_2141_wheel(probe_whl: Path) -> None:
    if not TORCH_2141_WHEEL.is_file():
        pytest.skip(f"torch 2.14.1 wheel not on this machine ({TORCH_2141_WHEEL})")
    started = time.monotonic()
    libs = TorchLibs.from_wheel(TORCH_2141_WHEEL)
    assert libs.version == "2.14.1+cu130"
    result = verify_wheel(probe_whl, libs)
    first = time.monotonic() - started
    assert not result.ok
    (ext,) = result.extensions
    # Only at::cholesky breaks: TORCH_LIBRARY/m.def symbols are the same in 2.13.0 and 2.14.1.
    assert [s.demangled for s in ext.unresolved] == [CHOLESKY]
    assert ext.unresolved[0].symbol == CHOLESKY_MANGLED
    assert "not exported by torch 2.14.1+cu130" in ext.unresolved[0].note
    text = result.render()
    assert "FAIL" in text and CHOLESKY in text
    with pytest.raises(BuildFailed) as info:
        result.raise_for_failure()
    assert info.value.exit_code == 1 and CHOLESKY in info.value.what
    # Second run: every index comes from the on-disk cache, nothing is inflated.
    started = time.monotonic()
    again = TorchLibs.from_wheel(TORCH_2141_WHEEL)
    assert verify_wheel(probe_whl, again).unresolved_demangled() == [CHOLESKY]
    assert again.extract_s == 0.0
    cached = time.monotonic() - started
    assert cached < 10, f"cached verify took {cached:.1f} s (first run {first:.1f} s)"


@pytest.mark.slow
def test_indexing_libtorch_cpu_is_fast(torch_dir: Path) -> None:
    started = time.monotonic()
    index = elfsyms.parse_elf_file(torch_dir / "lib" / "libtorch_cpu.so")  # no cache
    elapsed = time.monotonic() - started
    assert len(index.defined) > 50_000
    assert CHOLESKY_MANGLED in index.defined
    assert elapsed < 20, f"indexing libtorch_cpu.so took {elapsed:.1f} s"


def test_torchlibs_constructors(torch_dir: Path, tmp_path: Path) -> None:
    by_pkg = TorchLibs.from_path(torch_dir)
    by_lib = TorchLibs.from_path(torch_dir / "lib")
    by_site = TorchLibs.from_path(torch_dir.parent)
    assert by_pkg.names() == by_lib.names() == by_site.names()
    assert "libtorch_cpu.so" in by_pkg.names() and by_pkg.version == by_lib.version
    with pytest.raises(BadInput):
        TorchLibs.from_path(tmp_path)
    with pytest.raises(BadInput):
        TorchLibs.from_path(tmp_path / "nope")
    with pytest.raises(BadInput):
        TorchLibs.from_installed(tmp_path / "no-python")
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(BadInput, match="no torch"):
        TorchLibs.from_installed(bare / "bin" / "python")


def test_from_wheel_rejects_non_torch_wheel(tmp_path: Path) -> None:
    other = write_wheel(
        tmp_path, name="other", version="1.0", tag="py3-none-any", files={"o.py": b""}
    )
    with pytest.raises(BadInput, match="no torch/lib"):
        TorchLibs.from_wheel(other)


# ---------------------------------------------------------------- small C/C++ cases


def cc(out: Path, src: str, *args: str, cpp: bool = False) -> Path:
    """Compile a tiny shared library (gcc, well under a second)."""
    suffix = ".cpp" if cpp else ".c"
    source = out.with_name(out.name + suffix)
    source.write_text(src)
    compiler = "g++" if cpp else "gcc"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(out), str(source), *args], check=True)
    return out


def whl(tmp: Path, files: dict[str, Path | bytes], name: str = "case") -> Path:
    return write_wheel(tmp / "dist", name=name, version="1.0", tag=TAG, files=files)


def test_local_cases(tmp_path: Path, torch213: TorchLibs) -> None:
    stub = tmp_path / "stubs"
    stub.mkdir()
    cc(stub / "libbuildctl_absent.so", "void absent_fn(void) {}")
    cc(stub / "libcudart.so.13", "void cudaFoo(void) {}", "-Wl,-soname,libcudart.so.13")
    helper = cc(
        tmp_path / "libhelper.so", "int helper(void) { return 1; }", "-Wl,-soname,libhelper.so"
    )
    missing = cc(tmp_path / "missing.so", "void absent_fn(void); void f(void) { absent_fn(); }",
                 f"-L{stub}", "-lbuildctl_absent")  # fmt: skip
    nowhere = cc(
        tmp_path / "nowhere.so", "void buildctl_nowhere(void); void f(void) { buildctl_nowhere(); }"
    )
    local = cc(tmp_path / "local.so", "int helper(void); int f(void) { return helper(); }",
               f"-L{tmp_path}", "-lhelper", "-Wl,-rpath,$ORIGIN")  # fmt: skip
    external = cc(
        tmp_path / "external.so",
        'extern "C" void cudaFoo(); namespace at { void buildctl_gone(); }\n'
        'extern "C" void f() { cudaFoo(); at::buildctl_gone(); }',
        f"-L{stub}", "-l:libcudart.so.13",
        cpp=True,
    )  # fmt: skip
    python = cc(
        tmp_path / "pymod.so",
        "void *PyLong_FromLong(long); void maybe(void) __attribute__((weak));\n"
        "void *f(void) { if (maybe) maybe(); return PyLong_FromLong(1); }",
    )
    wheel = whl(
        tmp_path,
        {
            "case/missing.so": missing,
            "case/nowhere.so": nowhere,
            "case/local.so": local,
            "case/libhelper.so": helper,
            "case/external.so": external,
            "case/pymod.cpython-311-x86_64-linux-gnu.so": python,
            "case/data.txt": b"not an ELF, not checked",
        },
    )
    result = verify_wheel(wheel, torch213)
    by = {Path(e.path).name: e for e in result.extensions}
    assert set(by) == {
        "missing.so", "nowhere.so", "local.so", "libhelper.so", "external.so",
        "pymod.cpython-311-x86_64-linux-gnu.so",
    }  # fmt: skip
    assert by["missing.so"].missing_needed == ["libbuildctl_absent.so"] and not by["missing.so"].ok
    assert [s.symbol for s in by["nowhere.so"].unresolved] == ["buildctl_nowhere"]
    assert by["local.so"].ok and by["libhelper.so"].ok
    ext = by["external.so"]
    assert ext.external_needed == ["libcudart.so.13"]
    assert [s.symbol for s in ext.unchecked] == ["cudaFoo"]
    assert "libcudart.so.13" in ext.unchecked[0].note
    # at:: symbols never come from CUDA: unresolved although an external runtime is in scope.
    assert [s.demangled for s in ext.unresolved] == ["at::buildctl_gone()"]
    py = by["pymod.cpython-311-x86_64-linux-gnu.so"]
    assert py.ok and py.python_symbols == 1 and not py.unresolved
    assert not result.ok
    assert any("external runtime" in n for n in result.notes)


def test_versioned_symbol_missing_from_provider(tmp_path: Path, torch213: TorchLibs) -> None:
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    new_dir.mkdir()
    old_dir.mkdir()
    (tmp_path / "v.map").write_text("BUILDCTL_2.0 { global: vfn; local: *; };\n")
    (tmp_path / "v1.map").write_text("BUILDCTL_1.0 { global: vfn; local: *; };\n")
    cc(
        new_dir / "libv.so",
        "void vfn(void) {}",
        "-Wl,-soname,libv.so",
        f"-Wl,--version-script={tmp_path / 'v.map'}",
    )
    old = cc(old_dir / "libv.so", "void vfn(void) {}", "-Wl,-soname,libv.so",
             f"-Wl,--version-script={tmp_path / 'v1.map'}")  # fmt: skip
    ext = cc(tmp_path / "ext.so", "void vfn(void); void f(void) { vfn(); }", f"-L{new_dir}", "-lv")
    good = verify_wheel(
        whl(tmp_path, {"p/ext.so": ext, "p/libv.so": new_dir / "libv.so"}, "good"), torch213
    )
    assert good.ok, good.render()
    bad = verify_wheel(whl(tmp_path, {"p/ext.so": ext, "p/libv.so": old}, "bad"), torch213)
    (ext_report,) = [e for e in bad.extensions if e.path == "p/ext.so"]
    assert [(s.symbol, s.version) for s in ext_report.unresolved] == [("vfn", "BUILDCTL_2.0")]
    assert "does not provide version BUILDCTL_2.0" in ext_report.unresolved[0].note


def test_wheel_without_elf_passes_with_note(tmp_path: Path, torch213: TorchLibs) -> None:
    result = verify_wheel(whl(tmp_path, {"pure/__init__.py": b""}), torch213)
    assert result.ok and not result.extensions
    assert "no ELF" in result.notes[0]


def test_symbol_classes() -> None:
    assert is_torch_symbol(CHOLESKY_MANGLED)
    assert is_torch_symbol("_ZNK3c106IValue23reportToTensorTypeErrorEv")
    assert is_torch_symbol(
        "_ZNR5torch7Library4_defEOSt7variantIJN3c1012OperatorNameENS2_14FunctionSchemaEEE"
    )
    assert is_torch_symbol("_ZTVN5torch8autograd4NodeE")
    assert is_torch_symbol("aoti_torch_empty_strided")
    assert not is_torch_symbol("_ZNSt8ios_base4InitC1Ev")
    assert not is_torch_symbol("cudaMalloc")
    assert not is_torch_symbol("_Z3atov")
    assert is_python_symbol("PyLong_FromLong") and is_python_symbol("_Py_Dealloc")


def test_demangle_batch_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    out = demangle([CHOLESKY_MANGLED, "plain_c"])
    assert out == {CHOLESKY_MANGLED: CHOLESKY, "plain_c": "plain_c"}
    monkeypatch.setattr("buildctl.wheel.verify.shutil.which", lambda _name: None)
    assert demangle([CHOLESKY_MANGLED]) == {CHOLESKY_MANGLED: CHOLESKY_MANGLED}


# ---------------------------------------------------------------- bad input


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize(
    ("filename", "members", "words"),
    [
        ("x-1.0-py3-none-any.whl", None, "not a readable zip"),
        ("notawheel.zip", {"a.py": b""}, "not a wheel file name"),
        ("x-1.0-py3-none-any.whl", {"../evil.so": b"\x7fELF"}, "unsafe member path"),
        ("x-1.0-py3-none-any.whl", {"/etc/evil.so": b"\x7fELF"}, "unsafe member path"),
        ("x-1.0-py3-none-any.whl", {"x/../../evil.so": b""}, "unsafe member path"),
        ("x-1.0-py3-none-any.whl", {"x/a.py": b""}, "no .dist-info"),
        (
            "x-1.0-py3-none-any.whl",
            {"x/fake.so": b"text", "x-1.0.dist-info/METADATA": b""},
            "is not ELF",
        ),
    ],
)
def test_bad_wheels(
    tmp_path: Path, torch213: TorchLibs, filename: str, members: dict[str, bytes] | None, words: str
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    path = src / filename
    if members is None:
        path.write_bytes(b"this is not a zip file")
    else:
        _zip(path, members)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(BadInput) as info:
        verify_wheel(path, torch213)
    assert words in info.value.what
    assert info.value.exit_code == 2
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
    assert not (tmp_path.parent / "evil.so").exists()


def test_missing_wheel_and_corrupt_member(tmp_path: Path, torch213: TorchLibs) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        verify_wheel(tmp_path / "nope-1.0-py3-none-any.whl", torch213)
    so = cc(tmp_path / "ok.so", "int ok(void) { return 0; }")
    good = whl(tmp_path, {"p/ok.so": so})
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("p/ok.so")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    for i in range(start, start + 40):
        data[i] ^= 0xFF  # damage the deflated .so bytes: CRC/inflate error on read
    corrupt = tmp_path / "bad" / good.name
    corrupt.parent.mkdir()
    corrupt.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="corrupt"):
        verify_wheel(corrupt, torch213)
