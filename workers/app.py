"""The Celery app on Redis, configured for long, idempotent orchestration.

``celery -A workers.app worker``, ``celery -A workers.app beat``, ``celery -A workers.app flower``.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from celery import Celery, signals
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer

from scheduler.core.checks import is_id
from scheduler.core.task_names import GC_TASK, REQUEST_TASK
from scheduler.services.logging import configure
from scheduler.services.queue import celery_config, time_limits
from scheduler.settings import get_settings

__all__ = ["LessonsConsumer", "app"]


class LessonsConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, made to survive a lost Redis connection while tasks hold unacknowledged messages.

    Celery 5.7 / kombu 5.7 on Redis, found by bench/soak.py (a Redis restart ended one worker in two with an
    "unrecoverable error"): after the broker connection is lost, the consumer collects the connection, which
    drops the transport's client, yet two things still go through that dead transport and raise
    ``AttributeError`` (``'NoneType' object has no attribute 'hostname'`` / ``'client'``), which kombu does
    not count as a connection error:

    - closing the channel gives unacknowledged messages back (``restore_unacked``);
    - a task that was running (or reserved) finishes later and acknowledges or rejects its message.

    Neither can reach a broker that just went away. Those messages stay in Redis's unacked set and come back
    after the visibility timeout, and GC re-drives the lessons whose lease ran out well before that (every
    step is idempotent). So, on a lost connection only: no give-back, and the old connection's requests
    count as settled.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        transport = getattr(connection, "_transport", None) if connection is not None else None
        for channel in getattr(transport, "channels", None) or ():
            channel.do_restore = False
        held = list(worker_state.reserved_requests)  # cancelling below takes them out of the set
        super().on_connection_error_after_connected(exc)
        for request in held:
            request.acknowledged = True


settings = get_settings()
soft, hard = time_limits(settings)

app = Celery("lesson-scheduler", include=["workers.tasks"])
app.conf.update(
    celery_config(settings),
    # a task is acknowledged after it ran, and a worker killed mid-task hands its message back at once
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=soft,
    task_time_limit=hard,
    # on a lost broker connection, give unacknowledged long tasks back rather than finishing them twice
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry=True,
    worker_consumer="workers.app:LessonsConsumer",
    broker_connection_max_retries=None,
    # events for Flower
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "gc": {"task": GC_TASK, "schedule": float(settings.gc_interval_seconds), "options": {"expires": 60}},
    },
)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Celery's own loggers go through structlog's renderer too, so a worker's log is one format
    configure(settings.log_format, settings.log_level)
    # "Task ... received" is logged by the consumer before any task context exists; the task's own lines
    # (bound in task_prerun) say the same with the live lesson, lesson, session and step
    logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


@signals.task_prerun.connect
def _bind(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    context: dict[str, Any] = {"task_id": task_id, "task": getattr(task, "name", None)}
    if args and task is not None and task.name != REQUEST_TASK:
        # only a well-formed id: a hostile argument must not be echoed into every log line (the task
        # itself logs its refusal, shortened)
        context["livelesson"] = args[0] if is_id(args[0]) else "(invalid)"
    structlog.contextvars.bind_contextvars(**context)


@signals.task_postrun.connect
def _unbind(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()
