"""What the governor does to a running job's processes, behind one interface.

`LocalRunner` acts on the process group the launcher started (sample, freeze, thaw, kill);
`FakeRunner` plays scripted jobs on a clock the test moves, so the memory policy can be driven
through the real governor without processes or sleeps. Jobs run on a remote executor (Ray) have
no local tree: the local runner samples nothing for them and cannot freeze them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from buildctl.govern.monitor import ProcInfo, TreeSample, sample_tree
from buildctl.process import kill_tree, signal_tree


class RunningJob(Protocol):
    id: int
    child_pid: int | None


class JobRunner(Protocol):
    def sample(self, job: RunningJob, t: float) -> TreeSample | None: ...

    def freeze(self, job: RunningJob) -> bool:
        """Stop the job's tree where it is (its memory stays); False if it cannot."""
        ...

    def thaw(self, job: RunningJob) -> None: ...

    def kill(self, job: RunningJob) -> None: ...


class LocalRunner:
    """The job's tree on this host, rooted at the compiler the launcher started."""

    def sample(self, job: RunningJob, t: float) -> TreeSample | None:
        return sample_tree(job.child_pid, t) if job.child_pid else None

    def freeze(self, job: RunningJob) -> bool:
        if not job.child_pid:
            return False
        signal_tree(job.child_pid, signal.SIGSTOP)
        return True

    def thaw(self, job: RunningJob) -> None:
        if job.child_pid:
            signal_tree(job.child_pid, signal.SIGCONT)

    def kill(self, job: RunningJob) -> None:
        if job.child_pid:
            kill_tree(job.child_pid)  # continues it too: a frozen tree dies only once it runs


@dataclass
class FakeProcess:
    """A scripted job: RSS as a function of its own running time (frozen time does not count),
    one CPU second per running second."""

    rss_at: Callable[[float], int]
    ran_s: float = 0.0
    frozen: bool = False
    killed: bool = False


@dataclass
class FakeRunner:
    """Jobs whose memory follows a script, on a clock the test advances with `advance`."""

    scripts: dict[str, Callable[[float], int]]  # output -> rss(t)
    processes: dict[int, FakeProcess] = field(default_factory=dict)
    actions: list[tuple[str, int]] = field(default_factory=list)  # (freeze|thaw|kill, job id)
    outputs: dict[int, str] = field(default_factory=dict)

    def start(self, job_id: int, output: str) -> None:
        self.outputs[job_id] = output
        self.processes[job_id] = FakeProcess(self.scripts[output])

    def advance(self, dt: float) -> None:
        for proc in self.processes.values():
            if not proc.frozen and not proc.killed:
                proc.ran_s += dt

    def sample(self, job: RunningJob, t: float) -> TreeSample | None:
        proc = self.processes.get(job.id)
        if proc is None or proc.killed:
            return None
        rss = proc.rss_at(proc.ran_s)
        info = ProcInfo(job.id, "fakecc", rss, "stopped" if proc.frozen else "running",
                        cpu_s=proc.ran_s)
        return TreeSample(t, rss, proc.ran_s, int(proc.ran_s * 1000), 0, (info,), proc.ran_s)

    def freeze(self, job: RunningJob) -> bool:
        self.processes[job.id].frozen = True
        self.actions.append(("freeze", job.id))
        return True

    def thaw(self, job: RunningJob) -> None:
        self.processes[job.id].frozen = False
        self.actions.append(("thaw", job.id))

    def kill(self, job: RunningJob) -> None:
        proc = self.processes.get(job.id)
        if proc is not None:
            proc.killed = True
        self.actions.append(("kill", job.id))
