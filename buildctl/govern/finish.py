"""What happens when an attempt ends: its outcome is classified (a crash gets a repro dir), the
retry policy decides whether it runs again, a cut-short run is recorded as a censored lower
bound, a finished one as a profile, and the job's report record and events are written.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from buildctl import host
from buildctl.govern import policy
from buildctl.govern.cache import evidence_from_done, is_cache_hit
from buildctl.govern.diagnostics import Cancelled, describe_exit, note_attempt, save_crash_repro
from buildctl.govern.jobs import Job, policy_curve
from buildctl.govern.outcome import Outcome, classify_exit, exit_of, oom_kills
from buildctl.govern.profiles import ProfileEntry, target_of
from buildctl.govern.state import GovernorState
from buildctl.report import JobRecord


class JobEnd(GovernorState):
    """Outcome -> retry -> profile write -> report record and events, for one attempt."""

    async def _complete(self, job: Job, done: dict) -> dict:
        """Classify the attempt; a crash gets its repro captured off the loop (it runs the
        compiler again for --version and -E), then the retry policy decides."""
        rc, sig = exit_of(done)
        outcome = classify_exit(
            rc,
            sig,
            str(done.get("stderr_tail", "")),
            job.kill_reason,
            self._interrupting,
            oom_killed=oom_kills() > job.oom_at_start,
        )
        repro = None
        if outcome.kind == "crash":
            repro = await asyncio.to_thread(self._crash_evidence, job, done, outcome)
        return self._finish(job, done, outcome, repro)

    def _crash_evidence(self, job: Job, done: dict, outcome: Outcome) -> str | None:
        """A repro dir for the first crash of a job; later crashes are noted in it."""
        rc, sig = exit_of(done)
        tail = str(done.get("stderr_tail", ""))
        if job.repro_dir and job.crashes:
            note_attempt(Path(job.repro_dir), job.attempts,
                         f"{describe_exit(rc, sig)}: {outcome.reason}", tail)
            return job.repro_dir
        try:
            path = save_crash_repro(
                self._repro_root(),
                output=job.output,
                argv=job.argv,
                cwd=job.cwd,
                env=job.env,
                rc=rc,
                sig=sig,
                reason=outcome.reason,
                stderr_tail=tail,
                compiler=job.compiler,
                attempt=job.attempts,
                cancel=self._cancel,
            )
        except Cancelled:
            return None
        except OSError as exc:
            self.event("info", job.output, f"could not save a crash repro: {exc}")
            return None
        return str(path)

    def _requeue(self, job: Job) -> None:
        with self._lock:
            job.attempts += 1
            job.state = "waiting"
            job.enqueued_at = self.now()
            job.peak_rss = 0
            job.frozen_total_s += job.frozen_s
        self._admit()

    def _record_profile(self, entry: ProfileEntry) -> None:
        """Profile writes never stop a build: the DB says when it cannot record, once."""
        seen = len(self.profiles.warnings)
        self.profiles.record(entry)
        for warning in self.profiles.warnings[seen:]:
            self.event("info", entry.output, warning)

    def _profile_entry(self, job: Job, peak: int, maxrss: int, wall_s: float, cpu_s: float,
                       censored: bool) -> ProfileEntry:
        return ProfileEntry(
            output=job.output,
            kind=job.kind,
            compiler=job.compiler,
            fingerprint=job.fingerprint,
            project=self.opts.project,
            peak_rss_bytes=peak,
            wait4_maxrss_bytes=maxrss,
            wall_s=wall_s,
            cpu_s=cpu_s,
            runq_wait_s=round(sum(job.runq_by_pid.values()), 3),
            target=target_of(job.output),
            censored=censored,
            curve=[] if censored else list(policy_curve(job.curve)),
            source_bytes=job.source_bytes,
            device_link=job.device_link,
        )

    def _finish(
        self, job: Job, done: dict, outcome: Outcome | None = None, repro: str | None = None
    ) -> dict:
        """An attempt ended: a cut-short run is recorded as a lower bound, then the job runs
        again (`retry`) or is recorded, its profile written, and the launcher answered."""
        rc, sig = exit_of(done)
        tail = str(done.get("stderr_tail", ""))
        if outcome is None:  # remote executors: classify (and capture) in line
            outcome = classify_exit(rc, sig, tail, job.kill_reason, self._interrupting)
            if outcome.kind == "crash":
                repro = self._crash_evidence(job, done, outcome)
        if self._interrupting and outcome.kind not in ("ok", "interrupted"):
            outcome = Outcome("interrupted", "stopped by an interrupt")
        elapsed = job.running_s(self.now())
        if job.frozen_since is not None:  # it ended while frozen (a kill continues the tree)
            job.frozen_s += self.now() - job.frozen_since
            job.frozen_since = None
            # Every freeze has its thaw in the log, so readers can pair them.
            self.event("thaw", job.output, "it ended while frozen")
        maxrss = int(done.get("maxrss", 0))
        peak = max(job.peak_rss, maxrss)
        with self._lock:
            job.state = "done"
            job.child_pid = None
        kind = outcome.kind
        if repro:
            job.repro_dir = repro
        if kind in ("guard", "hang", "spin", "interrupted") and peak > 0:
            # Cut short: what it reached is a lower bound, never its peak.
            self._record_profile(self._profile_entry(
                job, peak, maxrss, elapsed, float(done.get("cpu_s", 0.0)), censored=True
            ))
        retry = self._retry(job, outcome, peak, rc, sig, repro)
        if retry is not None:
            return retry
        record = self._job_record(job, done, kind, peak, maxrss, elapsed, rc, sig)
        with self._lock:
            job.record = record
            self.finished.append(record)
            job.env = None  # a finished job's environment is not needed any more
            job.output_tail = ""
        if rc == 0:
            self._refresh_guesses()  # this build now knows more about the job's siblings
        self._admit()  # the slot is free: admit before the profile write, not after it
        if rc == 0:
            entry = self._profile_entry(job, peak, maxrss, elapsed, record.cpu_s, censored=False)
            # A compiler-cache hit measured the cache, not the compile: kept, never a peak.
            entry.cache_hit = is_cache_hit(evidence_from_done(
                job.argv, job.kind, done, peak, job.prediction.bytes, job.prediction.wall_s,
                job.prediction.source,
            ))
            self._record_profile(entry)
        return self._reply(job, outcome, repro)

    def _retry(
        self, job: Job, outcome: Outcome, peak: int, rc: int, sig: int, repro: str | None
    ) -> dict | None:
        """The retry policy: the reply when the job runs again (its events logged), else None
        (a last crash logged; a crash that passed on a re-run noted in its repro dir)."""
        kind = outcome.kind
        rerun = policy.after_memory_kill(job.prediction.bytes, peak, job.memory_kills)
        if kind == "guard" and rerun is not None:
            job.prediction = dataclasses.replace(
                job.prediction, bytes=rerun.reserve, censored=True
            )
            job.protected = rerun.protected
            job.capped_from = 0
            job.unknown_group = ""
            self.event(
                "retry",
                job.output,
                "re-running after a memory kill, protected from further kills, reserved "
                f"{host.format_size(rerun.reserve)}",
                attempt=job.attempts,
                reason="memory",
                predicted=rerun.reserve,
            )
            self._requeue(job)
            return {"op": "retry"}
        if kind in ("hang", "spin") and job.hang_kills <= self.opts.retries:
            detail = (f"killed as {'stalled' if kind == 'hang' else 'spinning'} "
                      f"(diagnostics: {job.repro_dir}); retrying, attempt {job.attempts + 1}")
            self.event("retry", job.output, detail, attempt=job.attempts, reason=kind,
                       bundle=job.repro_dir)
            self._requeue(job)
            return {"op": "retry", "detail": detail}
        if kind == "crash":
            job.crashes += 1
            if job.crashes <= self.opts.crash_retries:
                detail = f"{outcome.reason}; repro: {repro}; retrying once"
                self.event("crash", job.output, detail, repro=repro, signal=sig, rc=rc,
                           attempt=job.attempts, compiler=job.compiler)
                self.event("retry", job.output, f"re-running after a crash (attempt "
                           f"{job.attempts + 1})", attempt=job.attempts, reason="crash")
                self._requeue(job)
                return {"op": "retry", "detail": detail}
            self.event("crash", job.output,
                       f"{outcome.reason} again (attempt {job.attempts}); repro: {repro}",
                       repro=repro, signal=sig, rc=rc, attempt=job.attempts,
                       compiler=job.compiler)
        elif kind == "ok" and job.crashes and job.repro_dir:
            # Crashed before, passed now: a flaky compiler is worth knowing about.
            note_attempt(Path(job.repro_dir), job.attempts, "succeeded (the crash is flaky)")
        return None

    def _job_record(self, job: Job, done: dict, kind: str, peak: int, maxrss: int,
                    elapsed: float, rc: int, sig: int) -> JobRecord:
        """The job's line in the report."""
        status = {
            "ok": "ok",
            "hang": "hung",
            "spin": "hung",
            "guard": "killed-retried",
            "crash": "crashed",
            "interrupted": "interrupted",
        }.get(kind, "failed")
        last = job.verdict
        return JobRecord(
            output=job.output,
            kind=job.kind,  # type: ignore[arg-type]
            target=target_of(job.output),
            predicted_rss_bytes=job.prediction.bytes,
            prediction_source=job.prediction.source,
            peak_rss_bytes=peak,
            wait4_maxrss_bytes=maxrss,
            wall_s=round(elapsed, 3),
            cpu_s=round(float(done.get("cpu_s", 0.0)), 3),
            runq_wait_s=round(sum(job.runq_by_pid.values()), 3),  # 0 for remote jobs: unseen
            cpu_share=job.cpu_share,
            queued_s=round(job.started_at - job.queued_at_first, 3),
            started_at_s=round(job.started_at, 3),
            attempts=job.attempts,
            status=status,  # type: ignore[arg-type]
            exit_code=rc,
            exclusive=job.exclusive,
            frozen_s=round(job.frozen_total_s + job.frozen_s, 3),
            memory_kills=job.memory_kills,
            verdict=last.state if last and last.state != "starting" else "healthy",
            verdict_evidence=last.evidence if last else "",
            repro_dir=job.repro_dir,
            signal=sig or None,
            node=done.get("node"),
            curve=list(policy_curve(job.curve)),
            predicted_curve=list(job.prediction.curve),
            device_link=job.device_link,
        )

    def _reply(self, job: Job, outcome: Outcome, repro: str | None) -> dict:
        """The launcher's answer for a job that does not run again: ok, or fail with why."""
        kind = outcome.kind
        last = job.verdict
        if kind in ("hang", "spin"):
            what = "stalled" if kind == "hang" else "kept spinning"
            return {"op": "fail", "detail": (
                f"{what} on all {job.attempts} attempts and was killed each time; "
                f"diagnostics: {job.repro_dir}"
                + (f" ({last.evidence})" if last else "")
            )}
        if kind == "crash":
            return {"op": "fail", "detail": (
                f"{outcome.reason} on all {job.attempts} attempts; "
                f"repro: {repro} (./rerun.sh reproduces it); compiler: {job.compiler}"
            )}
        if kind == "guard":
            return {"op": "fail", "detail": (
                f"killed by the memory guard after its one protected re-run ({job.attempts} "
                "attempts): the host ran out of memory beside it; raise --mem-budget or free "
                "memory on the host"
            )}
        if kind == "killed":
            return {"op": "fail", "detail": f"{job.output}: {outcome.reason}"}
        return {"op": "ok"}

    def _abandon(self, job: Job) -> None:
        """The launcher went away (ninja killed, Ctrl-C): kill what it started, keep no slot."""
        if job.state == "running":
            self._kill_tree(job, "launcher-gone")
        with self._lock:
            job.state = "done"
            if job.record is None:
                record = JobRecord(
                    output=job.output,
                    kind=job.kind,  # type: ignore[arg-type]
                    target=target_of(job.output),
                    predicted_rss_bytes=job.prediction.bytes,
                    prediction_source=job.prediction.source,
                    peak_rss_bytes=job.peak_rss,
                    attempts=job.attempts,
                    status="interrupted",
                    device_link=job.device_link,
                )
                job.record = record
                self.finished.append(record)
        self._admit()
