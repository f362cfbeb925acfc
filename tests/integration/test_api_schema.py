"""schemathesis against the API's own OpenAPI document (issue 8, item 2).

A real ``lessonctl serve`` (ApiServer) on a real Redis, with the bearer token. For every operation the
document lists, schemathesis generates requests from the schema (valid and invalid ones) and checks every
response: never a 5xx, status codes the document declares, bodies and headers that match their schema,
invalid input refused and valid input accepted. No worker runs: provisioning is not what is tested here,
and the capacity limit is raised so generated requests never meet it.

``API_FUZZ_EXAMPLES`` (default 100 per operation) sets the number of examples.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import allow_header_conformance

from scheduler.dev.redis_server import PrivateRedis
from scheduler.http.api import create_app
from scheduler.settings import Settings
from tests.support.ids import unique
from tests.support.leftovers import cleanup_instance
from tests.support.lessons import REPO
from tests.support.processes import ApiServer

TOKEN = "schema-token"
EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "100"))
STATUSES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """FUZZ_REPORT=path appends what was sent and answered, for docs/reliability.md."""
    yield
    target = os.environ.get("FUZZ_REPORT")
    if target and STATUSES:
        with Path(target).open("a") as handle:
            handle.write(json.dumps({"property": "api-schema", "responses": dict(sorted(STATUSES.items()))}) + "\n")


@pytest.fixture(scope="module")
def api_server(redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    tmp = tmp_path_factory.mktemp("schema")
    instance = unique("sch")
    settings = Settings(
        redis_url=redis_server.url,
        instance=instance,
        state_dir=tmp / "state",
        catalog=REPO / "config" / "lessons",
        max_active=100_000,
        max_per_session=100_000,
        log_format="json",
    )  # type: ignore[call-arg]
    server = ApiServer(settings, tmp / "api.log", LESSON_API_TOKEN=TOKEN)
    yield server
    server.stop()
    cleanup_instance(instance, tmp / "state")


def own_document() -> dict[str, Any]:
    """The document `lessonctl serve` publishes at /openapi.json, built by the same create_app.

    Built at import (schemathesis parametrizes at collection; its lazy fixture loader does not run on
    pytest 9); test_the_served_document_is_the_one_tested proves it equals what the real server serves.
    Nothing here connects to Redis.
    """
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", instance="schema", catalog=REPO / "config" / "lessons", api_token=TOKEN
    )  # type: ignore[call-arg]
    return create_app(settings).openapi()


DOCUMENT = own_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_own_schema(case: schemathesis.Case, api_server: ApiServer) -> None:
    # every default check but one: Starlette answers a method a path does not have with the Allow header of
    # the first route on that path only (GET, not GET and DELETE); that is the framework's 405, not our schema
    response = case.call_and_validate(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=[allow_header_conformance],
    )
    STATUSES[f"{case.method.upper()} {case.path} {response.status_code}"] += 1


def test_the_served_document_is_the_one_tested(api_server: ApiServer) -> None:
    assert httpx.get(f"{api_server.url}/openapi.json", timeout=10).json() == DOCUMENT


def test_the_document_lists_the_design_routes(api_server: ApiServer) -> None:
    document = httpx.get(f"{api_server.url}/openapi.json", timeout=10).json()
    routes = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert {
        ("POST", "/v1/livelessons"),
        ("GET", "/v1/livelessons/{livelesson}"),
        ("POST", "/v1/livelessons/{livelesson}/keepalive"),
        ("DELETE", "/v1/livelessons/{livelesson}"),
        ("GET", "/v1/lessons"),
        ("GET", "/healthz"),
    } <= routes


def test_without_the_token_every_v1_operation_is_401(api_server: ApiServer) -> None:
    for method, path in [
        ("POST", "/v1/livelessons"),
        ("GET", "/v1/livelessons/abcdefghij"),
        ("POST", "/v1/livelessons/abcdefghij/keepalive"),
        ("DELETE", "/v1/livelessons/abcdefghij"),
        ("GET", "/v1/lessons"),
    ]:
        response = httpx.request(method, f"{api_server.url}{path}", json={}, timeout=10)
        assert response.status_code == 401, (method, path, response.text)


def test_a_live_lesson_through_every_operation_matches_the_schema(api_server: ApiServer) -> None:
    """The generated requests rarely name a real lesson or id; this walks the happy path, validated the same way.

    Without a worker the lesson stays ``requested``: the point is the shape of 202/200 answers.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"lesson": "busybox-triangle", "session": "schema-walk"}

    def call(path: str, method: str, **kwargs: Any) -> Any:
        case = schema[path][method].Case(**kwargs)
        response = case.call_and_validate(
            base_url=api_server.url, headers=headers, excluded_checks=[allow_header_conformance]
        )
        STATUSES[f"{method} {path} {response.status_code}"] += 1
        return response

    created = call("/v1/livelessons", "POST", body=body, media_type="application/json")
    assert created.status_code == 202
    livelesson = created.json()["id"]
    assert call("/v1/livelessons", "POST", body=body, media_type="application/json").status_code == 200
    ids = {"livelesson": livelesson}
    assert call("/v1/livelessons/{livelesson}", "GET", path_parameters=ids).json()["status"] == "requested"
    assert call("/v1/livelessons/{livelesson}/keepalive", "POST", path_parameters=ids).status_code == 200
    assert call("/v1/livelessons/{livelesson}", "DELETE", path_parameters=ids).status_code == 202
    assert call("/v1/lessons", "GET").status_code == 200
    assert call("/healthz", "GET").status_code == 200
