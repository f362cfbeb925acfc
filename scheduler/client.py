"""The Python client for other services. It needs Redis only: no worker, backend or catalog code.

from scheduler import client
record = client.request_lesson("busybox-triangle", "session-42")
record = client.wait(record.id, timeout=60)
"""

from __future__ import annotations

import time
from functools import lru_cache

from celery.exceptions import TimeoutError as CeleryTimeout

from scheduler.errors import InvalidRequest, LimitExceeded, NotFound, SchedulerError, TemporaryError
from scheduler.queue import sender
from scheduler.records import LiveLesson
from scheduler.service import delete_lesson
from scheduler.settings import Settings, get_settings
from scheduler.state import Store

__all__ = ["Client", "delete", "get", "keepalive", "request_lesson", "wait"]

SETTLED = frozenset({"ready", "failed", "deleted"})
_ERRORS: dict[str, type[SchedulerError]] = {
    "NotFound": NotFound,
    "LimitExceeded": LimitExceeded,
    "InvalidRequest": InvalidRequest,
}


class Client:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.store = Store.from_settings(self.settings)

    def request_lesson(self, lesson: str, session: str, *, timeout: float = 30.0) -> LiveLesson:
        """Create (or return the active) live lesson of (lesson, session), through ``lessons.request``."""
        result = sender(self.settings).send_task("lessons.request", args=[lesson, session])
        try:
            answer = result.get(timeout=timeout)
        except CeleryTimeout as exc:
            raise TemporaryError(f"no worker answered lessons.request within {timeout}s") from exc
        finally:
            result.forget()
        if not answer["ok"]:
            error = answer["error"]
            raise _ERRORS.get(error["kind"], SchedulerError)(error["message"])
        return LiveLesson.model_validate(answer["record"])

    def get(self, livelesson: str) -> LiveLesson:
        return self.store.require(livelesson)

    def keepalive(self, livelesson: str) -> LiveLesson:
        return self.store.keepalive(livelesson)

    def delete(self, livelesson: str) -> LiveLesson:
        return delete_lesson(self.settings, self.store, livelesson)

    def wait(self, livelesson: str, timeout: float, *, until: frozenset[str] = SETTLED) -> LiveLesson:
        """Poll until the status is one of ``until`` (default: ready, failed or deleted) or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(livelesson)
            if record.status in until or time.monotonic() >= deadline:
                return record
            time.sleep(0.05)


@lru_cache(maxsize=1)
def _default() -> Client:
    return Client()


def request_lesson(lesson: str, session: str) -> LiveLesson:
    return _default().request_lesson(lesson, session)


def get(livelesson: str) -> LiveLesson:
    return _default().get(livelesson)


def keepalive(livelesson: str) -> LiveLesson:
    return _default().keepalive(livelesson)


def delete(livelesson: str) -> LiveLesson:
    return _default().delete(livelesson)


def wait(livelesson: str, timeout: float) -> LiveLesson:
    return _default().wait(livelesson, timeout)
