"""The HTTP API (DESIGN.md's routes). It enqueues by task name and never imports worker code."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.catalog import Catalog, load_catalog
from scheduler.errors import InvalidRequest, LimitExceeded, NotFound, TemporaryError
from scheduler.metrics import RedisCollector
from scheduler.pages import add_pages
from scheduler.records import ID_PATTERN, SESSION_PATTERN, LiveLesson
from scheduler.service import delete_lesson, request_lesson
from scheduler.settings import Settings, get_settings
from scheduler.state import Store

__all__ = ["MAX_BODY_BYTES", "create_app"]

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a request is two short strings; anything larger is not one


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


class Problem(BaseModel):
    detail: str


class InvalidBody(BaseModel):
    # a bad session is refused in words; a body that fails validation gets FastAPI's list of errors
    detail: str | list[dict[str, Any]]


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    settings = settings or get_settings()
    catalog = catalog or load_catalog(settings.catalog, image_registry=settings.image_registry)
    store = Store.from_settings(settings)
    app = FastAPI(title="lesson-scheduler", version="0.1.0", description="Schedules hands-on networking lessons.")
    app.state.settings, app.state.catalog, app.state.store = settings, catalog, store

    def authorize(request: Request) -> None:
        if settings.api_token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token if scheme.lower() == "bearer" else request.cookies.get("lesson_token", "")
        # constant time, so the token cannot be guessed a character at a time from response timings
        if not secrets.compare_digest(token.encode(), settings.api_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    errors: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 404: {"model": Problem}}

    def livelesson_id(livelesson: str) -> str:
        if not ID_PATTERN.match(livelesson):
            raise HTTPException(404, f"live lesson {livelesson[:40]!r} does not exist")
        return livelesson

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    app.add_middleware(_CountedBody)

    @app.exception_handler(TemporaryError)
    async def unavailable(_: Request, exc: TemporaryError) -> JSONResponse:
        log.warning("service unavailable", error=str(exc))
        return JSONResponse({"detail": "the scheduler's store is unavailable; retry shortly"}, 503,
                            headers={"Retry-After": "5"})  # fmt: skip

    @v1.post(
        "/livelessons",
        status_code=202,
        response_model=LiveLesson,
        responses={**errors, 200: {"model": LiveLesson}, 400: {"model": Problem}, 413: {"model": Problem},
                   422: {"model": InvalidBody}, 429: {"model": Problem}, 503: {"model": Problem}},
    )  # fmt: skip
    def create(body: LessonRequest, response: Response) -> LiveLesson:
        try:
            created = request_lesson(settings, store, catalog, body.lesson, body.session)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except InvalidRequest as exc:
            raise HTTPException(422, str(exc)) from None
        except LimitExceeded as exc:
            code = 503 if "capacity" in str(exc) else 429
            raise HTTPException(code, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        if not created.new:
            response.status_code = 200
        structlog.contextvars.bind_contextvars(
            livelesson=created.record.id, lesson=body.lesson, session=body.session, step="request"
        )
        log.info("live lesson requested" if created.new else "live lesson already active")
        structlog.contextvars.clear_contextvars()
        return created.record

    @v1.get("/livelessons/{livelesson}", response_model=LiveLesson, responses=errors)
    def read(livelesson: str) -> LiveLesson:
        try:
            return store.require(livelesson_id(livelesson))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @v1.post("/livelessons/{livelesson}/keepalive", response_model=Keepalive, responses=errors)
    def keepalive(livelesson: str) -> Keepalive:
        try:
            record = store.keepalive(livelesson_id(livelesson))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return Keepalive(id=record.id, expires_at=record.expires_at.isoformat())

    @v1.delete("/livelessons/{livelesson}", status_code=202, response_model=LiveLesson, responses=errors)
    def delete(livelesson: str) -> LiveLesson:
        try:
            return delete_lesson(settings, store, livelesson_id(livelesson))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @v1.get("/lessons", response_model=list[LessonSummary], responses={401: {"model": Problem}})
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
