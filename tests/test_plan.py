"""`buildctl plan` without processes: loading jobs (report, profile export, profile DB), the host
shape, the verdicts, rendering, bad input, and the shipped vllm-xpu-kernels estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from buildctl.errors import BadInput
from buildctl.govern.plan import format_duration, host_shape, render_plan, run_plan
from buildctl.govern.profiles import ProfileDB, ProfileEntry, ProfileExport
from buildctl.host import HostInfo, default_budget
from buildctl.report import BuildReport, JobRecord

M = 1024**2
G = 1024**3
ROOT = Path(__file__).resolve().parent.parent
XPU = ROOT / "profiles" / "vllm-xpu-kernels"
HERE = HostInfo(total_ram_bytes=24 * G, available_bytes=20 * G, swap_total_bytes=0,
                swap_free_bytes=0, cgroup_limit_bytes=None, cores=2)


def write_report(path: Path) -> Path:
    jobs = [
        JobRecord(output=f"CMakeFiles/k.dir/{n}.cpp.o", kind="compile", target="k",
                  predicted_rss_bytes=mb * M, peak_rss_bytes=mb * M, wall_s=wall, cpu_s=wall,
                  status="ok")
        for n, mb, wall in (("a", 900, 10.0), ("b", 600, 8.0), ("c", 300, 4.0), ("d", 200, 2.0))
    ]
    jobs.append(JobRecord(output="libk.so", kind="link", target="libk.so",
                          predicted_rss_bytes=100 * M, peak_rss_bytes=100 * M, wall_s=1.0,
                          cpu_s=1.0, status="ok"))
    BuildReport(budget_bytes=2 * G, slots=2, jobs=jobs).write(path)
    return path


def rendered(plan) -> str:
    console = Console(record=True, width=200)
    render_plan(plan, console)
    return console.export_text()


def test_plan_from_a_report_on_this_host(tmp_path: Path) -> None:
    plan = run_plan(report=write_report(tmp_path / "r.json"), here=HERE)
    assert plan.host.cores == 2 and plan.host_note == "this host"
    assert plan.host.budget_bytes == default_budget(24 * G, None)
    assert len(plan.jobs) == 5 and plan.verdict == "fits" and plan.exit_code == 0
    # 2 slots, memory to spare: a (10 s) and b (8 s) first, c after b, d after a; both end at
    # 12 s; the link starts after its launcher's start-up (0.1 s) and runs 1 s.
    assert plan.result.makespan_s == pytest.approx(12.0 + 0.1 + 1.0)
    text = rendered(plan)
    assert "5 jobs from report" in text and "verdict: fits" in text and "2 cores" in text


def test_plan_for_another_host_shape(tmp_path: Path) -> None:
    report = write_report(tmp_path / "r.json")
    small = run_plan(report=report, cores=4, mem=2 * G, here=HERE)
    assert small.host.cores == 4 and small.host.swap_bytes == 0  # a given --mem: another host
    assert small.host.budget_bytes == default_budget(2 * G, None)  # 1 GiB
    assert small.result.peak_total_bytes <= small.host.budget_bytes
    assert small.verdict == "fits"
    fixed = run_plan(report=report, mem_budget=700 * M, here=HERE)
    assert fixed.budget_note == "--mem-budget"
    assert [a.output for a in fixed.result.alone] == ["CMakeFiles/k.dir/a.cpp.o"]
    assert fixed.verdict == "fits-running-alone"  # 900 MB is over 700 MB but well within 24 GiB
    assert "run alone" in rendered(fixed)
    one = run_plan(report=report, cores=1, here=HERE)
    assert one.result.makespan_s > small.result.makespan_s
    assert "1 core," in rendered(one)


def test_filter_selects_jobs(tmp_path: Path) -> None:
    plan = run_plan(report=write_report(tmp_path / "r.json"), filter_text="a.cpp", here=HERE)
    assert [j.output for j in plan.jobs] == ["CMakeFiles/k.dir/a.cpp.o"]
    assert "filter 'a.cpp'" in rendered(plan)


def test_plan_from_the_profile_db(tmp_path: Path) -> None:
    db = ProfileDB(tmp_path / "p.sqlite")
    for name, mb in (("x", 300), ("y", 200)):
        db.record(ProfileEntry(output=f"CMakeFiles/t.dir/{name}.cpp.o", kind="compile",
                               compiler="g++ 12", peak_rss_bytes=mb * M, wall_s=3.0, cpu_s=3.0))
    db.close()
    plan = run_plan(profiles=tmp_path / "p.sqlite", here=HERE)
    assert len(plan.jobs) == 2 and plan.source.startswith("profile DB")
    assert plan.result.makespan_s == pytest.approx(3.0, abs=0.2)


def test_plan_json_round_trips(tmp_path: Path) -> None:
    plan = run_plan(report=write_report(tmp_path / "r.json"), here=HERE)
    data = json.loads(plan.to_json())
    assert data["schema"] == "buildctl.plan/1" and data["verdict"] == "fits"
    assert len(data["schedule"]) == 5 and data["host"]["cores"] == 2


def test_walls_from_a_busy_machine_are_called_out(tmp_path: Path) -> None:
    jobs = [JobRecord(output=f"CMakeFiles/k.dir/{i}.cpp.o", kind="compile", target="k",
                      predicted_rss_bytes=M, peak_rss_bytes=M, wall_s=20.0, cpu_s=6.0,
                      status="ok") for i in range(3)]
    path = tmp_path / "busy.json"
    BuildReport(budget_bytes=G, slots=2, jobs=jobs).write(path)
    plan = run_plan(report=path, here=HERE)
    assert any("busy machine" in n for n in plan.notes)
    assert "busy machine" in rendered(plan)
    quiet = run_plan(report=write_report(tmp_path / "r.json"), here=HERE)
    assert not quiet.notes


def test_timeless_profiles_are_called_out(tmp_path: Path) -> None:
    export = ProfileExport(entries=[ProfileEntry(output="a.o", kind="compile", compiler="c",
                                                 peak_rss_bytes=M)])
    path = tmp_path / "e.json"
    path.write_text(export.model_dump_json(by_alias=True))
    plan = run_plan(profiles_json=path, here=HERE)
    assert any("no recorded wall time" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"report": Path("/nonexistent/r.json")}, "cannot read report"),
        ({"profiles_json": Path("/nonexistent/p.json")}, "cannot read profile export"),
        ({"cores": 0}, "not a number of cores"),
        ({"slots": 0}, "not a number of CPU slots"),
        ({"mem_budget": 10 * M}, "too small"),
        ({"filter_text": "no-such-output"}, "no measured jobs matching --filter"),
    ],
)
def test_bad_input(tmp_path: Path, kwargs: dict, needle: str) -> None:
    if "profiles_json" not in kwargs:
        kwargs.setdefault("report", write_report(tmp_path / "r.json"))
    with pytest.raises(BadInput) as err:
        run_plan(**kwargs, here=HERE)
    assert needle in err.value.what
    assert err.value.fix


def test_bad_files_and_conflicting_sources(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(BadInput, match="not a buildctl build report"):
        run_plan(report=junk, here=HERE)
    with pytest.raises(BadInput, match="not a buildctl profile export"):
        run_plan(profiles_json=junk, here=HERE)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/9", "entries": []}))
    with pytest.raises(BadInput, match=r"expected one of buildctl\.profiles/1"):
        run_plan(profiles_json=other, here=HERE)
    with pytest.raises(BadInput, match="one source of jobs"):
        run_plan(report=junk, profiles_json=junk, here=HERE)
    with pytest.raises(BadInput, match="no measured jobs in the profile DB"):
        run_plan(profiles=tmp_path / "empty.sqlite", here=HERE)


def test_host_shape_defaults() -> None:
    shape, note, _ = host_shape(None, None, None, None, here=HERE)
    assert (shape.cores, shape.mem_bytes, shape.swap_bytes, note) == (2, 24 * G, 0, "this host")
    shape, note, _ = host_shape(None, 16 * G, 8 * G, None, here=HERE)
    assert shape.swap_bytes == 8 * G and shape.budget_bytes == default_budget(16 * G, None)
    assert note == "given: 16.0 GiB RAM, 8.0 GiB swap"
    cgroup = HostInfo(32 * G, 30 * G, 4 * G, 4 * G, 8 * G, 16)
    shape, _, _ = host_shape(None, None, None, None, here=cgroup)
    assert shape.budget_bytes == default_budget(32 * G, 8 * G) and shape.swap_bytes == 4 * G


@pytest.mark.parametrize(
    ("seconds", "text"), [(5.04, "5.0 s"), (75, "1 min 15 s"), (3 * 3600 + 125, "3 h 02 min")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- the shipped vllm-xpu-kernels estimates ---------------------------------------------------


def test_shipped_xpu_profiles_are_marked_estimates_and_load() -> None:
    readme = (XPU / "README.md").read_text()
    assert "ESTIMATE" in readme.upper() and "not measurements" in readme
    for name in ("v0.1.9.json", "v0.1.9-unpatched.json"):
        export = ProfileExport.model_validate(json.loads((XPU / name).read_text()))
        assert all("ESTIMATE" in e.compiler for e in export.entries)
        outputs = [e.output for e in export.entries]
        assert sum("paged_decode_kernel_template" in o for o in outputs) == 416
        assert sum("chunk_prefill_kernel_template" in o for o in outputs) == 216
        assert len(set(outputs)) == len(outputs)


def test_unpatched_v0_1_9_does_not_fit_a_32g_host_and_says_which_job() -> None:
    plan = run_plan(profiles_json=XPU / "v0.1.9-unpatched.json", cores=16, mem=32 * G,
                    here=HERE)
    assert plan.verdict == "does-not-fit" and plan.exit_code == 1
    assert plan.result.alone[0].output.endswith("paged_decode_xe2.cpp.o")
    assert plan.result.alone[0].peak_bytes == 120 * 1000**3
    text = rendered(plan)
    assert "does not fit" in text and "paged_decode_xe2.cpp.o" in text


def test_patched_v0_1_9_fits_a_96g_host_and_needs_swap_on_16g() -> None:
    big = run_plan(profiles_json=XPU / "v0.1.9.json", cores=24, mem=96 * G, here=HERE)
    assert big.verdict == "fits"
    assert big.result.peak_total_bytes <= big.host.budget_bytes
    small = run_plan(profiles_json=XPU / "v0.1.9.json", cores=8, mem=16 * G, swap=128 * G,
                     here=HERE)
    assert small.verdict == "fits-with-swap" and small.exit_code == 0
    assert {a.output for a in small.result.alone} >= {"libattn_kernels_xe_2.so"}
    assert small.result.makespan_s > big.result.makespan_s
