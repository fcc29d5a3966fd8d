"""Live view of a governed build: running jobs with RSS and elapsed time, a budget bar,
done/total and an ETA. When stdout is not a terminal, a plain line log instead (CI)."""

from __future__ import annotations

import re
import sys
import time
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from buildctl.govern.snapshot import Snapshot
from buildctl.host import format_size
from buildctl.report import Event
from buildctl.ui.eta import Eta, EtaPlan
from buildctl.ui.text import elide_middle

NINJA_STATUS = re.compile(r"^\s*\[(\d+)/(\d+)\]")
JOB_COLUMN = 60  # characters of a job name in the live table (cut in the middle beyond)
# What the other columns of a row need on one line (RSS, pred., time, state, some evidence)
# and the gaps between the six columns: on a narrow terminal the job name gives way, cut in
# the middle, rather than squeezing the numbers to one character each.
SIZE_COLUMN, TIME_COLUMN, STATE_COLUMN, MIN_EVIDENCE = 9, 5, 9, 12
COLUMN_GAPS = 2 * 5
MIN_JOB_COLUMN = 16


def column_widths(console_width: int) -> tuple[int, int]:
    """(job name, evidence) characters on a terminal this wide (pure)."""
    numbers = 2 * SIZE_COLUMN + TIME_COLUMN + STATE_COLUMN + COLUMN_GAPS
    job = max(MIN_JOB_COLUMN, min(JOB_COLUMN, console_width - numbers - MIN_EVIDENCE))
    return job, max(MIN_EVIDENCE, min(70, console_width - numbers - job))


class View(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def output_line(self, line: str) -> None: ...
    def event(self, event: Event) -> None: ...
    def refresh(self, snap: Snapshot) -> None: ...
    def set_plan(self, plan: EtaPlan | None) -> None: ...


class Progress:
    """done/total from ninja's `[n/m]` status lines."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.started = time.monotonic()

    def feed(self, line: str) -> bool:
        match = NINJA_STATUS.match(line)
        if not match:
            return False
        self.done, self.total = int(match.group(1)), int(match.group(2))
        return True

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


EVENT_STYLE = {
    "oom-guard-kill": "bold red",
    "hang": "bold red",
    "stall": "red",
    "crash": "bold red",
    "thrash": "yellow",
    "throttle": "yellow",
    "exclusive": "yellow",
    "retry": "cyan",
    "split": "cyan",
}


class RichView:
    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.progress = Progress()
        self.eta = Eta()
        self.snap: Snapshot | None = None
        # 2 Hz: every refresh lays the table out again (~6 ms of CPU); times show whole seconds.
        self.live = Live(console=console, refresh_per_second=2, transient=True)

    def set_plan(self, plan: EtaPlan | None) -> None:
        self.eta = Eta(plan)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def output_line(self, line: str) -> None:
        if self.progress.feed(line):
            return
        self.live.console.print(Text(line))

    def event(self, event: Event) -> None:
        style = EVENT_STYLE.get(event.kind, "dim")
        where = f" {event.output}" if event.output else ""
        self.live.console.print(Text(f"buildctl {event.kind}{where}: {event.detail}", style=style))

    def refresh(self, snap: Snapshot) -> None:
        self.snap = snap
        self.live.update(self._render(snap))

    def _render(self, snap: Snapshot) -> Group:
        job_width, evidence_width = column_widths(self.console.width)
        table = Table(box=None, expand=False, pad_edge=False)
        table.add_column("job", no_wrap=True, max_width=job_width)
        table.add_column("RSS", justify="right", no_wrap=True, min_width=SIZE_COLUMN)
        table.add_column("pred.", justify="right", no_wrap=True, min_width=SIZE_COLUMN)
        table.add_column("time", justify="right", no_wrap=True, min_width=TIME_COLUMN)
        table.add_column("state", no_wrap=True, overflow="ellipsis", max_width=STATE_COLUMN)
        table.add_column("evidence", no_wrap=True, overflow="ellipsis", max_width=evidence_width)
        for job in snap.running:
            state = job.verdict + (" (alone)" if job.exclusive else "")
            if job.attempts > 1:
                state += f" try {job.attempts}"
            style = "red" if job.verdict in ("stalled", "thrashing", "spinning") else ""
            table.add_row(
                elide_middle(job.output, job_width),
                format_size(job.rss),
                format_size(job.predicted),
                _fmt_s(job.elapsed_s),
                Text(state, style=style),
                Text(job.evidence, style="dim"),
            )
        used = max(snap.reserved, snap.live_rss)
        bar = ProgressBar(total=snap.budget, completed=min(used, snap.budget), width=40)
        p = self.progress
        line = Text.assemble(
            (f"{self.title}  ", "bold"),
            f"{p.done}/{p.total or '?'} done  ",
            f"ETA {_fmt_s(self.eta.estimate(p.elapsed_s(), p.done, p.total, snap.finished))}  ",
            f"{len(snap.running)} running ({snap.slots} slots), {snap.waiting} waiting  ",
        )
        budget = Text.assemble(
            "memory ",
            f"{format_size(snap.live_rss)} live / {format_size(snap.reserved)} reserved / "
            f"{format_size(snap.budget)} budget  ",
            (f"host free {format_size(snap.host_available)}", "dim"),
        )
        # A progress bar does not end its line: the budget goes on the next.
        parts: list = [line, bar, Text(""), budget, table]
        if snap.paused:
            parts.append(Text(f"paused: {snap.paused}", style="yellow"))
        elif snap.wait_reason and snap.waiting:
            parts.append(Text(snap.wait_reason, style="dim"))
        return Group(*parts)


class PlainView:
    """One line per event/output line, plus a status line every `every_s` seconds."""

    def __init__(self, stream: object = None, title: str = "buildctl", every_s: float = 10.0):
        self.stream = stream or sys.stdout
        self.title = title
        self.every_s = every_s
        self.progress = Progress()
        self.eta = Eta()
        self._last = 0.0

    def set_plan(self, plan: EtaPlan | None) -> None:
        self.eta = Eta(plan)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]

    def start(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        pass

    def output_line(self, line: str) -> None:
        self.progress.feed(line)
        self._write(line)

    def event(self, event: Event) -> None:
        where = f" {event.output}" if event.output else ""
        self._write(f"buildctl {event.kind}{where}: {event.detail}")

    def refresh(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        p = self.progress
        eta = self.eta.estimate(p.elapsed_s(), p.done, p.total, snap.finished)
        self._write(
            f"{self.title}: {p.done}/{p.total or '?'} done, ETA {_fmt_s(eta)}, "
            f"{len(snap.running)} running, "
            f"{snap.waiting} waiting, live RSS {format_size(snap.live_rss)}, reserved "
            f"{format_size(snap.reserved)} of budget {format_size(snap.budget)}"
            + (f", paused: {snap.paused}" if snap.paused else "")
        )


def make_view(console: Console, title: str, plain: bool | None = None) -> View:
    if plain is None:
        plain = not console.is_terminal
    return PlainView(title=title) if plain else RichView(console, title)
