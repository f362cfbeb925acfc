"""The NRE Labs curriculum (tests/data/antidote-curriculum): its lessons, and a walk of each through the
HTTP API, on whichever backend the API's workers run."""

from __future__ import annotations

import time
from typing import Any

import httpx

from scheduler.core.lessons import ResolvedLesson
from scheduler.services.catalog import load_catalog
from tests.support.lessons import CURRICULUM

LESSONS: dict[str, ResolvedLesson] = dict(sorted(load_catalog(CURRICULUM).lessons.items()))


def wait_status(api: httpx.Client, livelesson: str, statuses: set[str], timeout: float) -> dict[str, Any]:
    """GET the live lesson until its status is one of ``statuses`` (a deadline only against hanging)."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.get(f"/v1/livelessons/{livelesson}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        if record["status"] in statuses:
            return record
        assert time.monotonic() < deadline, f"{livelesson} not in {statuses} after {timeout} s: {record}"
        time.sleep(0.05)


def walk_through_api(
    api: httpx.Client, lessons: dict[str, ResolvedLesson], *, backend: str, timeout: float, in_flight: int = 1
) -> list[dict[str, Any]]:
    """Each lesson: POST -> ready (every link pinged both ways, each linked pair by name) -> DELETE; then
    every one deleted. The final records, in the lessons' order. ``in_flight`` lessons are requested at
    once (a batch), the next batch once the last one was ready and its DELETEs accepted; the teardowns
    overlap (a namespace takes seconds to go on a real node)."""
    slugs = list(lessons)
    deleting = []
    for start in range(0, len(slugs), in_flight):
        batch = []
        for i, slug in enumerate(slugs[start : start + in_flight], start):
            created = api.post("/v1/livelessons", json={"lesson": slug, "session": f"curriculum{i}"})
            assert created.status_code == 202, (slug, created.status_code, created.text)
            batch.append((slug, created.json()["id"]))
        for slug, livelesson in batch:
            _assert_ready(wait_status(api, livelesson, {"ready", "failed"}, timeout), lessons[slug], backend)
            deleted = api.delete(f"/v1/livelessons/{livelesson}")
            assert deleted.status_code == 202, (slug, deleted.status_code, deleted.text)
            deleting.append((slug, livelesson))
    finals = []
    for slug, livelesson in deleting:
        final = wait_status(api, livelesson, {"deleted", "failed"}, timeout)
        assert final["status"] == "deleted", (slug, final["error"])
        finals.append(final)
    return finals


def _assert_ready(record: dict[str, Any], lesson: ResolvedLesson, backend: str) -> None:
    slug = lesson.slug
    assert record["status"] == "ready", (slug, record["error"])
    assert record["backend"] == backend and record["lesson"] == slug
    assert sorted(record["endpoints"]) == sorted(e.name for e in lesson.endpoints), slug
    assert all(ep["ready"] for ep in record["endpoints"].values()), (slug, record["endpoints"])
    links = [c for c in record["checks"] if not c["by_name"]]
    assert len(links) == 2 * len(lesson.connections), (slug, record["checks"])
    # and each linked pair, both ways, by name (a pair with parallel links once)
    pairs = {(c.a, c.b) for c in lesson.connections} | {(c.b, c.a) for c in lesson.connections}
    assert {(c["source"], c["target"]) for c in record["checks"] if c["by_name"]} == pairs, (slug, record["checks"])
    assert all(c["ok"] for c in record["checks"]), (slug, record["checks"])
