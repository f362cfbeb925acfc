"""Thin Celery tasks: take an id, call one pipeline function, map its outcome to Celery.

Task names are a contract (other services ``send_task`` them); see DESIGN.md. Anyone who can write to
Redis can send one, with any arguments JSON can carry: every task checks its arguments before anything
else, and refuses (a logged error, no retry, nothing touched) what is not a live-lesson id.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import redis
import structlog
from celery import Task

from scheduler.core.errors import InvalidRequest, SchedulerError
from scheduler.core.records import check_id
from scheduler.services.catalog import Catalog, configured_catalog
from scheduler.services.lifecycle import request_lesson
from scheduler.services.state import Store
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


def _step(task: Task, outcome: Outcome, livelesson: str) -> None:
    if isinstance(outcome, Again):
        # the step tasks have max_retries=None (unbounded: retry(max_retries=None) would mean Celery's
        # default of 3); the pipeline bounds retries by attempts and the provisioning deadline
        raise task.retry(countdown=outcome.countdown)
    if isinstance(outcome, Next) and outcome.task is not None:
        _send(outcome.task, livelesson)


@app.task(name="lessons.request", bind=True)
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


@app.task(name="lessons.create_networks", bind=True, max_retries=None)
def create_networks(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is not None:
        _step(self, pipeline().create_networks(checked), checked)


@app.task(name="lessons.schedule_pods", bind=True, max_retries=None)
def schedule_pods(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is not None:
        _step(self, pipeline().schedule_pods(checked), checked)


@app.task(name="lessons.wait_ready", bind=True, max_retries=None)
def wait_ready(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is not None:
        _step(self, pipeline().wait_ready(checked), checked)


@app.task(name="lessons.verify_connectivity", bind=True, max_retries=None)
def verify_connectivity(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is not None:
        _step(self, pipeline().verify_connectivity(checked), checked)


@app.task(name="lessons.teardown", bind=True, max_retries=10)
def teardown(self: Task, livelesson: str) -> None:
    if (checked := _checked(self, livelesson)) is None:
        return
    try:
        pipeline().teardown(checked)
    except SchedulerError as exc:
        if not exc.transient:
            raise
        raise self.retry(countdown=min(2**self.request.retries, 30)) from exc


@app.task(name="lessons.gc", bind=True)
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
        _release(lock)
        return None
    try:
        counts = collect(p, _send)
    finally:
        _release(lock)
    log.info("gc pass", **counts)
    return counts


def _release(lock: Any) -> None:
    """Release the GC lock, riding out a failover: the lock was confirmed on a replica, so the promoted one
    holds it, and a lock left there would stop every pass until its timeout (a minute or more)."""
    for attempt in range(8):
        try:
            lock.release()
            return
        except redis.exceptions.LockError:  # expired (or taken over) while we worked: nothing to release
            log.warning("gc lock expired before release")
            return
        except redis.RedisError as exc:  # Redis away: a primary changing takes seconds
            if attempt == 7:
                log.warning("gc lock not released; it times out", error=str(exc))
                return
            time.sleep(min(2**attempt * 0.25, 4.0))
