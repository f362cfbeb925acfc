"""The provisioning state machine, written once: each step, the status a record carries while it runs, the
Celery task that runs it, and what follows. Records, the queue, the pipeline, GC's re-drive, the API, the
client and the CLI ask here for every status set and every next status.

    requested -> creating_networks -> scheduling_pods -> booting -> verifying -> ready
    any of those -> failed | deleting -> deleted

Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from scheduler.core.task_names import TEARDOWN_TASK, step_task

__all__ = [
    "ACTIVE",
    "FIRST_TASK",
    "LEASED",
    "PROVISIONING",
    "RELEASING",
    "SETTLED",
    "STATUSES",
    "STEPS",
    "STEP_STATUS",
    "TEARDOWN_TASK",
    "TERMINAL",
    "UNFINISHED",
    "WAITING_STEPS",
    "Status",
    "Step",
    "entered_from",
    "next_task",
    "status_after",
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
        return step_task(self.name)


_TABLE = (
    Step("create_networks", "creating_networks"),
    Step("schedule_pods", "scheduling_pods"),
    Step("wait_ready", "booting", waits=True),
    Step("verify_connectivity", "verifying", waits=True),
)
_BY_NAME = {s.name: s for s in _TABLE}

STATUSES: tuple[Status, ...] = get_args(Status)  # every status, in the order of a record's life
STEPS: tuple[str, ...] = tuple(s.name for s in _TABLE)
STEP_STATUS: dict[str, Status] = {s.name: s.status for s in _TABLE}
WAITING_STEPS = frozenset(s.name for s in _TABLE if s.waits)
FIRST_TASK = _TABLE[0].task  # what a new record's request enqueues

# Statuses by what they promise:
PROVISIONING: frozenset[Status] = frozenset({"requested", *STEP_STATUS.values()})
ACTIVE: frozenset[Status] = PROVISIONING | {"ready"}  # the lesson is wanted: expiry, keepalive, deletion apply
TERMINAL: frozenset[Status] = frozenset({"failed", "deleted"})  # never changes again
UNFINISHED: frozenset[Status] = frozenset(STATUSES) - TERMINAL
SETTLED: frozenset[Status] = TERMINAL | {"ready"}  # stays until someone acts: what a waiter waits for
# a worker is expected to be making progress: its lease runs, and GC re-drives the record when it stops
LEASED: frozenset[Status] = PROVISIONING | {"deleting"}
# the backend's objects are going or gone: whatever a step made after this must go too
RELEASING: frozenset[Status] = TERMINAL | {"deleting"}


def entered_from(step: str) -> frozenset[Status]:
    """The statuses ``step`` may begin in: its own (a retry), and ``requested`` for the first step."""
    status = _BY_NAME[step].status
    return frozenset({status, "requested"}) if step == _TABLE[0].name else frozenset({status})


def status_after(step: str) -> Status:
    """The status a record moves to once ``step`` is done: the next step's, or ``ready`` after the last."""
    i = STEPS.index(step)
    return _TABLE[i + 1].status if i + 1 < len(_TABLE) else "ready"


def next_task(step: str) -> str | None:
    """The task that follows ``step`` once it is done (None after the last: the lesson is ready)."""
    i = STEPS.index(step)
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
    return _BY_NAME[step].task if step else None
