"""``/healthz``: whether this API process can reach its store (no token: probes do not carry one)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from scheduler.core.errors import TemporaryError
from scheduler.http.dependencies import StoreDep

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
def healthz(store: StoreDep) -> JSONResponse:
    try:
        store.ping()
    except TemporaryError:
        return JSONResponse({"status": "unavailable", "redis": False}, 503)
    return JSONResponse({"status": "ok", "redis": True})
