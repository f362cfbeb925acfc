"""The Python client for other services. It needs Redis only: no worker, backend or catalog code.

from scheduler import client
record = client.request_lesson("busybox-triangle", "session-42")
record = client.wait(record.id, timeout=60)
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import redis
import structlog
from celery.exceptions import TimeoutError as CeleryTimeout

from scheduler.core.checks import check_id
from scheduler.core.errors import InvalidRequest, LimitExceeded, NotFound, SchedulerError, TemporaryError
from scheduler.core.records import LiveLesson
from scheduler.core.steps import SETTLED
from scheduler.core.task_names import REQUEST_TASK
from scheduler.services.lifecycle import delete_lesson
from scheduler.services.queue import sender
from scheduler.services.state import RECHECK_SECONDS, UNAVAILABLE, Store, parse_status_message
from scheduler.settings import Settings, get_settings

__all__ = ["RECHECK_SECONDS", "SETTLED", "Client", "delete", "get", "keepalive", "request_lesson", "wait"]

log = structlog.get_logger(__name__)

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
        result = sender(self.settings).send_task(REQUEST_TASK, args=[lesson, session])
        try:
            answer = result.get(timeout=timeout)
        except CeleryTimeout as exc:
            raise TemporaryError(f"no worker answered {REQUEST_TASK} within {timeout}s") from exc
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

    def wait(
        self,
        livelesson: str,
        timeout: float,
        *,
        until: frozenset[str] = SETTLED,
        recheck: float = RECHECK_SECONDS,
    ) -> LiveLesson:
        """The record once its status is one of ``until`` (default: ready, failed or deleted), or the current
        record when ``timeout`` seconds have passed. NotFound if there is no such live lesson.

        No polling: it subscribes to the instance's status channel (``Store.channel``) first, waits for the
        subscription to be confirmed, and only then reads the record, so a change made between the read and
        the subscription cannot be missed. Then it blocks on the subscription and re-reads the record when a
        message names it, or every ``recheck`` seconds in case a message was lost to a reconnect.
        """
        check_id(livelesson)
        deadline = time.monotonic() + timeout
        pubsub = self.store.r.pubsub()
        try:
            subscribed = self._subscribe(pubsub, self.store.channel, deadline)
            record = self.get(livelesson)
            reread = time.monotonic() + recheck
            while record.status not in until:
                now = time.monotonic()
                if now >= deadline:
                    return record
                fresh = False
                if subscribed:
                    try:
                        message = pubsub.get_message(timeout=max(0.0, min(deadline, reread) - now))
                    except UNAVAILABLE as exc:
                        # redis-py reconnects and re-subscribes on the next call; re-read now for what was missed
                        log.warning("status subscription lost; re-reading", livelesson=livelesson, error=str(exc))
                        subscribed, fresh = False, True
                    else:
                        fresh = _names(message, livelesson)
                else:  # no subscription (Redis was unreachable): wait for the re-read, then try again
                    time.sleep(max(0.0, min(deadline, reread, now + 1.0) - now))
                    subscribed = self._subscribe(pubsub, self.store.channel, time.monotonic() + 1.0)
                    fresh = True
                if fresh or time.monotonic() >= reread:
                    record = self._reread(livelesson, record)
                    reread = time.monotonic() + recheck
            return record
        finally:
            pubsub.close()

    @staticmethod
    def _subscribe(pubsub: redis.client.PubSub, channel: str, deadline: float) -> bool:
        """SUBSCRIBE and wait for the server's confirmation (until then a PUBLISH may not reach us). False if
        Redis cannot be reached before ``deadline``."""
        try:
            if not pubsub.subscribed:
                pubsub.subscribe(channel)
            while True:
                left = deadline - time.monotonic()
                message = pubsub.get_message(timeout=max(0.0, min(left, 1.0)))
                if message is not None and message["type"] == "subscribe":
                    return True
                if left <= 0:
                    return False
        except UNAVAILABLE:
            return False

    def _reread(self, livelesson: str, last: LiveLesson) -> LiveLesson:
        try:
            return self.get(livelesson)
        except TemporaryError:
            return last  # Redis is down for a moment: keep waiting with what we know; the deadline still holds


def _names(message: dict[str, Any] | None, livelesson: str) -> bool:
    """Whether a pub/sub message is a status change of ``livelesson`` (subscribe confirmations are not)."""
    if message is None or message.get("type") != "message":
        return False
    parsed = parse_status_message(message.get("data"))
    return parsed is not None and parsed[0] == livelesson


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
