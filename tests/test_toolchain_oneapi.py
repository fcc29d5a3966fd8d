"""oneAPI discovery, pinning, env capture, export lines, mixed versions, runtime wheels."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fixtures.oneapi_trees import (
    make_component_install,
    make_field_trap_tree,
    make_unified_tree,
)

from buildctl.errors import BadInput, BuildFailed
from buildctl.toolchain import oneapi
from buildctl.toolchain.runtime_wheels import compare_runtime_wheels

NO_DEFAULT_ROOTS = {"HOME": "/nonexistent"}  # no $ONEAPI_ROOT; /opt/intel/oneapi absent here


def _discover(*roots: Path) -> oneapi.Discovery:
    return oneapi.discover(roots, environ=NO_DEFAULT_ROOTS)


# ----------------------------------------------------------------------------- pure parsing


def test_parse_icpx_version_banner() -> None:
    text = "Intel(R) oneAPI DPC++/C++ Compiler 2025.3.1 (2025.3.1.20251023)\nTarget: x86_64"
    assert oneapi.parse_icpx_version(text) == ("2025.3.1", "2025.3.1.20251023")
    assert oneapi.parse_icpx_version("clang version 17.0.0") is None


def test_version_key_and_torch_xpu_version() -> None:
    assert oneapi.version_key("2025.3.1.20251023") == "2025.3"
    assert oneapi.xpu_version_to_compiler("20250301") == "2025.3.1"
    assert oneapi.xpu_version_to_compiler("20260000") == "2026.0.0"
    assert oneapi.xpu_version_to_compiler(None) is None
    assert oneapi.xpu_version_to_compiler("2025.3") is None


# ----------------------------------------------------------------------------- discovery


def test_discovers_component_layout_and_latest_trap(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    found = _discover(root)
    by_version = {i.version: i for i in found.installs}
    assert set(by_version) == {"2025.3", "2026.0"}
    inst = by_version["2025.3"]
    assert inst.layout == "component"
    assert inst.full_version == "2025.3.1"
    assert inst.build == "2025.3.1.20251023"
    assert inst.vars_script == root / "compiler" / "2025.3" / "env" / "vars.sh"
    # `latest` is reported with its target, never listed as an install of its own
    assert found.latest_links[str(root / "compiler" / "latest")].endswith("compiler/2026.0")
    assert found.setvars_selects == {str(root / "setvars.sh"): "2026.0"}
    assert found.versions() == ["2025.3", "2026.0"]


def test_discovers_unified_layout(tmp_path: Path) -> None:
    root = make_unified_tree(tmp_path)
    found = _discover(root)
    assert {(i.version, i.layout) for i in found.installs} == {
        ("2025.3", "unified"),
        ("2026.0", "unified"),
    }
    assert found.latest_links[str(root / "latest")].endswith("/2026.0")


def test_discovery_reads_oneapi_root_env(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    found = oneapi.discover(environ={"ONEAPI_ROOT": str(root)})
    assert root in found.roots
    assert len(found.installs) == 2


def test_broken_icpx_is_reported_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "oneapi"
    prefix = make_component_install(root, "2025.3", "2025.3.1")
    (prefix / "bin" / "icpx").write_text("#!/bin/sh\necho nonsense\n")
    found = _discover(root)
    assert found.installs[0].error and "no version" in found.installs[0].error
    with pytest.raises(BadInput) as exc:
        oneapi.pin(found.installs, "2025.3")
    assert "unusable installs" in exc.value.what


# ----------------------------------------------------------------------------- pinning


def test_pin_picks_2025_3_not_latest(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    found = _discover(root)
    pinned = oneapi.pin(found.installs, "2025.3")
    assert pinned.full_version == "2025.3.1"
    assert "latest" not in str(pinned.vars_script)
    assert oneapi.pin(found.installs, "2025.3.1").version == "2025.3"


def test_pin_prefers_component_script_when_both_layouts_exist(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    unified = make_unified_tree(tmp_path)
    found = _discover(root, unified)
    assert oneapi.pin(found.installs, "2025.3").layout == "component"
    assert oneapi.pin(found.installs, "2025.3", prefer="unified").layout == "unified"


@pytest.mark.parametrize("bad", ["latest", "2025", "banana"])
def test_pin_rejects_unreadable_versions(tmp_path: Path, bad: str) -> None:
    found = _discover(make_field_trap_tree(tmp_path))
    with pytest.raises(BadInput):
        oneapi.pin(found.installs, bad)


def test_pin_missing_version_lists_found(tmp_path: Path) -> None:
    found = _discover(make_field_trap_tree(tmp_path))
    with pytest.raises(BadInput) as exc:
        oneapi.pin(found.installs, "2025.1")
    assert "2025.3.1" in exc.value.what and "2026.0.0" in exc.value.what
    assert "--oneapi-root" in exc.value.fix


# ----------------------------------------------------------------------------- env capture


def test_capture_env_of_pinned_component(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    inst = oneapi.pin(_discover(root).installs, "2025.3")
    cap = oneapi.capture_env(inst)
    prefix = str(root / "compiler" / "2025.3")
    assert cap.values["CMPLR_ROOT"] == prefix
    assert cap.added_entries("PATH") == [f"{prefix}/bin"]
    assert cap.added_entries("LD_LIBRARY_PATH") == [f"{prefix}/lib"]
    assert "SETVARS_COMPLETED" not in cap.values
    assert "2026.0" not in " ".join(cap.values.values())
    # nothing from our own environment leaks in: the base is the clean env -i one
    assert "VIRTUAL_ENV" not in cap.base and "PYTEST_CURRENT_TEST" not in cap.base


def test_capture_ignores_inherited_setvars_completed(tmp_path: Path, monkeypatch) -> None:
    """The unified script skips itself when SETVARS_COMPLETED is inherited; capture must not."""
    root = make_unified_tree(tmp_path)
    monkeypatch.setenv("SETVARS_COMPLETED", "1")
    inst = oneapi.pin(_discover(root).installs, "2025.3")
    cap = oneapi.capture_env(inst)
    assert cap.values["CMPLR_ROOT"] == str(root / "2025.3")
    assert "SETVARS_COMPLETED" not in cap.values  # never handed on


def test_capture_failure_is_build_failed(tmp_path: Path) -> None:
    root = tmp_path / "oneapi"
    prefix = make_component_install(root, "2025.3", "2025.3.1")
    (prefix / "env" / "vars.sh").write_text("echo broken >&2\nfalse\n")
    inst = oneapi.pin(_discover(root).installs, "2025.3")
    with pytest.raises(BuildFailed) as exc:
        oneapi.capture_env(inst)
    assert "broken" in exc.value.what


def _fake_capture(values: dict[str, str], base: dict[str, str] | None = None) -> oneapi.CapturedEnv:
    return oneapi.CapturedEnv(
        "2025.3.1",
        Path("/opt/intel/oneapi/compiler/2025.3/env/vars.sh"),
        base or {"PATH": "/usr/bin:/bin", "HOME": "/root"},
        values,
    )


def test_export_lines_quote_and_prepend() -> None:
    cap = _fake_capture(
        {
            "PATH": "/opt/intel/oneapi/compiler/2025.3/bin:/usr/bin:/bin",
            "CMPLR_ROOT": "/opt/intel/oneapi/compiler/2025.3",
            "WEIRD": "it's $HOME; rm -rf /",
            "BASH_FUNC_module%%": "() { :; }",
        }
    )
    lines = oneapi.export_lines(cap)
    assert "unset SETVARS_COMPLETED" in lines
    assert 'export PATH=/opt/intel/oneapi/compiler/2025.3/bin"${PATH:+:$PATH}"' in lines
    assert "export CMPLR_ROOT=/opt/intel/oneapi/compiler/2025.3" in lines
    assert not any("BASH_FUNC" in line for line in lines)
    # eval in a real shell: quoting holds, PATH keeps the caller's value after ours
    script = "\n".join(lines) + '\nprintf "%s\\n" "$WEIRD" "$PATH"'
    out = subprocess.run(
        ["bash", "--norc", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "SETVARS_COMPLETED": "1"},
    ).stdout.splitlines()
    assert out[0] == "it's $HOME; rm -rf /"
    assert out[1] == "/opt/intel/oneapi/compiler/2025.3/bin:/usr/bin:/bin"


def test_env_command_end_to_end_eval(tmp_path: Path) -> None:
    root = make_field_trap_tree(tmp_path)
    text = oneapi.env_command("2025.3", [root])
    out = subprocess.run(
        ["bash", "--norc", "-c", text + '\necho "$CMPLR_ROOT"; command -v icpx; icpx --version'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    ).stdout
    assert f"{root}/compiler/2025.3\n" in out
    assert f"{root}/compiler/2025.3/bin/icpx" in out
    assert "Compiler 2025.3.1" in out


def test_pinned_environ_drops_other_versions() -> None:
    cap = _fake_capture(
        {
            "PATH": "/opt/intel/oneapi/compiler/2025.3/bin:/usr/bin:/bin",
            "CMPLR_ROOT": "/opt/intel/oneapi/compiler/2025.3",
        }
    )
    environ = {
        "PATH": "/opt/intel/oneapi/compiler/latest/bin:/opt/intel/oneapi/compiler/2026.0/bin:"
        "/home/u/bin:/usr/bin",
        "SYCL_ROOT": "/opt/intel/oneapi/compiler/2026.0",
        "CPATH": "/opt/intel/oneapi/2026.0/include",  # not touched by the pinned script
        "SETVARS_COMPLETED": "1",
    }
    env = oneapi.pinned_environ(cap, environ)
    assert env["PATH"].split(":") == [
        "/opt/intel/oneapi/compiler/2025.3/bin",
        "/home/u/bin",
        "/usr/bin",
    ]
    assert "SYCL_ROOT" not in env and "SETVARS_COMPLETED" not in env and "CPATH" not in env
    assert env["CMPLR_ROOT"].endswith("/2025.3")
    assert oneapi.find_mixed_versions(env, "2025.3") == []


# ----------------------------------------------------------------------------- mixed versions


def test_mixed_versions_pure() -> None:
    env = {
        "PATH": "/opt/intel/oneapi/compiler/2025.3/bin:/opt/intel/oneapi/2026.0/bin:/usr/bin",
        "LD_LIBRARY_PATH": "/opt/intel/oneapi/compiler/2025.3/lib",
        "CMPLR_ROOT": "/opt/intel/oneapi/2026.0",
    }
    conflicts = oneapi.find_mixed_versions(env, pinned="2025.3")
    assert {c.var for c in conflicts} == {"PATH", "CMPLR_ROOT"}
    assert all(c.severity == "fail" for c in conflicts)
    assert all(
        'eval "$(buildctl env --compiler 2025.3)"' in c.fix and "without setvars.sh" in c.fix
        for c in conflicts
    )
    unpinned = oneapi.find_mixed_versions(env)
    assert unpinned and "2025.3, 2026.0" in unpinned[0].message
    clean = {"PATH": "/opt/intel/oneapi/compiler/2025.3/bin:/usr/bin"}
    assert oneapi.find_mixed_versions(clean, "2025.3") == []
    assert oneapi.find_mixed_versions({"PATH": "/usr/bin"}) == []


def test_latest_resolved_when_targets_known() -> None:
    env = {"PATH": "/opt/intel/oneapi/compiler/latest/bin:/opt/intel/oneapi/compiler/2025.3/bin"}
    links = {"/opt/intel/oneapi/compiler/latest": "/opt/intel/oneapi/compiler/2026.0"}
    resolved = oneapi.find_mixed_versions(env, "2025.3", latest=links)
    assert [c.severity for c in resolved] == ["fail"]
    assert "2026.0" in resolved[0].message
    unresolved = oneapi.find_mixed_versions(env, "2025.3")
    assert [c.severity for c in unresolved] == ["warn"]  # 'latest' moves: warn even if unknown


def test_setvars_completed_is_flagged() -> None:
    found = oneapi.find_mixed_versions({"SETVARS_COMPLETED": "1"}, "2025.3")
    assert [c.var for c in found] == ["SETVARS_COMPLETED"]
    assert found[0].severity == "warn"


def test_field_trap_env_is_flagged(tmp_path: Path) -> None:
    """The field report: setvars.sh (-> latest -> 2026.0) sourced, then compiler/2025.3 vars.sh
    on top. The result has both versions; detection must flag it and name the fix."""
    root = make_field_trap_tree(tmp_path)
    script = f'. "{root}/setvars.sh"; . "{root}/compiler/2025.3/env/vars.sh"; env -0'
    blob = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={tmp_path}", "bash", "--norc", "-c", script],
        capture_output=True,
        check=True,
    ).stdout
    env = dict(rec.split("=", 1) for rec in blob.decode().split("\0") if "=" in rec)
    found = _discover(root)
    conflicts = oneapi.find_mixed_versions(env, "2025.3", latest=found.latest_links)
    failing = {c.var for c in conflicts if c.severity == "fail"}
    assert {"PATH", "LD_LIBRARY_PATH"} <= failing
    assert any(c.var == "SETVARS_COMPLETED" for c in conflicts)
    # and the pinned environment built from it is clean again
    cap = oneapi.capture_env(oneapi.pin(found.installs, "2025.3"))
    fixed = oneapi.pinned_environ(cap, env)
    assert oneapi.find_mixed_versions(fixed, "2025.3", latest=found.latest_links) == []


def test_custom_root_versions_detected() -> None:
    env = {"PATH": "/srv/tools/intel/2025.3/bin:/srv/tools/intel/2026.0/bin"}
    assert oneapi.find_mixed_versions(env) == []  # not recognisable without the root
    conflicts = oneapi.find_mixed_versions(env, roots=["/srv/tools/intel"])
    assert conflicts and conflicts[0].var == "PATH"


# ----------------------------------------------------------------------------- runtime wheels


def test_runtime_wheels_compared_to_compiler() -> None:
    ok = {"intel-sycl-rt": "2025.3.2", "intel-cmplr-lib-ur": "2025.3.2", "intel-pti": "0.16.0"}
    assert compare_runtime_wheels(ok, "2025.3.1", {"intel-sycl-rt": "2025.3.2"}) == []
    wrong = {"intel-sycl-rt": "2026.0.0", "dpcpp-cpp-rt": "2025.3.1"}
    problems = compare_runtime_wheels(wrong, "2025.3", {"intel-sycl-rt": "2025.3.2"})
    assert [(p.dist, p.severity) for p in problems] == [("intel-sycl-rt", "fail")]
    drift = compare_runtime_wheels(
        {"intel-sycl-rt": "2025.3.1"}, "2025.3", {"intel-sycl-rt": "2025.3.2"}
    )
    assert [(p.dist, p.severity) for p in drift] == [("intel-sycl-rt", "warn")]
    assert "pip install intel-sycl-rt==2025.3.2" in drift[0].fix


def test_default_roots_order() -> None:
    roots = oneapi.default_roots({"ONEAPI_ROOT": "/x/oneapi"})
    assert roots == [Path("/x/oneapi"), Path("/opt/intel/oneapi")]
    assert oneapi.default_roots({}) == [Path("/opt/intel/oneapi")]
    assert os.fspath(oneapi.DEFAULT_ROOT) == "/opt/intel/oneapi"
