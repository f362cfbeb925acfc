"""``/metrics``: Prometheus's text format, read from the counters and gauges kept in Redis (no token)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler.http.dependencies import RegistryDep

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(registry: RegistryDep) -> Response:
    try:
        body = generate_latest(registry)
    except redis.RedisError:
        return JSONResponse({"detail": "the scheduler's store is unavailable"}, 503, headers={"Retry-After": "5"})
    return Response(body, media_type=CONTENT_TYPE_LATEST)
