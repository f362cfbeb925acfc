"""Waiting by push (issue 12, item 11): status changes are published, ``Client.wait``, the API's long-poll and
``lessonctl up --wait`` block on them instead of polling.

Real redis-server (with its password), real ``lessonctl serve`` and ``lessonctl up`` processes; no worker:
the tests move records themselves, from another thread, through the store's own transitions.

How "pushed, not polled" is shown without a timing assertion: each wait is given a timeout shorter than
its safety re-read interval (the client's ``recheck``, the API's ``RECHECK_SECONDS``). Nothing re-reads the
record before the timeout, so a wait that returns the new status can only have been woken by the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from scheduler.client import Client
from scheduler.core.errors import NotFound
from scheduler.core.records import Status
from scheduler.http import api as api_module
from scheduler.services.state import Store, parse_status_message
from scheduler.settings import Settings
from tests.support.processes import ApiServer, settings_env


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` from another thread after ``seconds``."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def move(store: Store, livelesson: str, *statuses: Status) -> None:
    """Walk the record through ``statuses`` with the store's own atomic transitions (as the steps do)."""
    for status in statuses:
        record = store.require(livelesson)
        assert store.transition(livelesson, {record.status}, status) is not None


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for()


@pytest.fixture
def store(settings: Settings) -> Store:
    return Store.from_settings(settings)


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(settings, tmp_path / "api.log")
    yield server
    server.stop()


# --- publishing -------------------------------------------------------------------------------------------


def test_every_status_change_is_published_once_with_id_and_status(store: Store) -> None:
    pubsub = store.r.pubsub()
    pubsub.subscribe(store.channel)
    deadline = time.monotonic() + 10
    while (confirmed := pubsub.get_message(timeout=1)) is None or confirmed["type"] != "subscribe":
        assert time.monotonic() < deadline
    record = store.create("busybox-triangle", "pub", backend="local").record
    move(store, record.id, "creating_networks", "scheduling_pods")
    store.keepalive(record.id)  # a write without a status change: nothing published
    move(store, record.id, "failed")
    store.keepalive(record.id)  # refused (not active): nothing published

    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + 10
    while len(seen) < 4 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None:
            parsed = parse_status_message(message["data"])
            assert parsed is not None, message
            seen.append(parsed)
    assert pubsub.get_message(timeout=0.5) is None  # and nothing else
    pubsub.close()
    assert store.channel == f"lessons:{store.instance}:status"
    assert seen == [
        (record.id, "requested"),
        (record.id, "creating_networks"),
        (record.id, "scheduling_pods"),
        (record.id, "failed"),
    ]


def test_a_forged_message_is_only_a_hint(settings: Settings, store: Store) -> None:
    """Anyone with Redis access can publish; a waiter re-reads the record and believes only the record."""
    record = store.create("busybox-triangle", "forged", backend="local").record
    later(0.3, lambda: store.r.publish(store.channel, json.dumps({"id": record.id, "status": "ready"})))
    got = Client(settings).wait(record.id, timeout=1.5, until=frozenset({"ready"}), recheck=60)
    assert got.status == "requested"
    for junk in ("", "not json", "[]", '{"id": "../../etc", "status": "ready"}', '{"id": 5}'):
        assert parse_status_message(junk) is None


# --- Client.wait ------------------------------------------------------------------------------------------


def test_wait_is_woken_by_the_change_not_by_a_re_read(settings: Settings, store: Store) -> None:
    record = store.create("busybox-triangle", "push", backend="local").record
    changer = later(0.5, lambda: move(store, record.id, "creating_networks", "scheduling_pods", "ready"))
    started = time.monotonic()
    # timeout 20 s, safety re-read every 60 s: only the pushed message can end this wait with "ready"
    got = Client(settings).wait(record.id, timeout=20, until=frozenset({"ready"}), recheck=60)
    elapsed = time.monotonic() - started
    changer.join()
    assert got.status == "ready"
    assert elapsed < 15, elapsed  # a guard against hanging, far from the 20 s timeout


def test_wait_returns_the_current_record_at_its_timeout(settings: Settings, store: Store) -> None:
    record = store.create("busybox-triangle", "timeout", backend="local").record
    changer = later(0.3, lambda: move(store, record.id, "creating_networks"))
    started = time.monotonic()
    got = Client(settings).wait(record.id, timeout=1.5, until=frozenset({"ready"}), recheck=60)
    assert time.monotonic() - started >= 1.5
    changer.join()
    assert got.status == "creating_networks"  # the change it was not waiting for was seen, and returned


def test_wait_returns_at_once_when_the_status_is_already_there(settings: Settings, store: Store) -> None:
    record = store.create("busybox-triangle", "already", backend="local").record
    move(store, record.id, "ready")
    assert Client(settings).wait(record.id, timeout=20, recheck=60).status == "ready"
    with pytest.raises(NotFound):
        Client(settings).wait("zzzzzzzzzz", timeout=1)


def test_wait_ignores_other_records_and_the_safety_re_read_still_sees_changes(settings: Settings, store: Store) -> None:
    mine = store.create("busybox-triangle", "mine", backend="local").record
    other = store.create("busybox-triangle", "other", backend="local").record
    later(0.2, lambda: move(store, other.id, "ready"))
    got = Client(settings).wait(mine.id, timeout=1.5, until=frozenset({"ready"}), recheck=60)
    assert got.status == "requested"
    # a change whose message never arrives (here: written behind the store's back) is found by the re-read
    raw = json.loads(store.r.get(store.key(mine.id)) or "{}")
    later(0.2, lambda: store.r.set(store.key(mine.id), json.dumps({**raw, "status": "ready"})))
    got = Client(settings).wait(mine.id, timeout=20, until=frozenset({"ready"}), recheck=1)
    assert got.status == "ready"


# --- the HTTP long-poll -----------------------------------------------------------------------------------


def long_poll(api: ApiServer, livelesson: str, query: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(f"{api.url}/v1/livelessons/{livelesson}?{query}", timeout=90)
    return response, time.monotonic() - started


def test_long_poll_answers_when_the_status_changes(api: ApiServer, store: Store) -> None:
    assert api_module.RECHECK_SECONDS >= 5
    record = store.create("busybox-triangle", "lp", backend="local").record
    changer = later(0.5, lambda: move(store, record.id, "creating_networks", "ready"))
    # timeout 4 s < the API's 5 s safety re-read: "ready" can only come from the pushed change
    response, _ = long_poll(api, record.id, "wait_for=ready&timeout=4")
    changer.join()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready" and response.json()["id"] == record.id


def test_long_poll_takes_several_statuses_comma_separated_or_repeated(api: ApiServer, store: Store) -> None:
    for query in ("wait_for=booting,ready&timeout=4", "wait_for=booting&wait_for=ready&timeout=4"):
        record = store.create("busybox-triangle", f"lp{len(query)}", backend="local").record
        changer = later(0.3, partial(move, store, record.id, "creating_networks", "scheduling_pods", "booting"))
        response, _ = long_poll(api, record.id, query)
        changer.join()
        assert response.status_code == 200 and response.json()["status"] == "booting", (query, response.text)


def test_long_poll_answers_on_a_terminal_status_it_was_not_asked_for(api: ApiServer, store: Store) -> None:
    record = store.create("busybox-triangle", "lpfail", backend="local").record
    changer = later(0.3, lambda: move(store, record.id, "creating_networks", "failed"))
    response, _ = long_poll(api, record.id, "wait_for=ready&timeout=4")
    changer.join()
    assert response.status_code == 200 and response.json()["status"] == "failed"


def test_long_poll_answers_200_with_the_current_record_at_its_timeout(api: ApiServer, store: Store) -> None:
    record = store.create("busybox-triangle", "lpto", backend="local").record
    changer = later(0.3, lambda: move(store, record.id, "creating_networks"))
    response, elapsed = long_poll(api, record.id, "wait_for=ready&timeout=1.5")
    changer.join()
    assert response.status_code == 200
    assert response.json()["status"] == "creating_networks"
    assert elapsed >= 1.5
    # already there, and without wait_for: at once
    move(store, record.id, "ready")
    assert long_poll(api, record.id, "wait_for=ready&timeout=60")[0].json()["status"] == "ready"
    assert long_poll(api, record.id, "timeout=60")[0].json()["status"] == "ready"


def test_long_poll_refuses_bad_wait_for_and_timeout_with_422(api: ApiServer, store: Store) -> None:
    record = store.create("busybox-triangle", "lpbad", backend="local").record
    for query in (
        "wait_for=bogus",
        "wait_for=ready,",
        "wait_for=ready,,failed",
        "wait_for=READY",
        "wait_for=ready&wait_for=nope",
        "wait_for=ready&timeout=61",
        "wait_for=ready&timeout=-1",
        "wait_for=ready&timeout=abc",
        "wait_for=ready&timeout=nan",
        "wait_for=ready&timeout=inf",
    ):
        response, elapsed = long_poll(api, record.id, query)
        assert response.status_code == 422, (query, response.status_code, response.text)
        assert elapsed < 10, query  # refused, not waited on
    assert long_poll(api, "zzzzzzzzzz", "wait_for=ready&timeout=5")[0].status_code == 404


def test_many_long_polls_at_once_do_not_hold_the_api(api: ApiServer, store: Store) -> None:
    """More waiters than the threadpool has threads (40): every other route still answers at once."""
    record = store.create("busybox-triangle", "lpmany", backend="local").record
    results: list[int] = []

    def waiter() -> None:
        results.append(long_poll(api, record.id, "wait_for=ready&timeout=20")[0].status_code)

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(60)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    assert httpx.get(f"{api.url}/v1/livelessons/{record.id}", timeout=10).json()["status"] == "requested"
    assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
    move(store, record.id, "ready")
    for thread in threads:
        thread.join(30)
    assert results == [200] * 60


# --- lessonctl up --wait ----------------------------------------------------------------------------------


def test_lessonctl_up_wait_returns_when_the_lesson_is_ready(settings: Settings, store: Store) -> None:
    lessonctl = Path(sys.executable).with_name("lessonctl")
    proc = subprocess.Popen(
        [str(lessonctl), "up", "busybox-triangle", "--session", "cli", "--wait", "--timeout", "60", "--json"],
        env={**os.environ, **settings_env(settings)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (records := store.all()):  # the test looks for the record lessonctl made (no worker runs)
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        move(store, records[0].id, "creating_networks", "scheduling_pods", "booting", "verifying", "ready")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "ready"
