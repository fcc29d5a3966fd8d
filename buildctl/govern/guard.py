"""The memory guard and the verdicts, as the governor carries them out each sampling tick:
policy.pressure_actions' pause/freeze/thaw/kill applied through the runner, and monitor's
stalled/spinning/thrashing verdicts turned into events, kills and stall bundles.
"""

from __future__ import annotations

import dataclasses

from buildctl import host
from buildctl.govern import policy
from buildctl.govern.diagnostics import collect_tree, save_stall_bundle
from buildctl.govern.jobs import Job
from buildctl.govern.monitor import ProgressClock, Verdict, VerdictPolicy, read_wchan, verdict
from buildctl.govern.state import GovernorState


class Guard(GovernorState):
    """Memory pressure and hung jobs: what the sampler's tick does after it measured."""

    def _live(self, job: Job, now: float) -> policy.LiveJob:
        points = [(s.t, s.rss) for s in job.samples]
        growth = job.growth_at_freeze if job.frozen else policy.growth_rate(points)
        if len(points) < 3:
            # Just thawed (its samples start again): it resumes the climb it was frozen in,
            # long before its new samples can show a rate.
            growth = max(growth, job.growth_at_freeze)
        recent = None if job.frozen else policy.recent_rate(points)
        ahead = soon = 0
        own_curve = False
        path: tuple[int, ...] = ()
        if job.prediction.curve:
            own_curve = job.prediction.own_curve
            envelope = policy.running_envelope(
                job.prediction.curve, job.prediction.bytes, job.current_rss, job.running_s(now),
                cpu_s=job.cpu_s, predicted_cpu_s=job.prediction.cpu_s, own=own_curve,
            )
            ahead = envelope.peak_ahead()
            if own_curve:
                soon = policy.expected_soon(
                    job.prediction.curve, job.running_s(now), policy.GROWTH_HORIZON_S
                )
                path = policy.expected_path(
                    job.prediction.curve, job.running_s(now), policy.GROWTH_HORIZON_S
                )
        elif job.prediction.source not in ("prior",) and not job.capped_from:
            ahead = max(job.prediction.bytes, job.current_rss)
        return policy.LiveJob(
            job_id=job.id,
            rss=job.current_rss,
            growth_bps=growth,
            started_at=job.started_at,
            cpu_s=job.cpu_s,
            frozen=job.frozen,
            protected=job.protected,
            peak_ahead=ahead,
            soon=soon,
            recent_bps=recent,
            own_curve=own_curve,
            soon_path=path,
            predicted=0 if job.prediction.source == "prior" else job.prediction.bytes,
        )

    def _memory_guard(self, avail: int, running: list[Job]) -> None:
        """Pause, freeze, thaw or (last) kill, as policy.pressure_actions says; PSI pressure and
        a thrashing job pause admission too."""
        now = self.now()
        live_jobs = [j for j in running if not j.kill_reason]  # a tree being killed frees
        actions = policy.pressure_actions(
            [self._live(j, now) for j in live_jobs],
            self.opts.budget_bytes,
            host_available=avail,
            low_water=self.low_water,
            critical=self.critical,
            kill_horizon_s=policy.kill_horizon(self.opts.sample_interval_s),
            can_freeze=self.opts.freeze and self.opts.executor is None,
        )
        reason = actions.pause
        if not reason:
            # A thrashing job needs memory, not company: shed load instead of killing it. It is
            # named before host-wide PSI, which its own faults raise.
            for job in running:
                if job.verdict and job.verdict.state == "thrashing":
                    reason = (f"{job.output} is thrashing "
                              f"({job.verdict.faults_per_s:.0f} major faults/s)")
                    break
        if not reason:
            pressure = host.memory_pressure()
            if pressure and pressure[1] >= self.opts.psi_full_pause:
                reason = f"memory pressure: PSI full avg10 {pressure[1]:.1f}%"
        if reason and not self.paused:
            self.event("throttle", None, f"admission paused: {reason}", available=avail)
        elif reason and _cause(reason) != _cause(self.paused):
            self.event("throttle", None, f"admission still paused: {reason}", available=avail)
        elif not reason and self.paused:
            self.event("throttle", None, "admission resumed", available=avail)
        self.paused = reason
        live_total = sum(j.current_rss for j in live_jobs)
        for job_id in actions.freeze:
            job = self.jobs[job_id]
            if self.runner.freeze(job):
                with self._lock:
                    job.frozen_since = now
                    points = [(s.t, s.rss) for s in job.samples]
                    job.growth_at_freeze = max(policy.growth_rate(points),
                                               policy.recent_rate(points))
                self.event("freeze", job.output,
                           f"froze it at {host.format_size(job.current_rss)}: {actions.why} "
                           f"(live {host.format_size(live_total)})", job_rss=job.current_rss,
                           total_rss=live_total)
        for job_id in actions.thaw:
            job = self.jobs[job_id]
            self.runner.thaw(job)
            with self._lock:
                if job.frozen_since is not None:
                    job.frozen_s += now - job.frozen_since
                job.frozen_since = None
                job.clock = ProgressClock()  # frozen time is not a stall
                job.samples.clear()
            self.event("thaw", job.output, f"resumed it (live {host.format_size(live_total)})",
                       total_rss=live_total)
        if actions.kill is not None:
            victim = self.jobs[actions.kill]
            victim.kill_reason = "memory"
            victim.memory_kills += 1
            self._kill_tree(victim, "memory")
            self.event(
                "oom-guard-kill",
                victim.output,
                f"{actions.why} (live {host.format_size(live_total)} of "
                f"{host.format_size(self.opts.budget_bytes)}, host available "
                f"{host.format_size(avail)}): killed the job that loses least work per byte "
                f"({host.format_size(victim.current_rss)}, {victim.cpu_s:.1f} s CPU); it re-runs "
                "once, protected",
                reason="memory",
                total_rss=live_total,
                job_rss=victim.current_rss,
                cpu_lost_s=round(victim.cpu_s, 3),
                available=avail,
            )

    def _spin_ceiling(self, job: Job) -> float | None:
        """Only a job's own history says how long is too long: the same output, with the same
        compile fingerprint or (after an edit of its source or flags, when a runaway compile is
        most likely) with another one."""
        longest = job.prediction.wall_s
        if job.prediction.source not in ("exact", "output") or not longest:
            return None
        return max(longest * self.opts.spin_factor, self.opts.hang_after_s, self.opts.spin_floor_s)

    def _verdicts(self, running: list[Job]) -> None:
        for job in running:
            if job.kill_reason or not job.samples:
                continue
            rules = VerdictPolicy(
                hang_after_s=self.opts.hang_after_s, spin_ceiling_s=self._spin_ceiling(job)
            )
            result = verdict(
                list(job.samples), rules, job.running_s(self.now()), job.clock.since()
            )
            previous = job.verdict.state if job.verdict else "starting"
            with self._lock:
                job.verdict = result
            if result.state == previous:
                continue
            if result.state == "thrashing":
                self.event("thrash", job.output, result.evidence, **result.data())
            elif previous == "thrashing" and result.state == "healthy":
                self.event("info", job.output, f"no longer thrashing: {result.evidence}")
            elif result.state in ("stalled", "spinning"):
                self._kill_hung(job, result)

    def _kill_hung(self, job: Job, result: Verdict) -> None:
        """Evidence first (the tree as it hangs), then the kill, then the bundle on disk."""
        evidence = result.evidence
        if result.culprit is not None:
            wchan = read_wchan(result.culprit.pid)
            if wchan:
                evidence += f" in {wchan}"
        processes = collect_tree(job.child_pid)
        job.kill_reason = "hang" if result.state == "stalled" else "spin"
        job.hang_kills += 1
        self._kill_tree(job, job.kill_reason)
        with self._lock:
            job.verdict = dataclasses.replace(result, evidence=evidence)
        bundle: str | None = None
        try:
            bundle = str(
                save_stall_bundle(
                    self._repro_root(),
                    output=job.output,
                    argv=job.argv,
                    cwd=job.cwd,
                    env=job.env,
                    evidence=evidence,
                    verdict_data=result.data(),
                    processes=processes,
                    output_tail=job.output_tail,
                    compiler=job.compiler,
                    attempt=job.attempts,
                )
            )
            job.repro_dir = bundle
        except OSError as exc:
            self.event("info", job.output, f"could not save the stall bundle: {exc}")
        kind = "stall" if result.state == "stalled" else "spin"
        self.event(kind, job.output, f"{evidence}; diagnostics: {bundle}", bundle=bundle,
                   attempt=job.attempts, **result.data())
        self.event("hang", job.output, f"killed the tree ({result.state}, attempt "
                   f"{job.attempts})", bundle=bundle, attempt=job.attempts)


def _cause(reason: str) -> str:
    """A pause reason without its changing figures (faults/s, PSI %), to tell causes apart."""
    return reason.split(":")[0].split(" (")[0]
