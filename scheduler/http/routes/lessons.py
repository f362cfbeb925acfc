"""``/v1/lessons``: the catalog, summarised."""

from __future__ import annotations

from fastapi import APIRouter

from scheduler.http.dependencies import CatalogDep
from scheduler.http.schemas import ErrorBody, LessonSummary

__all__ = ["router"]

router = APIRouter()


@router.get("/lessons", response_model=list[LessonSummary], responses={401: {"model": ErrorBody}})
def lessons(catalog: CatalogDep) -> list[LessonSummary]:
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
