"""SYCL device links under the governor (issue 17, item 5): at most K device links at once,
each predicted from its own -fsycl-max-parallel-link-jobs. The pure cap (govern.links), then the
real governor through the fake runner (no processes, no sleeps; the "links" are scripted RSS,
not icpx device links), then the XPU project's plan reaching the governor's options."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fake_governor, isolated_env, run_buildctl

from buildctl.govern.governor import Governor
from buildctl.govern.links import LinkCandidate, device_link_bytes, offerable
from buildctl.govern.profiles import ProfileDB, ProfileEntry
from buildctl.govern.runner import FakeRunner

GiB = 1024**3
PER_JOB = GiB
LINK_S = 10.0
STEP_S = 0.5


def _w(job_id: int, link: bool, at: float) -> LinkCandidate:
    return LinkCandidate(job_id, link, at)


@pytest.mark.parametrize(
    "waiting, running_links, cap, expected",
    [
        # no cap: everything is offered, in the order given
        ([_w(1, True, 0), _w(2, True, 1), _w(3, False, 2)], 0, 0, [1, 2, 3]),
        # K=2, none running: the two earliest links, compiles untouched
        ([_w(1, True, 0), _w(2, True, 1), _w(3, True, 2), _w(4, False, 3)], 0, 2, [1, 2, 4]),
        # K=2, one running: one more link, the earliest enqueued (not the first listed)
        ([_w(5, True, 9), _w(6, True, 3), _w(7, False, 1)], 1, 2, [6, 7]),
        # K reached: no link, compiles still offered
        ([_w(1, True, 0), _w(2, False, 1)], 2, 2, [2]),
        # more running than K (a cap lowered mid-build): no link, never a negative slice
        ([_w(1, True, 0), _w(2, True, 1)], 3, 2, []),
        # same enqueue time: the lower id first
        ([_w(9, True, 1), _w(8, True, 1)], 0, 1, [8]),
        # nothing waiting
        ([], 0, 2, []),
    ],
)
def test_offerable(
    waiting: list[LinkCandidate], running_links: int, cap: int, expected: list[int]
) -> None:
    assert offerable(waiting, running_links, cap) == expected


@pytest.mark.parametrize(
    "kind, argv, per_job, expected",
    [
        ("link", ["icpx", "-fsycl", "-fsycl-max-parallel-link-jobs=2", "-o", "a.so"], GiB,
         2 * GiB),
        ("link", ["icpx", "-Wl,-fsycl-max-parallel-link-jobs=4", "-o", "a.so"], GiB, 4 * GiB),
        ("link", ["icpx", "-fsycl", "-o", "a.so"], GiB, None),  # no inner jobs: not a device link
        ("compile", ["icpx", "-fsycl-max-parallel-link-jobs=2", "-c", "a.cpp"], GiB, None),
        ("link", ["icpx", "-fsycl-max-parallel-link-jobs=2"], 0, None),  # off
    ],
)
def test_device_link_bytes(kind: str, argv: list[str], per_job: int, expected: int | None) -> None:
    assert device_link_bytes(kind, argv, per_job) == expected


# --- the governor, through the fake runner ---------------------------------------------------


def _link_argv(name: str, flag: bool) -> list[str]:
    inner = ["-fsycl-max-parallel-link-jobs=2"] if flag else []
    return ["icpx", "-fsycl", *inner, "-shared", "-o", name, f"{name}.o"]


def _drive(tmp_path: Path, *, flag: bool, per_job: int, cap: int, compiles: int = 0,
           db: ProfileDB | None = None) -> tuple[Governor, int, list[int]]:
    """Three links (and `compiles` compile jobs) to the end; (governor, most device links
    running at once, compiles running whenever links waited at the cap)."""
    outputs = [f"lib/libattn_{i}.so" for i in range(3)]
    compile_outputs = [f"CMakeFiles/k.dir/k{i}.cpp.o" for i in range(compiles)]
    runner = FakeRunner({out: (lambda t: GiB) for out in outputs + compile_outputs})
    clock = [1000.0]
    governor = fake_governor(
        db or ProfileDB(tmp_path / "profiles.sqlite"), tmp_path, clock=lambda: clock[0],
        runner=runner, budget_bytes=64 * GiB,
        slots=32,  # the unknown-family slow start lets 4 unmeasured links start
        sample_interval_s=STEP_S, project="vllm-xpu-kernels", device_link_job_bytes=per_job,
        max_device_links=cap,
    )
    for out in outputs:
        governor.enqueue(out, "link", "icpx 2025.3", argv=_link_argv(out, flag))
    for out in compile_outputs:
        governor.enqueue(out, "compile", "icpx 2025.3", fingerprint=out, source_bytes=4000,
                         argv=["icpx", "-fsycl", "-c", f"{out}.cpp", "-o", out])
    most = 0
    compiles_beside_held: list[int] = []
    pid = 100
    for _ in range(1000):
        live = [j for j in governor.jobs.values() if j.state == "running"]
        for job in live:
            if job.child_pid is None:
                pid += 1
                job.child_pid = pid
                runner.start(job.id, job.output)
        links_running = sum(1 for j in live if j.kind == "link")
        most = max(most, links_running)
        if any(j.kind == "link" and j.state == "waiting" for j in governor.jobs.values()):
            compiles_beside_held.append(sum(1 for j in live if j.kind == "compile"))
        if all(j.state == "done" for j in governor.jobs.values()):
            break
        clock[0] += STEP_S
        runner.advance(STEP_S)
        governor.tick()
        for job in [j for j in governor.jobs.values() if j.state == "running" and j.child_pid]:
            proc = runner.processes[job.id]
            if proc.ran_s >= LINK_S:
                governor._finish(job, {"rc": 0, "cpu_s": proc.ran_s, "maxrss": 0})
    else:
        pytest.fail("the build did not finish")
    return governor, most, compiles_beside_held


def test_at_most_k_device_links_run_at_once(tmp_path: Path) -> None:
    """K=2: three device links of 2 inner jobs each fit the budget together (3 x 2 GiB of
    64 GiB), yet never more than two run; each is predicted 2 x the per-job bytes."""
    governor, most, beside = _drive(tmp_path, flag=True, per_job=PER_JOB, cap=2, compiles=2)
    assert most == 2
    links = [j for j in governor.jobs.values() if j.kind == "link"]
    assert all(j.prediction.bytes == 2 * PER_JOB for j in links)
    assert all(j.prediction.source == "device-link" for j in links)
    assert all(r.status == "ok" for r in governor.finished) and len(governor.finished) == 5
    # the cap holds links only: the compiles ran while the third link waited
    assert beside and max(beside) == 2
    records = [r for r in governor.finished if r.kind == "link"]
    assert all(r.prediction_source == "device-link" for r in records)


def test_links_without_the_inner_jobs_flag_are_not_capped(tmp_path: Path) -> None:
    governor, most, _ = _drive(tmp_path, flag=False, per_job=PER_JOB, cap=2)
    assert most == 3
    assert all(j.prediction.source != "device-link" for j in governor.jobs.values())


def test_off_by_default_device_links_are_not_capped(tmp_path: Path) -> None:
    """Other builds (0 = off): a device link is predicted and admitted as any link."""
    governor, most, _ = _drive(tmp_path, flag=True, per_job=0, cap=0)
    assert most == 3
    assert all(j.prediction.source != "device-link" for j in governor.jobs.values())


def test_an_exact_record_of_the_link_wins(tmp_path: Path) -> None:
    """The same link measured before (same fingerprint, so the same inner jobs) keeps its
    measured peak; a link known only under another fingerprint is predicted from its argv."""
    db = ProfileDB(tmp_path / "profiles.sqlite")
    for fingerprint, peak in (("", 3 * GiB), ("other-flags", 40 * GiB)):
        db.record(ProfileEntry(output=f"lib/libattn_{0 if not fingerprint else 1}.so",
                               kind="link", compiler="icpx 2025.3", peak_rss_bytes=peak,
                               wall_s=10.0, cpu_s=10.0, fingerprint=fingerprint,
                               project="vllm-xpu-kernels", recorded_at=1.0))
    governor, most, _ = _drive(tmp_path, flag=True, per_job=PER_JOB, cap=2, db=db)
    by_output = {j.output: j.prediction for j in governor.jobs.values()}
    assert by_output["lib/libattn_0.so"].source == "exact"
    assert by_output["lib/libattn_0.so"].bytes == 3 * GiB
    assert (by_output["lib/libattn_1.so"].source, by_output["lib/libattn_1.so"].bytes) == (
        "device-link", 2 * PER_JOB)
    assert most == 2


def test_report_marks_a_device_link_predicted_from_its_own_record(tmp_path: Path) -> None:
    """A device link measured before is predicted "exact", not "device-link": the report still
    says it is one, so a plan from that report caps it."""
    from buildctl.govern.simulate import jobs_from_report
    from buildctl.report import BuildReport

    db = ProfileDB(tmp_path / "profiles.sqlite")
    db.record(ProfileEntry(output="lib/libattn_0.so", kind="link", compiler="icpx 2025.3",
                           peak_rss_bytes=3 * GiB, wall_s=10.0, cpu_s=10.0,
                           project="vllm-xpu-kernels", recorded_at=1.0))
    governor, _, _ = _drive(tmp_path, flag=True, per_job=PER_JOB, cap=2, db=db)
    records = {r.output: r for r in governor.finished}
    assert records["lib/libattn_0.so"].prediction_source == "exact"
    assert all(r.device_link for r in records.values())
    report = BuildReport(budget_bytes=64 * GiB, slots=32, jobs=list(records.values()))
    assert all(j.device_link for j in jobs_from_report(report))


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one time; one ending as another starts is not
    an overlap."""
    moments = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    most = current = 0
    for _, change in moments:
        current += change
        most = max(most, current)
    return most


def test_a_plan_from_the_profile_db_alone_caps_device_links(tmp_path: Path) -> None:
    """Gap (c) of issue 17: the governor records which links were SYCL device links in the
    profile DB (schema 3), so `buildctl plan --profiles DB --device-links K`, with no report,
    runs at most K of them at once. Three device links and two compiles go through the governor
    (its own profile writes), then the CLI plans from that DB."""
    db_path = tmp_path / "profiles.sqlite"
    db = ProfileDB(db_path)
    _drive(tmp_path, flag=True, per_job=PER_JOB, cap=2, compiles=2, db=db)
    db.close()
    conn = sqlite3.connect(db_path)
    marked = dict(conn.execute("SELECT output, device_link FROM runs").fetchall())
    conn.close()
    assert marked == {**{f"lib/libattn_{i}.so": 1 for i in range(3)},
                      **{f"CMakeFiles/k.dir/k{i}.cpp.o": 0 for i in range(2)}}
    env = isolated_env(tmp_path)
    for cap, expected in (("1", 1), ("2", 2), ("0", 3)):  # 0: no cap, all three at once
        result = run_buildctl("plan", "--profiles", str(db_path), "--device-links", cap,
                              "--cores", "8", "--mem", "64G", "--json", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        plan = json.loads(result.stdout)
        links = [(s["start_s"], s["end_s"]) for s in plan["schedule"] if s["device_link"]]
        assert len(links) == 3
        assert _most_at_once(links) == expected, (cap, plan["schedule"])
        assert not any("no job is known to be a device link" in n for n in plan["notes"])


# --- the XPU project's link plan reaches the governor ----------------------------------------


def test_session_carries_the_link_plan_to_the_governor(tmp_path: Path) -> None:
    from buildctl.govern.session import SessionOptions, governor_options

    opts = SessionOptions(build_dir=tmp_path, budget_bytes=16 * GiB, slots=4,
                          device_link_job_bytes=6 * GiB, max_device_links=2)
    gov = governor_options(opts, tmp_path / "s.sock", tmp_path)
    assert (gov.device_link_job_bytes, gov.max_device_links) == (6 * GiB, 2)
    plain = governor_options(SessionOptions(build_dir=tmp_path, budget_bytes=GiB, slots=1),
                             tmp_path / "s.sock", tmp_path)
    assert (plain.device_link_job_bytes, plain.max_device_links) == (0, 0)


@pytest.mark.slow
def test_xpu_project_plan_is_what_the_governor_enforces(tmp_path: Path) -> None:
    """vllm-xpu-kernels on the fixture checkout (a stand-in oneAPI tree, no configure): the
    project carries the plan's K and per-job bytes, the same K the CMake define gets."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
    from oneapi_trees import make_field_trap_tree
    from test_xpu_wheel import FIXTURE, _git_repo_from

    from buildctl.kernels import xpu
    from buildctl.toolchain import xpu_adapter

    root = make_field_trap_tree(tmp_path)
    overrides = {
        key: (str(tmp_path / "up" / key),
              _git_repo_from(FIXTURE / "standins" / key, tmp_path / "up" / key))
        for key in ("sycl-tla", "oneDNN")
    }
    source = tmp_path / "src"
    _git_repo_from(FIXTURE, source)
    subprocess.run(["git", "tag", "v0.1.11.1"], cwd=source, check=True)
    project = xpu.xpu_project(
        torch="2.12.0+xpu", source=source, preset=None, low_ram=True, budget_bytes=16 * GiB,
        cache_dir=tmp_path / "cache", oneapi_roots=[str(root)], compiler=None, aot=None,
        dep_overrides=overrides,
    )
    per, _ = xpu._link_profile("v0.1.11.1", xpu_adapter.load_manifest())
    assert project.max_device_links == int(project.cmake_defines["BUILDCTL_SYCL_CONCURRENT_LINKS"])
    assert project.max_device_links >= 1
    assert project.device_link_job_bytes == per
