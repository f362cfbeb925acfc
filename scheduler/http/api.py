"""The HTTP API: ``create_app`` builds the app from its parts (routers, body limit, error answers). It
enqueues by task name and never imports worker code."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry

from scheduler.core.errors import SchedulerError
from scheduler.http import pages
from scheduler.http.auth import require_token
from scheduler.http.body_limit import MAX_BODY_BYTES, BodyLimit
from scheduler.http.errors import answer_error
from scheduler.http.routes import health, lessons, livelessons, metrics
from scheduler.http.routes.livelessons import MAX_WAIT_SECONDS, MAX_WAITERS
from scheduler.http.status_hub import StatusHub
from scheduler.services.catalog import Catalog, configured_catalog
from scheduler.services.metrics import RedisCollector
from scheduler.services.state import RECHECK_SECONDS, Store
from scheduler.settings import Settings, get_settings

__all__ = ["MAX_BODY_BYTES", "MAX_WAITERS", "MAX_WAIT_SECONDS", "RECHECK_SECONDS", "StatusHub", "create_app"]


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> FastAPI:
    """The API with the status page; what the routes use is made here once and kept on ``app.state``."""
    settings = settings or get_settings()
    catalog = catalog or configured_catalog(settings)
    store = Store.from_settings(settings)
    hub = StatusHub(settings, store.channel)
    registry = CollectorRegistry()
    registry.register(RedisCollector(store.r, settings.instance, store.status_counts))

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
    app.state.registry = registry
    app.add_middleware(BodyLimit)
    app.add_exception_handler(SchedulerError, answer_error)  # type: ignore[arg-type]

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
    v1.include_router(livelessons.router)
    v1.include_router(lessons.router)
    app.include_router(v1)
    app.include_router(metrics.router)
    app.include_router(health.router)
    app.include_router(pages.router)
    return app
