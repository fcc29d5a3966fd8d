"""Admission as the governor carries it out: a registered job is predicted (profile DB, then
measured siblings of this build, then a capped prior), queued, and admitted when
scheduler.decide says so; start-up gathering holds the first admission while launchers arrive.
"""

from __future__ import annotations

import dataclasses
import os

from buildctl import host
from buildctl.govern import links, policy, profiles, scheduler
from buildctl.govern.jobs import Job, policy_curve
from buildctl.govern.monitor import ProgressClock
from buildctl.govern.profiles import JobKey, Prediction
from buildctl.govern.state import GovernorState


class Admission(GovernorState):
    """Predicting, queueing and admitting jobs (the decisions are scheduler's and policy's)."""

    def enqueue(
        self,
        output: str,
        kind: str,
        compiler: str,
        *,
        argv: list[str] | None = None,
        cwd: str = "",
        fingerprint: str = "",
        source_bytes: int = 0,
        launcher_pid: int = 0,
        env: dict[str, str] | None = None,
    ) -> Job:
        """A job asks for admission: predict it, queue it, and decide."""
        now = self.now()
        if not self._admitted_any:
            if self._first_arrival is None:
                self._first_arrival = now
            self._last_arrival = now
        with self._lock:
            job = Job(
                id=self._next_id,
                output=output,
                kind=kind,
                argv=argv or [compiler],
                cwd=cwd,
                launcher_pid=launcher_pid,
                compiler=compiler,
                prediction=Prediction(0, "prior"),
                enqueued_at=now,
                queued_at_first=now,
                fingerprint=fingerprint,
                source_bytes=source_bytes,
                env=env,
            )
            self._next_id += 1
            # Known whether or not this build caps device links: the profile DB and the report
            # keep it, so a plan (`--device-links K`) can cap them from either.
            job.device_link = links.is_device_link(job.kind, job.argv)
            self._predict(job)
            self.jobs[job.id] = job
        prediction = job.prediction
        if prediction.bytes > self.opts.budget_bytes:
            over = prediction.bytes - self.opts.budget_bytes
            self.event(
                "exclusive",
                output,
                f"predicted {host.format_size(prediction.bytes)} > budget "
                f"{host.format_size(self.opts.budget_bytes)}: it will run alone and needs about "
                f"{host.format_size(over)} of swap (or raise --mem-budget)",
                predicted=prediction.bytes,
                swap_needed=over,
            )
        self._admit()
        return job

    def _key(self, job: Job) -> JobKey:
        return JobKey(job.output, job.kind, job.compiler, job.fingerprint, self.opts.project)

    def _sibling(self, job: Job) -> policy.Sibling:
        done = job.state == "done"
        return policy.Sibling(
            compiler=job.compiler,
            kind=job.kind,
            directory=os.path.dirname(job.output),
            family=profiles.family_of(job.output),
            source_bytes=job.source_bytes,
            # What it reached: a finished one's record also has wait4's maxrss, which sees a
            # short peak between two samples (a sibling predicted from samples alone was 40 %
            # low in the ggml replay, and six jobs were admitted on it).
            peak=max(job.peak_rss, job.record.peak_rss_bytes if done and job.record else 0),
            finished=done,
            curve=tuple(policy_curve(job.curve)) if done else (),
        )

    def _predict(self, job: Job) -> None:
        """The profile DB first; for a job it has never seen, measured siblings of this build;
        then a prior, capped to a slot's share of the budget, with a slow start for its family
        (the caller holds the lock)."""
        prediction = self.profiles.predict(self._key(job))
        job.capped_from = 0
        job.unknown_group = ""
        if prediction.source == "exact":
            job.prediction = prediction
            return
        # A SYCL device link's peak follows its inner link jobs: the same link measured with
        # another -fsycl-max-parallel-link-jobs (another fingerprint) or a sibling link says
        # less than its own command line does. The DB's cut-short bound is left out too: it
        # mixes in runs with other inner-job counts (a killed 16-job link is no floor for 2).
        link_bytes = links.device_link_bytes(job.kind, job.argv, self.opts.device_link_job_bytes)
        if link_bytes is not None:
            job.prediction = dataclasses.replace(
                prediction, bytes=link_bytes, source="device-link", censored=False, bound=0,
                curve=(),
            )
            return
        if prediction.source == "output":
            job.prediction = prediction
            return
        # Not this job's own history: siblings measured in this build know more than a
        # neighbour's peak from the DB (they ran with these flags, and carry a curve).
        siblings = [
            self._sibling(other)
            for other in self.jobs.values()
            if other.id != job.id and other.attempts == 1 and (
                (other.state == "done" and other.record is not None
                 and other.record.status == "ok")
                or other.state == "running"
            )
        ]
        guess = policy.sibling_prediction(self._sibling(job), siblings)
        if guess is not None:
            estimate, source, curve = guess
            floor = prediction.bound  # a cut-short run of this job: its lower bound
            prediction = dataclasses.replace(
                prediction, bytes=max(estimate, floor), source=source, curve=curve, cpu_s=0.0
            )
        elif prediction.source == "prior":
            job.unknown_group = f"{job.compiler}|{job.kind}|{profiles.family_of(job.output)}"
            if self.opts.cap_priors:
                capped = scheduler.capped_prior(
                    prediction.bytes, self._admission_budget(), self.opts.slots
                )
                if capped < prediction.bytes:
                    job.capped_from = prediction.bytes
                    prediction = dataclasses.replace(prediction, bytes=capped)
        job.prediction = prediction

    def _refresh_guesses(self) -> None:
        """A job finished: waiting jobs that were guessed (sibling or prior) are predicted
        again from what this build has measured since."""
        with self._lock:
            for job in self.jobs.values():
                if job.state == "waiting" and not job.protected and job.prediction.source in (
                    "prior", "sibling", "sibling-dir", "target", "family"
                ):
                    self._predict(job)

    # --- admission ---------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self._admitted_any and self._gathering():
            return
        now = self.now()
        with self._lock:
            allowed = self._link_allowed()
            held_links = sum(1 for j in self.jobs.values() if j.state == "waiting") - len(allowed)
            offered = set(allowed)
            waiting = [
                scheduler.Waiting(
                    j.id,
                    j.prediction.bytes,
                    j.enqueued_at,
                    self._share(j),
                    curve=j.prediction.curve,
                    unknown_group=j.unknown_group,
                )
                for j in self.jobs.values()
                if j.state == "waiting" and j.id in offered
            ]
            running = [
                scheduler.Running(
                    j.id,
                    j.prediction.bytes,
                    j.current_rss,
                    j.exclusive,
                    j.cpu_share,
                    envelope=self._running_envelope(j, now),
                    unknown_group=j.unknown_group,
                )
                for j in self.jobs.values()
                if j.state == "running"
            ]
            # A pause can only be lifted by running jobs giving memory back: with none running
            # (the host is short of memory for reasons of its own) waiting would never end, so
            # the build goes on one job at a time.
            paused = bool(self.paused) and bool(running)
            decision = scheduler.decide(
                waiting,
                running,
                self._admission_budget(),
                self.opts.slots,
                paused=paused,
                now=now,
                max_bypass_s=self.opts.max_bypass_s,
                unknown_limit=policy.unknown_family_limit(self.opts.slots),
                unknown_limits=self._unknown_limits(),
            )
            admit = decision.admit[:1] if self.paused and not running else decision.admit
            self.wait_reason = decision.reason or (f"paused: {self.paused}" if paused else "")
            if held_links and not self.wait_reason:
                self.wait_reason = (
                    f"{held_links} device link(s) wait: at most {self.opts.max_device_links} "
                    "at once (the link plan)"
                )
            for job_id in admit:
                job = self.jobs[job_id]
                job.state = "running"
                job.exclusive = job_id in decision.exclusive
                job.cpu_share = self._share(job)
                job.started_at = now
                job.current_rss = 0
                job.samples.clear()
                job.curve = []
                job.runq_by_pid.clear()
                job.clock = ProgressClock()
                job.verdict = None
                job.output_tail = ""
                job.kill_reason = None
                job.child_pid = None
                job.frozen_since = None
                job.frozen_s = 0.0
                job.growth_at_freeze = 0.0
                job.go.set()
                self._admitted_any = True

    def _unknown_limits(self) -> dict[str, int]:
        """Each unmeasured family's slow-start limit, ramped by its running jobs that vouch
        for it (policy.vouches; the caller holds the lock)."""
        now = self.now()
        return policy.ramped_limits(self.opts.slots, (
            (job.unknown_group,
             policy.vouches(tuple(job.curve), job.prediction.bytes, job.running_s(now)))
            for job in self.jobs.values()
            if job.state == "running" and job.unknown_group and not job.frozen
        ))

    def _link_allowed(self) -> list[int]:
        """Waiting ids admission may consider: all of them, except device links beyond the cap
        (govern.links.offerable; the caller holds the lock)."""
        waiting = [j for j in self.jobs.values() if j.state == "waiting"]
        cap = self.opts.max_device_links
        if cap <= 0:
            return [j.id for j in waiting]
        running = sum(1 for j in self.jobs.values() if j.state == "running" and j.device_link)
        return links.offerable(
            [links.LinkCandidate(j.id, j.device_link, j.enqueued_at) for j in waiting],
            running,
            cap,
        )

    @staticmethod
    def _running_envelope(job: Job, now: float) -> policy.Envelope:
        """A running job's memory from now on; a frozen one holds what it will still reach
        (its curve does not move on while it is stopped)."""
        envelope = policy.running_envelope(
            job.prediction.curve, job.prediction.bytes, job.current_rss, job.running_s(now),
            cpu_s=job.cpu_s, predicted_cpu_s=job.prediction.cpu_s, own=job.prediction.own_curve,
        )
        return policy.held_envelope(envelope) if job.frozen else envelope

    def _admission_budget(self) -> int:
        """Admission packs below the freeze mark, so that it never causes a freeze itself."""
        return int(self.opts.budget_bytes * policy.FREEZE_AT)

    def _share(self, job: Job) -> float:
        return job.prediction.cpu_share if self.opts.cpu_shares else 1.0

    def _gathering(self) -> bool:
        """Start-up: hold the first admission while launchers are still registering; a timer
        re-decides when the hold ends (registrations re-decide too)."""
        hold = scheduler.gather_hold_s(
            self.now(),
            self._first_arrival,
            self._last_arrival,
            quiet_s=self.opts.gather_quiet_s,
            max_s=self.opts.gather_max_s,
        )
        if hold <= 0:
            return False
        with self._lock:
            self.wait_reason = "gathering the first jobs (largest first)"
        if self._gather_timer is None and self._loop is not None:
            self._gather_timer = self._loop.call_later(hold, self._gather_done)
        return True

    def _gather_done(self) -> None:
        self._gather_timer = None
        self._admit()
