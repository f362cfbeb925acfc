"""The one mapping from the error tree (``scheduler.core.errors``) to HTTP: a route raises, this answers."""

from __future__ import annotations

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse

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
)

__all__ = ["STATUS_FOR", "answer_error", "status_for"]

log = structlog.get_logger(__name__)

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


async def answer_error(_: Request, exc: SchedulerError) -> JSONResponse:
    """The answer to ``exc``: its status code, its message, and when to retry where that helps."""
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
