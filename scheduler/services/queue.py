"""The queue as the request side sees it: Celery configuration shared with the workers, and sending by name.

The API and the Python client enqueue by task name, so they import no worker or backend code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from scheduler.services.redis_endpoint import celery_endpoints
from scheduler.settings import Settings

__all__ = ["celery_config", "enqueue_step", "sender"]


def time_limits(settings: Settings) -> tuple[int, int]:
    """(soft, hard): both below the visibility timeout, so an overrunning task is stopped before Redis
    would hand its message to a second worker."""
    visibility = settings.visibility_timeout_seconds
    return min(120, visibility // 2), min(150, (visibility * 3) // 4)


def celery_config(settings: Settings) -> dict[str, Any]:
    url, transport = celery_endpoints(settings)
    transport["visibility_timeout"] = settings.visibility_timeout_seconds
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 3600,
        "task_default_queue": f"{settings.instance}.lessons",
        "timezone": "UTC",
        "enable_utc": True,
    }


@lru_cache(maxsize=4)
def sender(settings: Settings) -> Celery:
    app = Celery("lesson-scheduler-sender")
    app.conf.update(celery_config(settings))
    return app


def enqueue_step(settings: Settings, task: str, livelesson: str, *, countdown: float | None = None) -> None:
    sender(settings).send_task(task, args=[livelesson], countdown=countdown)
