"""Device links under the governor: at most K SYCL device links run at once, and each is
predicted from its own command line (inner link jobs x bytes per inner job).

A SYCL device link (`-fsycl-max-parallel-link-jobs=N` on its command line) holds N inner link
jobs, each with the whole fat-module bitcode, so one link can take tens of GiB. The build's link
plan (`xpu_adapter.plan_device_links`) chose N and K together so that K links of N inner jobs fit
the budget; the governor holds the (K+1)-th back however small its prediction looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkCandidate:
    """A waiting job as the link cap sees it."""

    id: int
    device_link: bool
    enqueued_at: float


def offerable(waiting: Sequence[LinkCandidate], running_links: int, max_links: int) -> list[int]:
    """The waiting ids admission may consider now, in the order given: every job that is not a
    device link, and at most `max_links - running_links` device links, earliest enqueued first
    (ties by id). `max_links` 0 or less: no cap."""
    if max_links <= 0:
        return [w.id for w in waiting]
    allowance = max(0, max_links - running_links)
    links = sorted((w for w in waiting if w.device_link), key=lambda w: (w.enqueued_at, w.id))
    allowed = {w.id for w in links[:allowance]}
    return [w.id for w in waiting if not w.device_link or w.id in allowed]


def device_link_bytes(kind: str, argv: Sequence[str], per_inner_job: int) -> int | None:
    """A link job's predicted peak from its command line when it is a SYCL device link, else
    None (compiles, other links, or no per-job figure)."""
    if kind != "link" or per_inner_job <= 0:
        return None
    # Imported here: the XPU toolchain module is only needed by builds that turned this on,
    # and it costs the governor's start ~0.1 s otherwise.
    from buildctl.toolchain.xpu_adapter import device_link_prediction

    return device_link_prediction(argv, per_inner_job)


LINK_JOBS_FLAG = "-fsycl-max-parallel-link-jobs="


def is_device_link(kind: str, argv: Sequence[str]) -> bool:
    """A link whose command line sets its inner device-link jobs. Asked of every job of every
    build: links without the flag (all of them outside SYCL builds) are told apart without
    importing the XPU toolchain module."""
    if kind != "link" or not any(LINK_JOBS_FLAG in arg for arg in argv):
        return False
    return device_link_bytes(kind, argv, 1) is not None
