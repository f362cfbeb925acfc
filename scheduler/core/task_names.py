"""The Celery task names, written once: a contract, since other services ``send_task`` them by name and
Flower shows them. The request side enqueues by these names and the workers register under them, so
neither imports the other. Pure data.
"""

from __future__ import annotations

__all__ = ["GC_TASK", "REQUEST_TASK", "TASK_PREFIX", "TEARDOWN_TASK", "step_task"]

TASK_PREFIX = "lessons."


def step_task(step: str) -> str:
    """The name of the task that runs ``step`` (a step of :mod:`scheduler.core.steps`)."""
    return TASK_PREFIX + step


REQUEST_TASK = TASK_PREFIX + "request"  # create or return a live lesson, then start its first step
TEARDOWN_TASK = TASK_PREFIX + "teardown"
GC_TASK = TASK_PREFIX + "gc"  # one garbage-collection pass (beat sends it)
