"""Device links under the budget: K inner link jobs and L concurrent links from the budget and
the link profiles (pure), the per-link prediction from its command line, and --aot on tags that
hard-code their AOT devices."""

from __future__ import annotations

from pathlib import Path

import pytest
from upstream_checkouts import SKIP_REASON, checkout_tag, upstream_git_dir

from buildctl.errors import BadInput
from buildctl.kernels import xpu
from buildctl.toolchain import compat, upstream, xpu_adapter

GiB = 1024**3
PER = 6 * GiB  # ~per inner job, the 24-core/96 GB field figure


@pytest.mark.parametrize(
    "budget, links, cores, inner, concurrent",
    [
        (16 * GiB, 4, 2, 1, 2),  # two inner jobs fit: two links of one overlap serial phases
        (48 * GiB, 4, 8, 2, 4),  # eight fit: four links of two, not one link of eight
        (48 * GiB, 4, 4, 1, 4),  # four cores bind
        (96 * GiB, 4, 24, 4, 4),  # the PR #347 builders: four libraries x 4 inner jobs
        (200 * GiB, 4, 64, 11, 3),  # 33 inner jobs fit: three links of 11 use them all
        (200 * GiB, 1, 64, 16, 1),  # one link: capped at upstream's 16
        (4 * GiB, 4, 8, 1, 1),  # not even one inner job fits: one link alone
    ],
)
def test_plan_device_links(
    budget: int, links: int, cores: int, inner: int, concurrent: int
) -> None:
    plan = xpu_adapter.plan_device_links(budget, PER, links, cores=cores)
    assert (plan.inner_jobs, plan.concurrent_links) == (inner, concurrent)
    if plan.fits:
        assert plan.inner_jobs * plan.concurrent_links * PER <= budget
    assert plan.link_peak_bytes == plan.inner_jobs * PER


def test_more_than_one_link_at_once_when_it_fits() -> None:
    """The old rule assumed one link at a time with K = budget / per-job: 8 inner jobs for one
    link, and the other three links waiting. The plan runs four links of two in the same
    memory."""
    old = xpu_adapter.link_jobs_for_budget(48 * GiB, PER)
    plan = xpu_adapter.plan_device_links(48 * GiB, PER, 4, cores=8)
    assert old == 8
    assert plan.concurrent_links == 4 and plan.inner_jobs * plan.concurrent_links * PER <= 48 * GiB


def test_per_inner_job_from_the_shipped_link_profile() -> None:
    per, links = xpu._link_profile("v0.1.9", xpu_adapter.load_manifest())
    assert links == 4  # the four xe2 kernel libraries
    assert per is not None and 5 * GiB < per < 7 * GiB


def test_device_link_prediction_follows_its_inner_jobs() -> None:
    argv = ["icpx", "-fsycl", "-fsycl-max-parallel-link-jobs=3", "-o", "libattn.so"]
    assert xpu_adapter.device_link_prediction(argv, PER) == 3 * PER
    assert xpu_adapter.device_link_prediction(["g++", "-o", "a.so"], PER) is None


def _checkout(aot_from_env: bool) -> upstream.UpstreamCheckout:
    facts = upstream.cmake_facts(
        'set(AOT_DEVICES "pvc,bmg-g21-a0")\n'
        + ("if(DEFINED ENV{VLLM_XPU_AOT_DEVICES})\n" if aot_from_env else "")
    )
    ident = upstream.CheckoutIdentity("v0.1.3", 0, None, False, "test")
    return upstream.UpstreamCheckout(Path("."), ident, facts, upstream.setup_facts(""), "x")


def test_aot_on_hard_coded_tags_is_an_error() -> None:
    with pytest.raises(BadInput, match="hard-codes AOT_DEVICES"):
        xpu.check_aot_supported("B70", _checkout(aot_from_env=False))
    xpu.check_aot_supported(None, _checkout(aot_from_env=False))
    xpu.check_aot_supported("B70", _checkout(aot_from_env=True))


@pytest.mark.parametrize("row", compat.load_matrix().kernel_refs, ids=lambda r: r.ref)
def test_matrix_knows_which_tags_read_the_aot_env(row: compat.KernelRef) -> None:
    hard_coded = row.ref in ("v0.1.0", "v0.1.1", "v0.1.2", "v0.1.3")
    assert row.aot_devices_from_env is not hard_coded


@pytest.mark.skipif(upstream_git_dir() is None, reason=SKIP_REASON)
def test_real_v0_1_3_refuses_aot(tmp_path: Path) -> None:
    git_dir = upstream_git_dir()
    assert git_dir is not None
    src = checkout_tag(git_dir, "v0.1.3", tmp_path / "co")
    with pytest.raises(BadInput, match="hard-codes AOT_DEVICES"):
        xpu.xpu_project(
            torch=None,
            source=src,
            preset=None,
            low_ram=False,
            budget_bytes=16 * GiB,
            cache_dir=tmp_path / "cache",
            oneapi_roots=[],
            compiler=None,
            aot="B70",
        )
