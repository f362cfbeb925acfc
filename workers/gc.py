"""Garbage collection, one pass: what beat's ``lessons.gc`` (and ``lessonctl gc``) runs under the GC lock.

Reads only what is due: expired records are torn down, records stuck provisioning past their deadline
fail (and release their resources), stalled steps whose worker died are re-driven, and backend objects of
this deployment with no live record (orphans after a crash) are destroyed. Then the node is pruned if no
lesson is left on it.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from scheduler.core.steps import ACTIVE, PROVISIONING, STEPS, TERMINAL, step_at, task_for_status
from scheduler.core.task_names import TEARDOWN_TASK
from workers.pipeline import Pipeline, bind_context

__all__ = ["collect"]

log = structlog.get_logger(__name__)


def collect(pipeline: Pipeline, enqueue: Callable[[str, str], None]) -> dict[str, int]:
    """One pass; the caller holds the GC lock. Reads only expired, overdue and stalled records."""
    counts = {"expired": 0, "stuck": 0, "redriven": 0, "orphan": 0, "node_removed": 0}
    for livelesson in pipeline.store.due("expiry"):
        bind_context(livelesson, pipeline.store.get(livelesson), "gc")
        if pipeline.store.transition(livelesson, ACTIVE, "deleting") is not None:
            log.info("expired: tearing down")
            enqueue(TEARDOWN_TASK, livelesson)
            counts["expired"] += 1
        elif pipeline.store.get(livelesson) is None:
            pipeline.store.forget(livelesson)
    for livelesson in pipeline.store.due("deadline"):
        record = pipeline.store.get(livelesson)
        bind_context(livelesson, record, "gc")
        if record is None:
            pipeline.store.forget(livelesson)
        elif record.status in PROVISIONING:
            step = step_at(record.status) or STEPS[0]
            pipeline.fail(
                livelesson,
                step,
                f"provisioning did not finish within {pipeline.settings.provision_timeout_seconds}s "
                f"(stuck in {record.status})",
            )
            counts["stuck"] += 1
    for livelesson in pipeline.store.due("lease"):
        record = pipeline.store.get(livelesson)
        bind_context(livelesson, record, "gc")
        if record is None:
            pipeline.store.forget(livelesson)
            continue
        task = task_for_status(record.status)
        if task is not None:
            # the worker that held this step died (or its message was lost): send the step again
            pipeline.store.renew_lease(livelesson)
            enqueue(task, livelesson)
            counts["redriven"] += 1
            log.warning("re-driving a stalled step", livelesson=livelesson, status=record.status, task=task)
    held = pipeline.backend.list()
    records = {r.id: r for r in pipeline.store.many(held)}
    for livelesson in held:
        record = records.get(livelesson)
        bind_context(livelesson, record, "gc")
        if record is None or record.status in TERMINAL:
            pipeline.backend.destroy(livelesson)
            counts["orphan"] += 1
            log.info("orphan destroyed", livelesson=livelesson, record=record.status if record else None)
    # the node (the local backend's node namespace) stays while any lesson holds it, like a Kubernetes
    # node; the pass that leaves none on it removes it (prune checks under the node's lock), and says so
    counts["node_removed"] = int(pipeline.backend.prune())
    structlog.contextvars.unbind_contextvars("livelesson", "lesson", "session", "step")
    for reason, count in counts.items():
        if count and reason != "node_removed":
            pipeline.store.metrics.inc("gc_collected_total", count, reason=reason)
    return counts
