"""One plan per live lesson (scheduler.core.plan_inputs.plan_for): the status page draws the plan the
pipeline executes, whatever the deployment's settings and the record's placement."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from scheduler.core.drawing import Topology, topologies
from scheduler.core.plan import Plan, make_plan
from scheduler.core.plan_inputs import Draft, PlanOptions, plan_for
from scheduler.core.records import LiveLesson
from scheduler.http.api import create_app
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.fake_backend import FakeBackend
from tests.support.lessons import CATALOG, triangle
from workers.pipeline import Pipeline

# every setting a plan depends on, away from its default
NON_DEFAULT = PlanOptions(
    subnet_pool="172.20.0.0/16", main_pool="10.251.0.0/16", image_substitute="busybox:1.36", check_names=False
)
PLACEMENT = {"bb1": "node-a", "bb2": "node-a", "bb3": "node-b"}


def test_plan_for_passes_every_input() -> None:
    draft = Draft("abcde12345", "alice", "lessons", PLACEMENT)
    assert plan_for(draft, triangle(), NON_DEFAULT, deployment="d3ploy01") == make_plan(
        triangle(),
        "abcde12345",
        "alice",
        instance="lessons",
        subnet_pool="172.20.0.0/16",
        deployment="d3ploy01",
        image_substitute="busybox:1.36",
        main_pool="10.251.0.0/16",
        names=False,
        placement=PLACEMENT,
    )


def test_the_status_page_draws_the_plan_the_pipeline_executes(
    settings_for: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(**dataclasses.asdict(NON_DEFAULT))
    catalog = load_catalog(CATALOG)
    store = Store.from_settings(settings)
    created = store.create("busybox-triangle", "alice", backend="local").record

    def place(record: LiveLesson) -> LiveLesson:
        record.placement = dict(PLACEMENT)
        return record

    record = store.update(created.id, place)
    assert record is not None
    backend = FakeBackend(instance=settings.instance, deployment=store.deployment())
    executed = Pipeline(settings, store, backend, catalog).plan(record)
    assert executed.placed and executed.image_substitute == "busybox:1.36" and executed.deployment

    drawn: list[Plan] = []
    live_topology = topologies.live_topology

    def spy(plan: Plan, record: LiveLesson, title: str | None = None) -> Topology:
        drawn.append(plan)
        return live_topology(plan, record, title)

    monkeypatch.setattr(topologies, "live_topology", spy)
    with TestClient(create_app(settings, catalog)) as client:
        page = client.get(f"/livelessons/{record.id}")
    assert page.status_code == 200, page.text
    assert drawn == [executed]
