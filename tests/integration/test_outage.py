"""A Redis outage in the middle of provisioning (issue 8, item 5).

A private redis-server with AOF (as in compose) is killed for 20 s while several lessons are being built by
two worker processes and beat. Meanwhile the API must answer 503 quickly (health, reads and requests),
never hang or 500. After Redis comes back on the same port and directory, nobody is restarted: the API,
the workers and beat reconnect by themselves, a new request is served, and every lesson ends ready or
failed with a clear error; none stays stuck. Then everything is deleted and nothing is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.faults import cni_dir_with, wrapper_dir
from tests.support.leftovers import leftovers
from tests.support.lessons import REPO
from tests.support.processes import ApiServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

TOKEN = "outage-token"
OUTAGE_SECONDS = 20.0
LESSONS = ["busybox-triangle", "busybox-line", "busybox-hub", "busybox-triangle", "busybox-line"]
MID = {"creating_networks", "scheduling_pods", "booting", "verifying"}
# every netlink, ping and CNI call takes a little longer, so provisioning is still running when Redis dies
SLOW_TOOLS = {"ip": 'sleep 0.15; exec /usr/sbin/ip "$@"\n', "ping": 'sleep 0.15; exec /usr/bin/ping "$@"\n'}


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def statuses(store: Store, ids: list[str]) -> dict[str, str]:
    return {r.id: r.status for r in store.many(ids)}


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Our own redis-server with AOF; set up before the workers, so it is stopped after them."""
    (tmp_path / "redis").mkdir()
    server = PrivateRedis(directory=tmp_path / "redis", aof=True)
    server.start()
    yield server
    server.cleanup()  # stops only the process this object started


def test_redis_outage_mid_provisioning(
    aof_redis: PrivateRedis,
    instance: str,
    tmp_path: Path,
    image_dir: Path,
    start_worker: Callable[..., CeleryProcess],
) -> None:
    server = aof_redis
    api: ApiServer | None = None
    try:
        settings = Settings(
            redis_url=server.url,
            instance=instance,
            state_dir=tmp_path / "state",
            image_dir=image_dir,
            catalog=REPO / "config" / "lessons",
            cni_path=cni_dir_with(tmp_path / "cni", 'sleep 0.15; exec /usr/lib/cni/bridge "$@"\n'),
            gc_interval_seconds=1,
            lease_seconds=4,
            provision_timeout_seconds=150,
            visibility_timeout_seconds=120,
            log_format="json",
        )
        env = {"PATH": f"{wrapper_dir(tmp_path / 'tools', SLOW_TOOLS)}:{os.environ['PATH']}"}
        workers = [start_worker(settings, **env), start_worker(settings, **env)]
        beat = start_worker(settings, kind="beat")
        api = ApiServer(settings, tmp_path / "api.log", LESSON_API_TOKEN=TOKEN)
        store = Store.from_settings(settings)
        url = f"{api.url}/v1/livelessons"

        ids = []
        for i, lesson in enumerate(LESSONS):
            response = httpx.post(url, json={"lesson": lesson, "session": f"outage{i}"}, headers=auth(), timeout=10)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])

        # wait until several of them are mid-way, then kill Redis (SIGKILL: a crash, not a clean shutdown)
        deadline = time.monotonic() + 60
        while sum(s in MID for s in statuses(store, ids).values()) < 2:
            assert time.monotonic() < deadline, statuses(store, ids)
            time.sleep(0.05)
        before = statuses(store, ids)
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        down_at = time.monotonic()

        # while it is down: every answer is a quick 503 with Retry-After, never a hang, a 500 or a traceback
        answers: list[tuple[str, int, float]] = []
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            for method, path, body in [
                ("GET", "/healthz", None),
                ("POST", "/v1/livelessons", {"lesson": "busybox-line", "session": "during"}),
                ("GET", f"/v1/livelessons/{ids[0]}", None),
                ("POST", f"/v1/livelessons/{ids[0]}/keepalive", None),
            ]:
                t0 = time.monotonic()
                response = httpx.request(method, f"{api.url}{path}", json=body, headers=auth(), timeout=15)
                answers.append((f"{method} {path}", response.status_code, time.monotonic() - t0))
                assert response.status_code == 503, (method, path, response.status_code, response.text)
                assert "Traceback" not in response.text
                if path != "/healthz":
                    assert int(response.headers["retry-after"]) > 0
            time.sleep(0.5)
        # every answer came back (httpx's timeout guards against a hang); how fast is a figure, not a test
        assert all(w.alive() for w in workers) and beat.alive(), "a process died of the outage"

        server.start()  # same port, same directory: the AOF brings records and queues back
        up_at = time.monotonic()

        # nobody is restarted: the API reconnects by itself ...
        while httpx.get(f"{api.url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() - up_at < 30, "the API did not reconnect"
            time.sleep(0.2)
        reconnect_s = time.monotonic() - up_at
        assert all(r.id in ids for r in store.many(ids)) and len(store.many(ids)) == len(ids)  # nothing lost
        # ... and so do the workers: a lesson requested now is served
        after = httpx.post(url, json={"lesson": "busybox-triangle", "session": "after"}, headers=auth(), timeout=10)
        assert after.status_code == 202, after.text
        ids.append(after.json()["id"])

        # every lesson ends ready or failed with a clear error; none stays stuck (GC on beat re-drives them)
        deadline = time.monotonic() + 150
        while True:
            final = {r.id: r for r in store.many(ids)}
            if all(r.status in {"ready", "failed"} for r in final.values()) and len(final) == len(ids):
                break
            assert time.monotonic() < deadline, {i: r.status for i, r in final.items()}
            time.sleep(0.2)
        for record in final.values():
            if record.status == "failed":
                assert record.error is not None and record.error.step and len(record.error.message) > 10, record
        assert final[ids[-1]].status == "ready", final[ids[-1]].error
        settled_s = time.monotonic() - up_at
        ready = sum(r.status == "ready" for r in final.values())
        print(
            f"\noutage: {OUTAGE_SECONDS:.0f}s, statuses when Redis died {before}, {len(answers)} answers all 503 "
            f"(slowest {max(s for _, _, s in answers):.2f}s), API back {reconnect_s:.1f}s after Redis, "
            f"{ready}/{len(ids)} ready, all settled {settled_s:.1f}s after Redis, "
            f"failed: {[r.error.message for r in final.values() if r.error]}"
        )
        assert all(w.alive() for w in workers) and beat.alive()

        # and everything goes away cleanly
        for livelesson in ids:
            assert httpx.delete(f"{url}/{livelesson}", headers=auth(), timeout=10).status_code == 202
        deadline = time.monotonic() + 90
        while any(r.status not in {"deleted", "failed"} for r in store.many(ids)):
            assert time.monotonic() < deadline, statuses(store, ids)
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while any(leftovers(instance, i, settings.state_dir) for i in ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {i: leftovers(instance, i, settings.state_dir) for i in ids} == {i: [] for i in ids}
    finally:
        if api is not None:
            api.stop()
        if server.proc is None or server.proc.poll() is not None:
            server.start()  # the workers' warm shutdown wants their broker
