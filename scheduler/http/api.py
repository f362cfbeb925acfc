"""The HTTP API (DESIGN.md's routes). It enqueues by task name and never imports worker code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import redis
import redis.asyncio
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.core.errors import (
    AtCapacity,
    InvalidRequest,
    LessonError,
    LimitExceeded,
    NotFound,
    NotReplicated,
    PrerequisiteMissing,
    SchedulerError,
    TemporaryError,
    shorten,
)
from scheduler.core.records import ID_PATTERN, SESSION_PATTERN, TERMINAL, LiveLesson, Status
from scheduler.http.auth import token_ok
from scheduler.http.pages import add_pages
from scheduler.services.catalog import Catalog, configured_catalog
from scheduler.services.lifecycle import delete_lesson, request_lesson
from scheduler.services.metrics import RedisCollector
from scheduler.services.redis_endpoint import connect_async
from scheduler.services.state import UNAVAILABLE, Store, parse_status_message
from scheduler.settings import Settings, get_settings

__all__ = ["MAX_BODY_BYTES", "MAX_WAITERS", "MAX_WAIT_SECONDS", "StatusHub", "create_app"]

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a request is two short strings; anything larger is not one

# The long-poll (GET /v1/livelessons/{id}?wait_for=...): at most this long per request, and at most this many
# waiting at once in one API process (past it: 503 with Retry-After). A waiter is a coroutine on the event
# loop and an entry in a dict, not a thread nor a Redis connection, so the bound is about memory and fairness,
# not the threadpool's 40 threads.
MAX_WAIT_SECONDS = 60
MAX_WAITERS = 2000
# A waiter re-reads its record this often even without a message: the safety net for a message lost while
# the subscription was reconnecting. Changes themselves arrive by push.
RECHECK_SECONDS = 5.0

_STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
_STATUS = "(?:" + "|".join(_STATUSES) + ")"
WAIT_FOR_PATTERN = f"^{_STATUS}(?:,{_STATUS})*$"


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


class _CountedBody:
    """Counts a body as it arrives, so one sent without Content-Length (chunked) is held to the limit too.

    Past the limit the app is told the client left (so it stops reading) and whatever it answers is
    replaced by the 413.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen, over, refused = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def refuse() -> None:
            nonlocal refused
            if not refused:
                refused = True
                response = JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
                await response(scope, receive, send)

        async def guarded(message: Message) -> None:
            if over:
                await refuse()
            else:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over:
            await refuse()


class LessonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lesson: str = Field(min_length=1, max_length=63, description="The lesson's slug")
    session: str = Field(
        min_length=1, max_length=63, pattern=SESSION_PATTERN.pattern, description="The learner's session id"
    )


class Keepalive(BaseModel):
    id: str
    expires_at: str


class LessonSummary(BaseModel):
    slug: str
    name: str
    description: str
    endpoints: list[str]
    connections: int


class ErrorBody(BaseModel):
    detail: str


class InvalidBody(BaseModel):
    # a bad session is refused in words; a body that fails validation gets FastAPI's list of errors
    detail: str | list[dict[str, Any]]


# The error tree's HTTP status codes, most specific first: the one place a code is chosen.
STATUS_FOR: tuple[tuple[type[SchedulerError], int], ...] = (
    (NotFound, 404),
    (InvalidRequest, 422),
    (LessonError, 422),
    (AtCapacity, 503),
    (LimitExceeded, 429),
    (TemporaryError, 503),
    (PrerequisiteMissing, 503),
)


def status_for(exc: SchedulerError) -> int:
    return next((code for kind, code in STATUS_FOR if isinstance(exc, kind)), 500)


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = catalog or configured_catalog(settings)
    store = Store.from_settings(settings)
    hub = StatusHub(settings, store.channel)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close()

    app = FastAPI(
        title="lesson-scheduler",
        version="0.1.0",
        description="Schedules hands-on networking lessons.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.catalog, app.state.store, app.state.hub = settings, catalog, store, hub

    def authorize(request: Request) -> None:
        if not token_ok(request, settings.api_token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    errors: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}

    def livelesson_id(livelesson: str) -> str:
        if not ID_PATTERN.fullmatch(livelesson):
            raise NotFound(f"live lesson {shorten(livelesson)} does not exist")
        return livelesson

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    app.add_middleware(_CountedBody)

    @app.exception_handler(SchedulerError)
    async def refused(_: Request, exc: SchedulerError) -> JSONResponse:
        """The one mapping from the error tree to HTTP: a route raises, this answers."""
        status = status_for(exc)
        if isinstance(exc, TemporaryError):
            log.warning("service unavailable", error=str(exc))
            # the details (addresses, replica counts) go to the log; the client learns what to do
            detail = (
                "the scheduler's store could not confirm the write on a replica yet; retry shortly"
                if isinstance(exc, NotReplicated)
                else "the scheduler's store is unavailable; retry shortly"
            )
            return JSONResponse({"detail": detail}, 503, headers={"Retry-After": "5"})
        if status >= 500 and not isinstance(exc, LimitExceeded):
            log.error("request failed", error=str(exc), kind=type(exc).__name__)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LimitExceeded) else None
        return JSONResponse({"detail": str(exc)}, status, headers=headers)

    @v1.post(
        "/livelessons",
        status_code=202,
        response_model=LiveLesson,
        responses={**errors, 200: {"model": LiveLesson}, 400: {"model": ErrorBody}, 413: {"model": ErrorBody},
                   422: {"model": InvalidBody}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )  # fmt: skip
    def create(body: LessonRequest, response: Response) -> LiveLesson:
        created = request_lesson(settings, store, catalog, body.lesson, body.session)
        if not created.new:
            response.status_code = 200
        structlog.contextvars.bind_contextvars(
            livelesson=created.record.id, lesson=body.lesson, session=body.session, step="request"
        )
        log.info("live lesson requested" if created.new else "live lesson already active")
        structlog.contextvars.clear_contextvars()
        return created.record

    @v1.get(
        "/livelessons/{livelesson}",
        response_model=LiveLesson,
        responses={**errors, 422: {"model": InvalidBody}, 503: {"model": ErrorBody}},
        description="The live lesson's record. With `wait_for`, a long-poll: the answer comes as soon as the "
        "status is one of `wait_for` or terminal (`failed`, `deleted`: it will never change again), or after "
        f"`timeout` seconds (0-{MAX_WAIT_SECONDS}, default 30) with the record as it is then; 200 either way, "
        "so compare the status. Without `wait_for` it answers at once and `timeout` is ignored. A status change "
        "is pushed to the API through Redis pub/sub: the answer follows it within milliseconds, no polling.",
    )
    async def read(
        livelesson: str,
        wait_for: Annotated[
            list[Annotated[str, StringConstraints(pattern=WAIT_FOR_PATTERN)]] | None,
            Query(
                description="Statuses to wait for: comma-separated or the parameter repeated "
                "(`wait_for=ready` or `wait_for=ready,failed`).",
            ),
        ] = None,
        timeout: Annotated[
            float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait at most, with `wait_for`.")
        ] = 30.0,
    ) -> LiveLesson:
        livelesson = livelesson_id(livelesson)

        async def get() -> LiveLesson | None:
            record: LiveLesson | None = await run_in_threadpool(store.get, livelesson)
            return record

        if not wait_for:
            record = await get()
        else:
            wanted = {status for value in wait_for for status in value.split(",")}
            if hub.waiting >= MAX_WAITERS:
                raise HTTPException(503, "too many clients waiting; retry shortly", headers={"Retry-After": "5"})
            record = await hub.wait(livelesson, get, lambda r: r.status in wanted or r.status in TERMINAL, timeout)
        if record is None:
            raise NotFound(f"live lesson {livelesson!r} does not exist")
        return record

    @v1.post("/livelessons/{livelesson}/keepalive", response_model=Keepalive, responses=errors)
    def keepalive(livelesson: str) -> Keepalive:
        record = store.keepalive(livelesson_id(livelesson))
        return Keepalive(id=record.id, expires_at=record.expires_at.isoformat())

    @v1.delete("/livelessons/{livelesson}", status_code=202, response_model=LiveLesson, responses=errors)
    def delete(livelesson: str) -> LiveLesson:
        return delete_lesson(settings, store, livelesson_id(livelesson))

    @v1.get("/lessons", response_model=list[LessonSummary], responses={401: {"model": ErrorBody}})
    def lessons() -> list[LessonSummary]:
        return [
            LessonSummary(
                slug=lesson.slug,
                name=lesson.lesson.name,
                description=lesson.lesson.short_description or lesson.lesson.description,
                endpoints=[e.name for e in lesson.endpoints],
                connections=len(lesson.connections),
            )
            for lesson in catalog
        ]

    app.include_router(v1)

    registry = CollectorRegistry()
    registry.register(RedisCollector(store.r, settings.instance, store.status_counts))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        try:
            body = generate_latest(registry)
        except redis.RedisError:
            return JSONResponse({"detail": "the scheduler's store is unavailable"}, 503, headers={"Retry-After": "5"})
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            store.ping()
        except TemporaryError:
            return JSONResponse({"status": "unavailable", "redis": False}, 503)
        return JSONResponse({"status": "ok", "redis": True})

    add_pages(app, store, catalog, settings)
    return app
