"""The provisioning state machine, written once: each step, the status a record carries while it runs, the
Celery task that runs it, and what follows. Records, the queue, the pipeline and GC's re-drive all ask here.

    requested -> creating_networks -> scheduling_pods -> booting -> verifying -> ready
    any of those -> failed | deleting -> deleted

Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ACTIVE",
    "PROVISIONING",
    "STEPS",
    "STEP_STATUS",
    "TEARDOWN_TASK",
    "TERMINAL",
    "WAITING_STEPS",
    "Status",
    "Step",
    "next_task",
    "step_at",
    "task_for_status",
]

Status = Literal[
    "requested",
    "creating_networks",
    "scheduling_pods",
    "booting",
    "verifying",
    "ready",
    "failed",
    "deleting",
    "deleted",
]


@dataclass(frozen=True)
class Step:
    name: str
    status: Status  # while it runs
    # a waiting step runs many times by design (it watches briefly, then gives its worker slot back): the
    # provisioning deadline bounds it, not an attempt count
    waits: bool = False

    @property
    def task(self) -> str:
        """The Celery task name (a contract: other services may see it in Flower or send it)."""
        return f"lessons.{self.name}"


_TABLE = (
    Step("create_networks", "creating_networks"),
    Step("schedule_pods", "scheduling_pods"),
    Step("wait_ready", "booting", waits=True),
    Step("verify_connectivity", "verifying", waits=True),
)
TEARDOWN_TASK = "lessons.teardown"

STEPS: tuple[str, ...] = tuple(s.name for s in _TABLE)
STEP_STATUS: dict[str, Status] = {s.name: s.status for s in _TABLE}
WAITING_STEPS = frozenset(s.name for s in _TABLE if s.waits)
PROVISIONING: frozenset[Status] = frozenset({"requested", *STEP_STATUS.values()})
ACTIVE: frozenset[Status] = PROVISIONING | {"ready"}
TERMINAL: frozenset[Status] = frozenset({"failed", "deleted"})


def next_task(step: str) -> str | None:
    """The task that follows ``step`` once it is done (None after the last: the lesson is ready)."""
    names = [s.name for s in _TABLE]
    i = names.index(step)
    return _TABLE[i + 1].task if i + 1 < len(_TABLE) else None


def step_at(status: str) -> str | None:
    """The step a record in ``status`` is running (``requested`` waits for the first)."""
    if status == "requested":
        return _TABLE[0].name
    return next((s.name for s in _TABLE if s.status == status), None)


def task_for_status(status: str) -> str | None:
    """Which task carries a record forward from ``status`` (GC's re-drive of a stalled lesson)."""
    if status == "deleting":
        return TEARDOWN_TASK
    step = step_at(status)
    return f"lessons.{step}" if step else None
