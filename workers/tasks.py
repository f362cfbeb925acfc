"""Thin Celery tasks: take an id, call one pipeline function, map its outcome to Celery.

Task names are a contract: other services ``send_task`` them by name, so they come from
``scheduler.core.task_names`` and never change. Anyone who can write to Redis can send one, with any
arguments JSON can carry: every task checks its arguments before anything else, and refuses (a logged
error, no retry, nothing touched) what is not a live-lesson id.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import structlog
from celery import Task

from scheduler.core.checks import check_id
from scheduler.core.errors import InvalidRequest, SchedulerError
from scheduler.core.task_names import GC_TASK, REQUEST_TASK, TEARDOWN_TASK, step_task
from scheduler.services.catalog import Catalog, configured_catalog
from scheduler.services.lifecycle import request_lesson
from scheduler.services.state import Store, release
from scheduler.settings import get_settings
from workers.app import app
from workers.backends import get_backend
from workers.gc import collect
from workers.pipeline import Again, Next, Outcome, Pipeline

__all__ = ["create_networks", "gc", "request", "schedule_pods", "teardown", "verify_connectivity", "wait_ready"]

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1)
def catalog() -> Catalog:
    settings = get_settings()
    return configured_catalog(settings)


@lru_cache(maxsize=1)
def pipeline() -> Pipeline:
    # built lazily, after the prefork pool has forked, so no connection is shared across processes
    settings = get_settings()
    store = Store.from_settings(settings)
    return Pipeline(settings, store, get_backend(settings, deployment=store.deployment()), catalog())


def _checked(task: Task, livelesson: object) -> str | None:
    """The id, or None after logging the refusal: a hostile argument never reaches Redis keys or paths."""
    try:
        return check_id(livelesson)
    except InvalidRequest as exc:
        log.error("task argument refused", task=task.name, task_id=task.request.id, error=str(exc))
        return None


def _send(task: str, livelesson: str) -> None:
    app.send_task(task, args=[livelesson])


@app.task(name=REQUEST_TASK, bind=True)
def request(self: Task, lesson: str, session: str) -> dict[str, Any]:
    """Create or return the live lesson of (lesson, session) and start provisioning.

    Returns ``{"ok": true, "new": bool, "record": {...}}`` or ``{"ok": false, "error": {"kind", "message"}}``,
    so callers that only have Redis get an answer without importing anything of ours.
    """
    settings = get_settings()
    try:
        created = request_lesson(settings, pipeline().store, catalog(), lesson, session)
    except SchedulerError as exc:
        log.warning("request refused", task_id=self.request.id, error=str(exc))
        return {"ok": False, "error": {"kind": type(exc).__name__, "message": str(exc)}}
    return {"ok": True, "new": created.new, "record": created.record.model_dump(mode="json")}


def _step_task(step: str, run: Callable[[Pipeline, str], Outcome]) -> Any:
    """The task of one provisioning step: check the id, run one attempt of the step, then retry it later
    or send the next step's task, as the pipeline's outcome says."""

    def task(self: Task, livelesson: str) -> None:
        checked = _checked(self, livelesson)
        if checked is None:
            return
        outcome = run(pipeline(), checked)
        if isinstance(outcome, Again):
            raise self.retry(countdown=outcome.countdown)
        if isinstance(outcome, Next) and outcome.task is not None:
            _send(outcome.task, checked)

    task.__name__ = task.__qualname__ = step
    task.__doc__ = f"One attempt of the {step} step of a live lesson."
    # max_retries=None: unbounded here (retry(max_retries=None) would mean Celery's default of 3); the
    # pipeline bounds retries by attempts and the provisioning deadline
    return app.task(name=step_task(step), bind=True, max_retries=None)(task)


create_networks = _step_task("create_networks", Pipeline.create_networks)
schedule_pods = _step_task("schedule_pods", Pipeline.schedule_pods)
wait_ready = _step_task("wait_ready", Pipeline.wait_ready)
verify_connectivity = _step_task("verify_connectivity", Pipeline.verify_connectivity)


@app.task(name=TEARDOWN_TASK, bind=True, max_retries=10)
def teardown(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is None:
        return
    try:
        pipeline().teardown(checked)
    except SchedulerError as exc:
        if not exc.transient:
            raise
        raise self.retry(countdown=min(2**self.request.retries, 30)) from exc


@app.task(name=GC_TASK, bind=True)
def gc(self: Task) -> dict[str, int] | None:
    p = pipeline()
    lock = p.store.lock("gc", timeout=max(60, get_settings().gc_interval_seconds * 2))
    if not lock.acquire():
        log.info("gc skipped: another pass holds the lock")
        return None
    try:
        # a lock only the primary knows would vanish with it, and a second beat's pass could start on the
        # promoted replica: with replicas configured, a pass runs only under a lock a replica confirmed
        p.store.confirm("the GC lock")
    except SchedulerError as exc:
        log.warning("gc skipped: its lock is not replicated", error=str(exc))
        release(lock, "gc")
        return None
    try:
        counts = collect(p, _send)
    finally:
        # the lock was confirmed on a replica, so after a failover the promoted one holds it: release rides
        # that out rather than stop every pass until the lock's timeout (a minute or more)
        release(lock, "gc")
    log.info("gc pass", **counts)
    return counts
