"""The long-poll's push: one subscription to the instance's status channel per API process, shared by
every waiter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from scheduler.core.records import LiveLesson
from scheduler.services.redis_endpoint import connect_async
from scheduler.services.state import RECHECK_SECONDS, UNAVAILABLE, parse_status_message
from scheduler.settings import Settings

__all__ = ["StatusHub"]

log = structlog.get_logger(__name__)


class StatusHub:
    """One subscription to the instance's status channel per API process, shared by every long-poll waiter.

    Why async and shared: a sync route that blocked for its wait would hold one of the threadpool's 40
    threads for up to a minute, so 40 waiting clients would stall every other sync route of the API. Here a
    waiter is an ``asyncio.Event`` keyed by its live-lesson id; one background task reads the channel
    (redis.asyncio) and sets the events of the ids it names. Reads of the record stay on the threadpool,
    each a few milliseconds.

    Lost messages: when the subscription drops (Redis restarted, a failover) every waiter is woken to
    re-read, and so it is again once it is back; and each waiter re-reads every ``RECHECK_SECONDS`` anyway.
    """

    def __init__(self, settings: Settings, channel: str) -> None:
        self.settings = settings
        self.channel = channel
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._waiters: dict[str, set[asyncio.Event]] = {}

    @property
    def waiting(self) -> int:
        return sum(len(events) for events in self._waiters.values())

    def _ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (a test client's): start over in it
            self._loop, self._task, self._waiters = loop, None, {}
            self._subscribed = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="status-hub")

    def _wake(self, livelesson: str | None = None) -> None:
        events = self._waiters.get(livelesson, set()) if livelesson else set().union(*self._waiters.values())
        for event in events:
            event.set()

    async def _run(self) -> None:
        while True:
            try:
                async with (
                    connect_async(self.settings) as client,
                    client.pubsub() as pubsub,
                ):
                    await pubsub.subscribe(self.channel)
                    while True:
                        message = await pubsub.get_message(timeout=RECHECK_SECONDS)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            self._subscribed.set()
                            self._wake()  # (re)subscribed: whatever changed while we were not is read now
                        elif message["type"] == "message":
                            parsed = parse_status_message(message["data"])
                            if parsed is not None:
                                self._wake(parsed[0])
            except (*UNAVAILABLE, OSError) as exc:
                log.warning("status subscription lost; reconnecting", error=str(exc))
            finally:
                self._subscribed.clear()
                self._wake()
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def wait(
        self,
        livelesson: str,
        read: Callable[[], Awaitable[LiveLesson | None]],
        done: Callable[[LiveLesson], bool],
        timeout: float,
    ) -> LiveLesson | None:
        """The record as soon as ``done(record)``, else the current one after ``timeout`` s; None: no record."""
        self._ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._waiters.setdefault(livelesson, set()).add(event)
        try:
            # subscribed before the first read, so a change between the two is not missed; if Redis is not
            # reachable, read anyway (the read answers 503) and rely on the re-reads
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), max(0.0, min(timeout, 2.0)))
            while True:
                event.clear()  # a message from now on wakes the wait below, even one that lands during the read
                record = await read()
                left = deadline - loop.time()
                if record is None or done(record) or left <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, RECHECK_SECONDS))
        finally:
            events = self._waiters.get(livelesson)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[livelesson]
