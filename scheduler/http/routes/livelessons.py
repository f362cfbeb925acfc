"""``/v1/livelessons``: request, read (with the long-poll), keep alive and delete a live lesson."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints

from scheduler.core.checks import is_id
from scheduler.core.errors import NotFound, shorten
from scheduler.core.records import LiveLesson
from scheduler.core.steps import STATUSES, TERMINAL
from scheduler.http.dependencies import CatalogDep, HubDep, SettingsDep, StoreDep
from scheduler.http.schemas import ERRORS, ErrorBody, InvalidBody, Keepalive, LessonRequest
from scheduler.services.lifecycle import delete_lesson, request_lesson

__all__ = ["MAX_WAITERS", "MAX_WAIT_SECONDS", "WAIT_FOR_PATTERN", "router"]

log = structlog.get_logger(__name__)

# The long-poll (GET /v1/livelessons/{id}?wait_for=...): at most this long per request, and at most this many
# waiting at once in one API process (past it: 503 with Retry-After). A waiter is a coroutine on the event
# loop and an entry in a dict, not a thread nor a Redis connection, so the bound is about memory and fairness,
# not the threadpool's 40 threads.
MAX_WAIT_SECONDS = 60
MAX_WAITERS = 2000

_STATUS = "(?:" + "|".join(STATUSES) + ")"
WAIT_FOR_PATTERN = f"^{_STATUS}(?:,{_STATUS})*$"

router = APIRouter()


def _checked(livelesson: str) -> str:
    """A path id that is not an id names no live lesson: 404, like one that is gone."""
    if not is_id(livelesson):
        raise NotFound(f"live lesson {shorten(livelesson)} does not exist")
    return livelesson


@router.post(
    "/livelessons",
    status_code=202,
    response_model=LiveLesson,
    responses={**ERRORS, 200: {"model": LiveLesson}, 400: {"model": ErrorBody}, 413: {"model": ErrorBody},
               422: {"model": InvalidBody}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)  # fmt: skip
def create(
    body: LessonRequest, response: Response, settings: SettingsDep, store: StoreDep, catalog: CatalogDep
) -> LiveLesson:
    created = request_lesson(settings, store, catalog, body.lesson, body.session)
    if not created.new:
        response.status_code = 200
    structlog.contextvars.bind_contextvars(
        livelesson=created.record.id, lesson=body.lesson, session=body.session, step="request"
    )
    log.info("live lesson requested" if created.new else "live lesson already active")
    structlog.contextvars.clear_contextvars()
    return created.record


@router.get(
    "/livelessons/{livelesson}",
    response_model=LiveLesson,
    responses={**ERRORS, 422: {"model": InvalidBody}, 503: {"model": ErrorBody}},
    description="The live lesson's record. With `wait_for`, a long-poll: the answer comes as soon as the "
    "status is one of `wait_for` or terminal (`failed`, `deleted`: it will never change again), or after "
    f"`timeout` seconds (0-{MAX_WAIT_SECONDS}, default 30) with the record as it is then; 200 either way, "
    "so compare the status. Without `wait_for` it answers at once and `timeout` is ignored. A status change "
    "is pushed to the API through Redis pub/sub: the answer follows it within milliseconds, no polling.",
)
async def read(
    livelesson: str,
    store: StoreDep,
    hub: HubDep,
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
    livelesson = _checked(livelesson)

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


@router.post("/livelessons/{livelesson}/keepalive", response_model=Keepalive, responses=ERRORS)
def keepalive(livelesson: str, store: StoreDep) -> Keepalive:
    record = store.keepalive(_checked(livelesson))
    return Keepalive(id=record.id, expires_at=record.expires_at.isoformat())


@router.delete("/livelessons/{livelesson}", status_code=202, response_model=LiveLesson, responses=ERRORS)
def delete(livelesson: str, settings: SettingsDep, store: StoreDep) -> LiveLesson:
    return delete_lesson(settings, store, _checked(livelesson))
