"""The API's request and response bodies (the record itself is ``scheduler.core.records.LiveLesson``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from scheduler.core.checks import SESSION_PATTERN

__all__ = ["ERRORS", "ErrorBody", "InvalidBody", "Keepalive", "LessonRequest", "LessonSummary"]


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


# what every /v1 route of a live lesson may answer besides its own: no token, no such live lesson
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
