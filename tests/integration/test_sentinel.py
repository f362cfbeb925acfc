"""Redis Sentinel (issue 17): every process follows a failover, nothing acknowledged is lost, GC stays single.

A real group on loopback (scheduler/dev/redis_sentinel.py): a primary and two replicas with AOF, three
sentinels, one password for all of them. The primary is SIGKILLed, a replica promoted, and the old primary
comes back as a replica; the API, a worker, beat, the Python client and ``lessonctl`` are never restarted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.core.errors import TemporaryError
from scheduler.dev.redis_sentinel import SentinelGroup
from scheduler.services.queue import sender
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.leftovers import leftovers
from tests.support.lessons import REPO
from tests.support.prereqs import needs
from tests.support.processes import ApiServer, Flower, settings_env
from tests.support.waits import wait_for, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

TOKEN = "sentinel-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    needs(shutil.which("redis-sentinel") is not None, "needs redis-sentinel (apt-get install redis-sentinel)")
    with SentinelGroup(password=secrets.token_hex(16), directory=tmp_path / "sentinel") as started:
        yield started


def sentinel_settings(group: SentinelGroup, instance: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        **group.settings(),
        "instance": instance,
        "state_dir": tmp_path / "state",
        "catalog": REPO / "config" / "lessons",
        "local_pods": "emulated",
        "gc_interval_seconds": 1,
        "lease_seconds": 4,
        "log_format": "json",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def post_until_accepted(api: ApiServer, lesson: str, session: str, within: float = 30) -> tuple[str, list[int]]:
    """POST as a client does: a 503 (Redis failing over) is retried after its Retry-After, capped at 0.2 s."""
    codes: list[int] = []
    deadline = time.monotonic() + within
    while True:
        response = httpx.post(
            f"{api.url}/v1/livelessons", json={"lesson": lesson, "session": session}, headers=AUTH, timeout=15
        )
        codes.append(response.status_code)
        if response.status_code in (200, 202):  # 200: the lesson an earlier, unanswered attempt made
            return str(response.json()["id"]), codes
        assert response.status_code == 503, (response.status_code, response.text)
        assert "Traceback" not in response.text and int(response.headers["retry-after"]) > 0
        assert time.monotonic() < deadline, codes
        time.sleep(0.2)


def test_every_process_follows_a_failover_and_loses_nothing(
    group: SentinelGroup, instance: str, tmp_path: Path, start_worker: Callable[..., CeleryProcess]
) -> None:
    settings = sentinel_settings(group, instance, tmp_path)
    worker = start_worker(settings)
    beat = start_worker(settings, kind="beat")
    api = ApiServer(settings, tmp_path / "api.log", LESSON_API_TOKEN=TOKEN)
    flower = Flower(settings, tmp_path / "flower.log", ("ops", secrets.token_hex(8)))
    client = Client(settings)
    ids: list[str] = []
    try:
        first, _ = post_until_accepted(api, "busybox-triangle", "before")
        ids.append(first)
        assert client.wait(first, 60).status == "ready"

        # a request accepted, and the primary lost at once: the 202 was confirmed by a replica first
        during, _ = post_until_accepted(api, "busybox-line", "during")
        ids.append(during)
        old = group.kill_primary()
        killed_at = time.monotonic()
        # the API keeps answering (503 while there is no primary), and serves again once one is promoted
        after, codes = post_until_accepted(api, "busybox-hub", "after")
        ids.append(after)
        first_success_s = time.monotonic() - killed_at
        new = group.wait_failover(old)
        promoted_at = time.time()
        assert new != old
        logged_before = len(worker.log_file.read_text())

        # the Python client's request goes through the queue and the result backend, both via the sentinels
        ids.append(client.request_lesson("busybox-line", "client", timeout=60).id)

        # the worker, beat and the API were never restarted: every lesson comes up on the new primary
        for livelesson in ids:
            assert client.wait(livelesson, 90).status == "ready", client.get(livelesson)
        assert {r.id for r in client.store.many(ids)} == set(ids)

        # Flower's event stream followed too (events are pub/sub: those sent while it reconnected are gone, so
        # look for beat's GC passes, one a second, finishing after the failover)
        def seen_by_flower() -> bool:
            tasks = flower.get("/api/tasks", taskname="lessons.gc", state="SUCCESS")
            return any((task.get("succeeded") or 0) > promoted_at for task in tasks.values())

        wait_until("Flower to see a task after the failover", seen_by_flower, timeout=30, retry_on=(httpx.HTTPError,))

        # lessonctl, a fresh process, finds the new primary through the sentinels
        lessonctl = Path(sys.executable).with_name("lessonctl")
        shown = subprocess.run(
            [str(lessonctl), "status", during], env={**os.environ, **settings_env(settings)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0 and "ready" in shown.stdout, shown.stdout + shown.stderr

        # the old primary comes back with its AOF, and the sentinels make it a replica of the new one
        group.restart(old)
        wait_until("the old primary to rejoin as a replica", lambda: group.role(old) == "slave", timeout=60)
        wait_until("the replicas to be in sync", group.in_sync, timeout=60)

        # beat goes on collecting on the new primary: a pass has run since the failover
        passes = wait_until(
            "a GC pass after the failover",
            lambda: worker.log_file.read_text()[logged_before:].count('"gc pass"'),
            timeout=30,
        )
        print(
            f"\nfailover: primary {old} killed; first 202 after {first_success_s:.2f}s ({len(codes) - 1} x 503 "
            f"before it); new primary {new}; old primary back as a replica; {passes} GC passes since the failover"
        )

        # and everything goes away cleanly
        for livelesson in ids:
            assert httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", headers=AUTH, timeout=15).status_code == 202
        for livelesson in ids:
            wait_for(client.store, livelesson, {"deleted"}, timeout=60)
        wait_until(
            "no leftovers", lambda: not any(leftovers(instance, i, settings.state_dir) for i in ids), timeout=30
        )
        assert worker.alive() and beat.alive(), "a worker or beat exited on the failover"
    finally:
        api.stop()
        flower.stop()


def test_a_request_no_replica_confirmed_is_never_acknowledged(
    group: SentinelGroup, instance: str, tmp_path: Path, start_worker: Callable[..., CeleryProcess]
) -> None:
    """Without a replica to confirm it, a request gets 503 (not 202), and its retry gets the same lesson;
    GC runs no pass under a lock no replica has."""
    settings = sentinel_settings(group, instance, tmp_path, redis_wait_ms=300)
    start_worker(settings)
    gc = sender(settings)
    api = ApiServer(settings, tmp_path / "api.log", LESSON_API_TOKEN=TOKEN)
    store = Store.from_settings(settings)
    try:
        primary = group.primary_port()
        replicas = [s for s in group.servers if s.port != primary]
        for replica in replicas:
            replica.stop()
        body = {"lesson": "busybox-line", "session": "unconfirmed"}
        refused = httpx.post(f"{api.url}/v1/livelessons", json=body, headers=AUTH, timeout=15)
        assert refused.status_code == 503, refused.text
        assert "could not confirm the write on a replica" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0
        # the operator's log says why, naming the setting
        logged = api.log_file.read_text()
        assert "reached 0 of the 1 Redis replicas" in logged and "LESSON_REDIS_MIN_REPLICAS" in logged
        # the same rule holds for anything else a client is told is done, and for the Python client
        with pytest.raises(TemporaryError, match="replicas"):
            store.confirm("a test write")
        # lessons.gc, as beat sends it: skipped (None), since its lock could vanish in a failover
        assert gc.send_task("lessons.gc").get(timeout=60) is None


        for replica in replicas:
            replica.start()
        wait_until("the replicas to be in sync", group.in_sync, timeout=60)
        accepted, codes = post_until_accepted(api, "busybox-line", "unconfirmed")
        # the retry is idempotent: the record the refused request wrote is the one acknowledged now (200)
        assert [r.id for r in store.all()] == [accepted] and codes[-1] == 200
        assert isinstance(gc.send_task("lessons.gc").get(timeout=60), dict)  # a pass ran: its counts
    finally:
        api.stop()


def test_the_gc_lock_survives_a_failover(group: SentinelGroup, instance: str, tmp_path: Path) -> None:
    """A lock a replica confirmed is still held on the promoted replica: a second beat cannot start a pass."""
    settings = sentinel_settings(group, instance, tmp_path)
    first, second = Store.from_settings(settings), Store.from_settings(settings)
    held = first.lock("gc", timeout=60)
    assert held.acquire()
    first.confirm("the GC lock")
    old = group.kill_primary()
    group.wait_failover(old)
    # clients re-ask the sentinels on their own; the first may see a dropped connection once
    wait_until(
        "the new primary to answer", lambda: second.r.ping(), timeout=30, retry_on=(Exception,)
    )
    rival = second.lock("gc", timeout=60)
    assert not rival.acquire(), "a second GC pass could start after the failover"
    wait_until("the holder to release on the new primary", lambda: held.release() is None, retry_on=(Exception,))
    assert rival.acquire(), "the lock was not free after its holder released it"
    rival.release()


def test_a_primary_replaced_while_it_still_lives_is_left_for_the_new_one(
    group: SentinelGroup, instance: str, tmp_path: Path
) -> None:
    """The primary stops answering (SIGSTOP: a machine stalled, a partition) but is not dead, and the
    sentinels promote a replica. The store's pooled connection to the old primary would wait for it (and,
    once it woke, read stale data from it until the sentinels demote it); the store re-asks the sentinels
    (at most once a second) and its next call goes to the new primary at once."""
    store = Store.from_settings(sentinel_settings(group, instance, tmp_path))
    assert store.ping() and store.active_count() == 0  # a pooled connection to the current primary
    old = group.primary_port()
    assert old is not None
    stalled = group.server(old).proc
    assert stalled is not None
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        new = group.wait_failover(old)
        time.sleep(1.1)  # the store asks the sentinels at most once a second
        started = time.monotonic()
        created = store.create("busybox-line", "after-switch", backend="local")  # no timeout, no retry
        assert time.monotonic() - started < 2, "the call waited for the stalled primary"
        assert group._ask(new).get(store.key(created.record.id)) is not None, "not written to the new primary"
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    # woken, the old primary is demoted by the sentinels and catches up as a replica
    wait_until("the old primary to be a replica", lambda: group.role(old) == "slave", timeout=60)
    assert store.require(created.record.id).status == "requested"
