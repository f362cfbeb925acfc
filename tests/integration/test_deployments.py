"""Two deployments with the same instance name side by side (issue 11): each has its own Redis, hence its
own deployment id, and they share this host and its state folder. GC of one never collects the other's
live lessons as orphans; a teardown sent to one for the other's id touches nothing."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.queue import sender
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support import netns_tools as netns
from tests.support.leftovers import cleanup_instance, leftovers
from tests.support.lessons import TRIANGLE
from tests.support.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory=tmp_path / "redis-b", password=secrets.token_hex(16)).start()
    yield server
    server.cleanup()


def test_same_instance_two_deployments_never_collect_each_other(
    settings_for: Callable[..., Settings],
    start_worker: Callable[..., CeleryProcess],
    second_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    a = settings_for(catalog=TRIANGLE)
    b = a.model_copy(update={"redis_url": second_redis.url})  # same instance, same state folder, same host
    store_a, store_b = Store.from_settings(a), Store.from_settings(b)
    assert store_a.deployment() != store_b.deployment()
    start_worker(a)
    start_worker(b)
    ids = {}
    for name, settings, store in (("a", a, store_a), ("b", b, store_b)):
        answer = sender(settings).send_task("lessons.request", args=["busybox-triangle", f"s-{name}"]).get(timeout=60)
        assert answer["ok"], answer
        ids[name] = answer["record"]["id"]
        assert wait_for(store, ids[name], {"ready", "failed"}, timeout=90).status == "ready"
    try:
        # GC on each side, twice: the other's lesson is neither an orphan nor touched
        for _ in range(2):
            for settings in (a, b):
                counts = sender(settings).send_task("lessons.gc").get(timeout=60)
                assert counts is not None and counts["orphan"] == 0, counts
        # a teardown sent to B naming A's live lesson (no record in B, and B's backend does not list it)
        sender(b).send_task("lessons.teardown", args=[ids["a"]]).get(timeout=60)
        for name, store in (("a", store_a), ("b", store_b)):
            record = store.require(ids[name])
            assert record.status == "ready", (name, record)
            pods = [f"{a.instance}-{ids[name]}-{ep}" for ep in ("bb1", "bb2", "bb3")]
            assert all(netns.exists(p) for p in pods), (name, pods)
        # the owner records name their deployments
        state = a.state_dir / a.instance / "lessons"
        owners = {name: (state / ids[name] / "owner.json").read_text() for name in ids}
        assert store_a.deployment() in owners["a"] and store_b.deployment() in owners["b"]
        for name, settings, store in (("a", a, store_a), ("b", b, store_b)):
            sender(settings).send_task("lessons.teardown", args=[ids[name]]).get(timeout=60)
            assert wait_for(store, ids[name], {"deleted"}).status == "deleted"
        for name in ids:
            assert leftovers(a.instance, ids[name], a.state_dir) == []
    finally:
        cleanup_instance(a.instance, a.state_dir)
