"""The build report (DESIGN.md §4): a pydantic model written by `--report FILE`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

JobKind = Literal["compile", "link", "other"]
JobStatus = Literal["ok", "failed", "hung", "killed-retried", "crashed", "interrupted", "running"]
EventKind = Literal[
    "hang",
    "stall",
    "thrash",
    "throttle",
    "oom-guard-kill",
    "retry",
    "split",
    "exclusive",
    "crash",
    "spin",
    "interrupt",
    "info",
]


class JobRecord(BaseModel):
    output: str
    kind: JobKind
    target: str = ""
    predicted_rss_bytes: int
    prediction_source: str = "prior"
    peak_rss_bytes: int = 0
    wait4_maxrss_bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # Runnable but waiting for a CPU (sampled): cpu_s + this is what the job asked of the CPUs.
    runq_wait_s: float = 0.0
    # The fraction of a CPU slot it was admitted with (None: a report from before CPU shares).
    cpu_share: float | None = None
    queued_s: float = 0.0
    started_at_s: float = 0.0
    attempts: int = 1
    status: JobStatus = "running"
    exit_code: int | None = None
    exclusive: bool = False
    node: str | None = None
    verdict: str = "healthy"
    # What the verdict rests on: CPU share, RSS and its trend, major faults/s, the process.
    verdict_evidence: str = ""
    # Crash repro or stall bundle of this job (kept even when a retry succeeded).
    repro_dir: str | None = None
    signal: int | None = None  # the signal the command died of, if any


class Event(BaseModel):
    kind: EventKind
    t_s: float
    output: str | None = None
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class BuildReport(BaseModel):
    schema_: Literal["buildctl.report/1"] = Field("buildctl.report/1", alias="schema")
    buildctl_version: str = ""
    command: list[str] = Field(default_factory=list)
    source_dir: str = ""
    build_dir: str = ""
    budget_bytes: int
    slots: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_total_rss_bytes: int = 0
    host_total_bytes: int = 0
    host_min_available_bytes: int = 0
    status: Literal["ok", "failed", "interrupted", "running"] = "running"
    exit_code: int | None = None
    jobs: list[JobRecord] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    samples: list[tuple[float, int, int]] = Field(
        default_factory=list, description="(t_s, total job RSS, host available) over time"
    )

    model_config = {"populate_by_name": True}

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically so a crash never leaves half a report."""
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BuildReport:
        return cls.model_validate(json.loads(Path(path).read_text()))


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
