"""The provisioning steps and teardown, free of Celery: tasks call these and map the outcome.

Each step loads the record, checks that the record is at this step (a redelivered or re-driven step
that finds the record past it does nothing), calls the backend, and moves the record on atomically.
Every backend call is idempotent, so running a step twice is harmless.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import redis
import structlog

from scheduler.core.errors import PermanentError, SchedulerError, TemporaryError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.placement import NodeRoom, place_lesson
from scheduler.core.plan import Plan, Probe
from scheduler.core.plan_inputs import plan_for
from scheduler.core.records import (
    Check,
    EndpointState,
    Interface,
    LiveLesson,
    PresentationState,
    StepError,
    StepTiming,
    forward_command,
    now,
)
from scheduler.core.steps import (
    ACTIVE,
    RELEASING,
    STEP_STATUS,
    UNFINISHED,
    WAITING_STEPS,
    entered_from,
    next_task,
    status_after,
)
from scheduler.services.catalog import Catalog
from scheduler.services.state import Store, release, unreachable
from scheduler.settings import Settings
from workers.backends.base import Backend, Observation
from workers.connectivity import Burst, run_check

__all__ = ["Again", "Next", "Outcome", "Pipeline", "bind_context"]

log = structlog.get_logger(__name__)

OBSERVE_SLICE = 2.0  # a waiting step watches this long, then gives its worker slot back
WAIT_COUNTDOWN = 0.5
PING_BUDGET = 10.0  # per verification attempt; the first packet of a link waits for ARP
PLACEMENT_LOCK_SECONDS = 10.0  # a placement reads the records and backend once: well under this


@dataclass(frozen=True)
class Next:
    """Done; enqueue ``task`` (None: nothing follows)."""

    task: str | None


@dataclass(frozen=True)
class Again:
    """Run this step again in ``countdown`` seconds."""

    countdown: float


Outcome = Next | Again | None


class Pipeline:
    def __init__(self, settings: Settings, store: Store, backend: Backend, catalog: Catalog) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.catalog = catalog

    # --- helpers ------------------------------------------------------------------------------------

    def _lesson(self, record: LiveLesson) -> ResolvedLesson:
        lesson = self.catalog.get(record.lesson)
        if lesson is None:
            raise PermanentError(f"lesson {record.lesson!r} is no longer in the catalog")
        return lesson

    def plan(self, record: LiveLesson) -> Plan:
        return plan_for(record, self._lesson(record), self.settings, deployment=self.store.deployment())

    def _placed(self, record: LiveLesson) -> LiveLesson:
        """The record with its placement, decided once from the backend's free room when the backend has
        nodes to choose from (:meth:`Backend.rooms`), and kept, so every later step plans the same nodes.

        One placement at a time per instance (a Redis lock, so across workers and hosts), counting the
        lessons placed but not yet made on the backend: two lessons placed at once never share the same
        free pods, and LESSON_NODE_MAX_PODS holds."""
        if record.placement is not None or not self.backend.places:
            return record
        lesson = self._lesson(record)
        lock = self.store.lock("placement", timeout=PLACEMENT_LOCK_SECONDS, wait=PLACEMENT_LOCK_SECONDS)
        try:
            if not lock.acquire():
                raise TemporaryError("another lesson is being placed; will place this one after it")
        except redis.RedisError as exc:
            raise unreachable(exc) from exc
        try:
            placed = place_lesson(lesson, self._free_rooms(record.id))  # NoRoom: retried, room may free up

            def change(rec: LiveLesson) -> LiveLesson | None:
                if rec.placement is not None:
                    return None
                rec.placement = dict(placed.nodes)
                return rec

            after = self.store.update(record.id, change)
        finally:
            release(lock, "placement")
        log.info(
            "placed",
            nodes=list(placed.used),
            crossing_links=len(placed.crossing),
            bound=placed.bound,
            proven_minimal=placed.proven_minimal,
        )
        return after if after is not None else record

    def _free_rooms(self, livelesson: str) -> list[NodeRoom]:
        """The backend's free room, read under the placement lock, less the pods of active lessons placed
        but not yet held by the backend (their networks are not made yet).

        What the backend holds is read before its room: a lesson that becomes held between the two reads is
        then counted twice (room is under-stated for a moment), never not at all (over-placed)."""
        held = set(self.backend.list())
        rooms = self.backend.rooms() or []
        pending: Counter[str] = Counter()
        for other in self.store.active():
            if other.id != livelesson and other.placement and other.id not in held:
                pending.update(other.placement.values())
        return [dataclasses.replace(r, pods=max(0, r.pods - pending[r.name])) for r in rooms]

    def deadline_passed(self, record: LiveLesson) -> bool:
        return now() >= record.created_at + timedelta(seconds=self.settings.provision_timeout_seconds)

    def _begin(self, step: str, livelesson: str) -> LiveLesson | None:
        """Enter ``step``: the record must be at it (or just before it). Counts the attempt."""
        status = STEP_STATUS[step]
        allowed = entered_from(step)

        def change(rec: LiveLesson) -> LiveLesson | None:
            if rec.status not in allowed:
                return None
            rec.status = status
            timing = rec.steps.setdefault(step, StepTiming())
            timing.started_at = timing.started_at or now()
            timing.attempts += 1
            return rec

        record = self.store.update(livelesson, change)
        bind_context(livelesson, record, step)
        if record is None or record.status != status or step not in record.steps:
            return None
        return record

    def _finish(self, step: str, livelesson: str, edit: Callable[[LiveLesson], None] | None = None) -> Outcome:
        """Leave ``step`` for the status after it (with ``edit`` applied) and name the next task; None when
        the record is no longer at this step."""
        status, to = STEP_STATUS[step], status_after(step)

        def change(rec: LiveLesson) -> LiveLesson | None:
            if rec.status != status:
                return None
            rec.status = to
            rec.steps[step].finished_at = now()
            if edit is not None:
                edit(rec)
            return rec

        record = self.store.update(livelesson, change)
        if record is not None and record.status == to:
            timing = record.steps[step]
            seconds = (timing.finished_at - timing.started_at).total_seconds()  # type: ignore[operator]
            self.store.metrics.observe("lesson_step_seconds", seconds, step=step)
            log.info("step finished", next_status=to, attempts=timing.attempts, seconds=round(seconds, 4))
            return Next(next_task(step))
        # someone moved it first: if that was a teardown, what this step just made must go too
        if record is None or record.status in RELEASING:
            self.backend.destroy(livelesson)
        return None

    def fail(self, livelesson: str, step: str, message: str) -> LiveLesson | None:
        """Mark failed with the reason in words, and release the resources at once."""

        def change(rec: LiveLesson) -> LiveLesson | None:
            if rec.status not in ACTIVE:
                return None
            rec.status = "failed"
            rec.error = StepError(step=step, message=message)
            return rec

        record = self.store.update(livelesson, change)
        if record is not None and record.status == "failed" and record.error and record.error.message == message:
            self.store.metrics.inc("lessons_failed_total", step=step)
        log.error("live lesson failed", livelesson=livelesson, failed_step=step, error=message)
        try:
            self.backend.destroy(livelesson)
        except SchedulerError as exc:  # GC's orphan pass finishes it
            log.warning("teardown after failure incomplete; GC will retry", error=str(exc))
        return record

    def run(self, step: str, livelesson: str, runner: Callable[[LiveLesson], Outcome]) -> Outcome:
        """One attempt of a step, with the retry decision made from the error's ``transient``."""
        record = self._begin(step, livelesson)
        if record is None:
            log.info("step skipped: the record is not at this step", livelesson=livelesson, step=step)
            return None
        try:
            return runner(record)
        except SchedulerError as exc:
            attempts = record.steps[step].attempts
            if not exc.transient:
                self.fail(livelesson, step, str(exc))
                return None
            # waiting steps run many times by design; the deadline, not a count, bounds them
            if step not in WAITING_STEPS and attempts >= self.settings.step_max_attempts:
                self.fail(livelesson, step, f"gave up after {attempts} attempts: {exc}")
                return None
            if self.deadline_passed(record):
                self.fail(livelesson, step, f"provisioning deadline passed: {exc}")
                return None
            countdown = min(getattr(exc, "delay", 1.0) * 2 ** (attempts - 1), 10.0)
            log.warning("step failed, will retry", error=str(exc), attempts=attempts, countdown=countdown)
            return Again(countdown)
        except Exception as exc:  # a bug must fail the lesson loudly, never leave it stuck
            log.exception("step crashed")
            self.fail(livelesson, step, f"internal error: {type(exc).__name__}: {exc}")
            return None

    # --- steps --------------------------------------------------------------------------------------

    def create_networks(self, livelesson: str) -> Outcome:
        def body(record: LiveLesson) -> Outcome:
            self.backend.apply_networks(self.plan(self._placed(record)))
            return self._finish("create_networks", livelesson)

        return self.run("create_networks", livelesson, body)

    def schedule_pods(self, livelesson: str) -> Outcome:
        def body(record: LiveLesson) -> Outcome:
            plan = self.plan(record)
            self.backend.apply_pods(plan)
            pods = self.backend.pods

            def edit(rec: LiveLesson) -> None:
                rec.pods = pods
                rec.image_substitute = plan.image_substitute  # the record says it: never silently

            return self._finish("schedule_pods", livelesson, edit)

        return self.run("schedule_pods", livelesson, body)

    def wait_ready(self, livelesson: str) -> Outcome:
        def body(record: LiveLesson) -> Outcome:
            plan = self.plan(record)
            observation = self.backend.observe(plan, wait=OBSERVE_SLICE)
            endpoints = _endpoints(observation, plan, self.backend)
            fatal = [f"{p.endpoint}: {p.reason}" for p in observation.pods.values() if p.fatal]
            if fatal:
                self.fail(livelesson, "wait_ready", "pods cannot start: " + "; ".join(fatal))
                return None
            if not observation.ready:
                waiting = "; ".join(f"{p.endpoint}: {p.reason}" for p in observation.pods.values() if not p.ready)
                if self.deadline_passed(record):
                    self.fail(livelesson, "wait_ready", f"pods not ready by the deadline: {waiting}")
                    return None
                self.store.update(livelesson, lambda rec: _with_endpoints(rec, endpoints))
                return Again(WAIT_COUNTDOWN)
            nodes = sorted({p.node for p in observation.pods.values() if p.node})

            def edit(rec: LiveLesson) -> None:
                _with_endpoints(rec, endpoints)
                rec.node = nodes[0] if len(nodes) == 1 else ",".join(nodes)

            return self._finish("wait_ready", livelesson, edit)

        return self.run("wait_ready", livelesson, body)

    def verify_connectivity(self, livelesson: str) -> Outcome:
        # the last step: it records the pings' pass itself, and leaves for ready only after the lesson's
        # readyDelay, stamping ready_at
        status, to = STEP_STATUS["verify_connectivity"], status_after("verify_connectivity")

        def body(record: LiveLesson) -> Outcome:
            plan = self.plan(record)
            timing = record.steps["verify_connectivity"]
            passed_at = timing.finished_at
            if passed_at is None:
                checks = self._checks(plan, record)
                ok = all(c.ok for c in checks)

                def save(rec: LiveLesson) -> LiveLesson | None:
                    if rec.status != status:
                        return None
                    rec.checks = checks
                    if ok:
                        rec.steps["verify_connectivity"].finished_at = now()
                    return rec

                self.store.update(livelesson, save)
                if not ok:
                    failing = ", ".join(
                        f"{c.source}->{c.target} ({c.address} over {c.network}: {c.received}/{c.sent} replies, "
                        f"{c.loss_pct:g}% lost)"
                        for c in checks
                        if not c.ok
                    )
                    if self.deadline_passed(record):
                        self.fail(livelesson, "verify_connectivity", f"pings failed: {failing}")
                        return None
                    # A pod can die right after it was seen ready (a command that exits at once): then no
                    # retry helps, and the backend's reason says why.
                    fatal = [f"{p.endpoint}: {p.reason}" for p in self.backend.observe(plan).pods.values() if p.fatal]
                    if fatal:
                        self.fail(livelesson, "verify_connectivity", "pods stopped: " + "; ".join(fatal))
                        return None
                    log.warning("pings failing, will retry", failing=failing)
                    return Again(WAIT_COUNTDOWN)
                passed_at = now()
            remaining = plan.ready_delay - (now() - passed_at).total_seconds()
            if remaining > 0:  # the lesson's readyDelay: configuration settling inside the images
                return Again(min(remaining, self.settings.visibility_timeout_seconds / 2))

            def ready(rec: LiveLesson) -> LiveLesson | None:
                if rec.status != status:
                    return None
                rec.status = to
                rec.ready_at = now()
                return rec

            record_after = self.store.update(livelesson, ready)
            if record_after is not None and record_after.status == to:
                timing = record_after.steps["verify_connectivity"]
                verify_s = (timing.finished_at - timing.started_at).total_seconds()  # type: ignore[operator]
                elapsed = (record_after.ready_at - record_after.created_at).total_seconds()  # type: ignore[operator]
                self.store.metrics.observe("lesson_step_seconds", verify_s, step="verify_connectivity")
                self.store.metrics.observe("lesson_request_to_ready_seconds", elapsed)
                self.store.metrics.inc("lessons_ready_total")
                log.info("live lesson ready", request_to_ready_s=round(elapsed, 3))
            return Next(next_task("verify_connectivity"))

        return self.run("verify_connectivity", livelesson, body)

    def _checks(self, plan: Plan, record: LiveLesson) -> list[Check]:
        deadline = time.monotonic() + PING_BUDGET
        addresses = {(name, itf.name): itf.address for name, ep in record.endpoints.items() for itf in ep.interfaces}
        s = self.settings
        burst = Burst(s.ping_probes, s.ping_interval_ms / 1000, s.ping_max_loss_pct)

        def one(c: Probe) -> Check:
            address = addresses.get((c.target, c.interface))
            result = run_check(self.backend, plan, c, address, deadline=deadline, burst=burst) if address else None
            return Check(
                source=c.source,
                target=c.target,
                network=c.network,
                # by name: where the name led (the check fails unless that is the target's eth0 address)
                address=(result.resolved if c.by_name and result else None)
                or (address.split("/")[0] if address else None),
                by_name=c.by_name,
                crossed_nodes=c.crosses,
                sent=result.sent if result else 0,
                received=result.received if result else 0,
                loss_pct=result.loss_pct if result else 100.0,
                rtt_min_ms=result.rtt_min_ms if result else None,
                rtt_avg_ms=result.rtt_avg_ms if result else None,
                rtt_max_ms=result.rtt_max_ms if result else None,
                ok=result.ok if result else False,
            )

        with ThreadPoolExecutor(max_workers=min(16, max(1, len(plan.checks)))) as pool:
            checks = list(pool.map(one, plan.checks))
        sent, received = sum(c.sent for c in checks), sum(c.received for c in checks)
        self.store.metrics.inc("pings_sent_total", sent)
        self.store.metrics.inc("pings_received_total", received)
        return checks

    # --- teardown and GC ----------------------------------------------------------------------------

    def teardown(self, livelesson: str) -> None:
        """Destroy and mark deleted. A failed record keeps its status and error for inspection. An id with no
        record is destroyed only if the backend itself lists it (GC's orphans)."""
        record = self.store.get(livelesson)
        bind_context(livelesson, record, "teardown")
        if record is None and livelesson not in self.backend.list():
            # no record and nothing the backend holds: an id from nowhere (or long gone) touches nothing
            log.warning("teardown of an unknown live lesson: nothing to do")
            return
        if record is not None and record.status in ACTIVE:
            self.store.transition(livelesson, ACTIVE, "deleting")
        self.backend.destroy(livelesson)
        if record is not None and record.status != "failed":
            self.store.transition(livelesson, UNFINISHED, "deleted")
        log.info("live lesson torn down", livelesson=livelesson)


def _endpoints(observation: Observation, plan: Plan, backend: Backend) -> dict[str, EndpointState]:
    def presentations(endpoint: str) -> list[PresentationState]:
        pod = plan.pod(endpoint)
        return [
            PresentationState(
                name=p.name,
                type=p.type,
                port=p.port,
                reach=backend.reach(plan, pod, p.port),
                forward=forward_command(plan.livelesson, endpoint, p.port),
            )
            for p in pod.presentations
        ]

    return {
        name: EndpointState(
            pod=status.pod,
            node=status.node,
            ready=status.ready,
            interfaces=[Interface(name=i.name, network=i.network, address=i.address) for i in status.interfaces],
            presentations=presentations(name),
        )
        for name, status in observation.pods.items()
    }


def _with_endpoints(record: LiveLesson, endpoints: dict[str, EndpointState]) -> LiveLesson | None:
    if record.endpoints == endpoints:
        return None
    record.endpoints = endpoints
    return record


def bind_context(livelesson: str, record: LiveLesson | None, step: str) -> None:
    """Every log line about a live lesson carries its id, lesson, session and step."""
    structlog.contextvars.bind_contextvars(
        livelesson=livelesson,
        lesson=record.lesson if record else None,
        session=record.session if record else None,
        step=step,
    )
