"""What a route is given: the app's settings, store, catalog, status hub and metrics registry, made once by
``create_app`` (kept on ``app.state``) and injected as FastAPI dependencies, so no route is a closure."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from scheduler.http.status_hub import StatusHub
from scheduler.services.catalog import Catalog
from scheduler.services.state import Store
from scheduler.settings import Settings

__all__ = ["CatalogDep", "HubDep", "RegistryDep", "SettingsDep", "StoreDep"]


def _from_state(name: str) -> Any:
    """A dependency that gives ``app.state.<name>`` (async: no threadpool hop for an attribute read)."""

    async def given(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(given)


SettingsDep = Annotated[Settings, _from_state("settings")]
StoreDep = Annotated[Store, _from_state("store")]
CatalogDep = Annotated[Catalog, _from_state("catalog")]
HubDep = Annotated[StatusHub, _from_state("hub")]
RegistryDep = Annotated[CollectorRegistry, _from_state("registry")]
