"""The pipeline end to end: real Redis, real Celery worker processes, the local backend, as root."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.core.records import LiveLesson
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.faults import cni_dir_with, wrapper_dir
from tests.support.leftovers import leftovers
from tests.support.lessons import TRIANGLE
from tests.support.processes import ApiServer
from tests.support.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

TOKEN = "s3cret-token"


def snapshot(client: redis.Redis, instance: str) -> dict[str, object]:
    """Every key of this instance with its value: to prove bad requests change nothing."""
    out: dict[str, object] = {}
    for key in client.scan_iter(match=f"lessons:{instance}:*"):
        kind = client.type(key)
        if kind == "string":
            out[key] = client.get(key)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
    return out


@pytest.fixture
def stack(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], tmp_path: Path
) -> Iterator[Callable[..., tuple[Settings, ApiServer, Store]]]:
    servers: list[ApiServer] = []

    def make(beat: bool = False, workers: int = 1, env: dict[str, str] | None = None, **overrides: object):
        settings = settings_for(**overrides)
        for _ in range(workers):
            start_worker(settings, **(env or {}))
        if beat:
            start_worker(settings, kind="beat")
        api = ApiServer(settings, tmp_path / f"api-{len(servers)}.log", LESSON_API_TOKEN=TOKEN)
        servers.append(api)
        return settings, api, Store.from_settings(settings)

    yield make
    for server in servers:
        server.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_http_lifecycle_request_ready_keepalive_delete(stack, tmp_path: Path) -> None:
    settings, api, store = stack()
    body = {"lesson": "busybox-triangle", "session": "alice"}
    first = httpx.post(f"{api.url}/v1/livelessons", json=body, headers=auth(), timeout=10)
    assert first.status_code == 202, first.text
    livelesson = first.json()["id"]
    again = httpx.post(f"{api.url}/v1/livelessons", json=body, headers=auth(), timeout=10)
    assert again.status_code == 200 and again.json()["id"] == livelesson

    record = wait_for(store, livelesson, {"ready", "failed"})
    assert record.status == "ready", record.error
    got = httpx.get(f"{api.url}/v1/livelessons/{livelesson}", headers=auth(), timeout=10).json()
    assert len(got["checks"]) == 12 and all(c["ok"] for c in got["checks"])  # 6 over the links, 6 by name
    assert set(got["endpoints"]) == {"bb1", "bb2", "bb3"}
    assert all(s["finished_at"] and s["attempts"] >= 1 for s in got["steps"].values())
    assert set(got["steps"]) == {"create_networks", "schedule_pods", "wait_ready", "verify_connectivity"}

    time.sleep(1.1)
    kept = httpx.post(f"{api.url}/v1/livelessons/{livelesson}/keepalive", headers=auth(), timeout=10)
    assert kept.status_code == 200
    assert kept.json()["expires_at"] > got["expires_at"]

    deleted = httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", headers=auth(), timeout=10)
    assert deleted.status_code == 202
    final = wait_for(store, livelesson, {"deleted"})
    assert final.checks  # the record keeps its history for inspection
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def test_fifty_concurrent_identical_requests_give_one_live_lesson(stack) -> None:
    settings, api, store = stack()
    body = {"lesson": "busybox-line", "session": "crowd"}

    def post(_: int) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/livelessons", json=body, headers=auth(), timeout=30)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses if r.status_code >= 300]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sum(r.status_code == 202 for r in responses) == 1
    assert [r.id for r in store.all()] == list(ids)
    livelesson = ids.pop()
    assert wait_for(store, livelesson, {"ready", "failed"}).status == "ready"
    httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", headers=auth(), timeout=10)
    wait_for(store, livelesson, {"deleted"})
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def test_ttl_expiry_is_collected_by_gc_on_beat(stack) -> None:
    settings, api, store = stack(beat=True, ttl_seconds=10, gc_interval_seconds=1)
    created = httpx.post(
        f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": "idle"}, headers=auth(), timeout=10
    ).json()
    assert wait_for(store, created["id"], {"ready", "failed"}).status == "ready"
    # no keepalive: the TTL runs out and beat's GC tears it down
    final = wait_for(store, created["id"], {"deleted"}, timeout=40)
    assert final.status == "deleted"
    assert leftovers(settings.instance, created["id"], settings.state_dir) == []


def test_cni_fault_twice_then_success_is_retried_and_visible(stack, tmp_path: Path) -> None:
    counter = tmp_path / "faults"
    counter.write_text("0")
    script = f"""
if [ "$CNI_COMMAND" = ADD ]; then
  exec 9>>{counter}.lock; flock 9
  n=$(cat {counter})
  if [ "$n" -lt 2 ]; then
    echo $((n + 1)) > {counter}
    echo '{{"cniVersion":"0.4.0","code":11,"msg":"injected fault: try again later"}}'
    exit 1
  fi
fi
exec /usr/lib/cni/bridge "$@"
"""
    cni_path = cni_dir_with(tmp_path / "cni", script)
    settings, _api, store = stack(cni_path=cni_path)
    livelesson = Client(settings).request_lesson("busybox-triangle", "flaky").id
    record = wait_for(store, livelesson, {"ready", "failed"})
    assert record.status == "ready", record.error
    assert counter.read_text().strip() == "2"
    assert record.steps["schedule_pods"].attempts >= 2  # the retries show in the record
    Client(settings).delete(livelesson)
    wait_for(store, livelesson, {"deleted"})
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def test_hanging_backend_fails_at_the_deadline_and_is_cleaned(stack, tmp_path: Path) -> None:
    script = """
if [ "$CNI_COMMAND" = ADD ]; then exec sleep 3600; fi
exec /usr/lib/cni/bridge "$@"
"""
    cni_path = cni_dir_with(tmp_path / "cni", script)
    settings, _api, store = stack(beat=True, cni_path=cni_path, provision_timeout_seconds=8, gc_interval_seconds=1)
    livelesson = Client(settings).request_lesson("busybox-triangle", "hang").id
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=40)
    assert record.status == "failed"
    assert record.error is not None and record.error.step == "schedule_pods"
    assert "8s" in record.error.message or "deadline" in record.error.message
    deadline = time.monotonic() + 30
    while leftovers(settings.instance, livelesson, settings.state_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def hold_lock(path: Path) -> int:
    """Take an exclusive flock the way the backend does, so a step that needs it waits for the test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.parametrize("status", ["creating_networks", "scheduling_pods", "booting", "verifying"])
def test_worker_sigkilled_mid_step_still_completes(status: str, settings_for, start_worker, tmp_path: Path) -> None:
    """The whole worker (main process and pool) is SIGKILLed while a step is in progress; GC re-drives it.

    Each step is held open deterministically: creating_networks waits on the node lock the test holds,
    schedule_pods runs a CNI plugin that takes 1.5 s, wait_ready's observe waits on the lesson lock the
    test takes as the pods are applied, and every ping takes 1.5 s.
    """
    tools = wrapper_dir(tmp_path / "tools", {"ping": 'sleep 1.5; exec /usr/bin/ping "$@"\n'})
    cni_path = cni_dir_with(tmp_path / "cni", 'sleep 1.5; exec /usr/lib/cni/bridge "$@"\n')
    settings = settings_for(cni_path=cni_path, lease_seconds=3, gc_interval_seconds=1, visibility_timeout_seconds=60)
    env = {"PATH": f"{tools}:{os.environ['PATH']}"}
    root = settings.state_dir / settings.instance
    worker = start_worker(settings, **env)
    start_worker(settings, kind="beat")
    store = Store.from_settings(settings)
    held: list[int] = []
    if status == "creating_networks":
        held.append(hold_lock(root / "node.lock"))
    livelesson = Client(settings).request_lesson("busybox-triangle", f"kill-{status}").id
    step = {"creating_networks": "create_networks", "scheduling_pods": "schedule_pods",
            "booting": "wait_ready", "verifying": "verify_connectivity"}[status]  # fmt: skip
    if status == "booting":
        # queue behind apply_pods for the lesson lock: the moment the pods are applied the test holds it,
        # and wait_ready's observe waits for it
        wait_for_step(store, livelesson, "schedule_pods")
        # apply_pods resolves the images before it takes the lock: queue only once it holds it
        wait_until_locked(root / "locks" / f"{livelesson}.lock")
        taker = ThreadPoolExecutor(max_workers=1)
        lock = taker.submit(hold_lock, root / "locks" / f"{livelesson}.lock")
        held.append(lock.result(timeout=60))
    record = wait_for_step(store, livelesson, step)
    assert record.status == status
    # a crash of the whole worker: main process and pool, mid-step
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait()
    for fd in held:
        os.close(fd)
    start_worker(settings, **env)
    final = wait_for(store, livelesson, {"ready", "failed"}, timeout=120)
    assert final.status == "ready", final.error
    assert all(c.ok for c in final.checks) and len(final.checks) == 12  # 6 over the links, 6 by name
    assert final.steps[step].attempts >= 2  # the killed attempt and the one that finished
    Client(settings).delete(livelesson)
    wait_for(store, livelesson, {"deleted"}, timeout=60)
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def wait_until_locked(path: Path, timeout: float = 60) -> None:
    """Until another process holds the flock on ``path`` (a momentary hold of ours in between is harmless:
    the holder we wait for just waits that long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            time.sleep(0.002)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        finally:
            os.close(fd)  # closing drops our hold, if we got one
        time.sleep(0.002)
    raise AssertionError(f"nobody took {path} within {timeout} s")


def wait_for_step(store: Store, livelesson: str, step: str, timeout: float = 60) -> LiveLesson:
    """Until ``step`` has been entered (its attempt counted) and has not finished."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(livelesson)
        timing = record.steps.get(step) if record else None
        if timing is not None and timing.attempts >= 1 and timing.finished_at is None:
            return record  # type: ignore[return-value]
        if time.monotonic() > deadline or (record is not None and record.status in {"ready", "failed"}):
            raise AssertionError(f"{livelesson} never held in {step}: {record}")
        time.sleep(0.005)


def test_redelivered_steps_are_harmless(stack) -> None:
    settings, _api, store = stack()
    client = Client(settings)
    livelesson = client.request_lesson("busybox-triangle", "dup").id
    ready = wait_for(store, livelesson, {"ready", "failed"})
    assert ready.status == "ready"
    from scheduler.services.queue import sender

    # every step delivered again, twice, as Redis would after a visibility timeout
    steps = ["lessons.create_networks", "lessons.schedule_pods", "lessons.wait_ready", "lessons.verify_connectivity"]
    for task in steps * 2:
        sender(settings).send_task(task, args=[livelesson])
    time.sleep(3)
    after = store.get(livelesson)
    assert after is not None and after.status == "ready"
    assert after.steps == ready.steps and after.checks == ready.checks and after.endpoints == ready.endpoints
    client.delete(livelesson)
    sender(settings).send_task("lessons.teardown", args=[livelesson])  # a duplicate teardown too
    wait_for(store, livelesson, {"deleted"})
    time.sleep(1)
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


def test_bad_requests_get_their_4xx_and_change_nothing(stack) -> None:
    settings, api, store = stack(max_per_session=1)
    url = f"{api.url}/v1/livelessons"
    ok = httpx.post(url, json={"lesson": "busybox-line", "session": "bob"}, headers=auth(), timeout=10)
    assert ok.status_code == 202
    wait_for(store, ok.json()["id"], {"ready", "failed"})
    before = snapshot(store.r, settings.instance)

    wrong = {"Authorization": "Bearer wrong"}
    cases = [
        (httpx.post(url, json={"lesson": "nope", "session": "bob"}, headers=auth()), 404, "not in the catalog"),
        (httpx.post(url, content=b"{not json", headers={**auth(), "content-type": "application/json"}), 422, ""),
        (httpx.post(url, json={"lesson": "busybox-line"}, headers=auth()), 422, "session"),
        (httpx.post(url, json={"lesson": "busybox-line", "session": "bad session!"}, headers=auth()), 422, "session"),
        (httpx.post(url, json={"lesson": "busybox-line", "session": "x", "extra": 1}, headers=auth()), 422, "extra"),
        (httpx.post(url, json={"lesson": "busybox-triangle", "session": "bob"}), 401, "token"),
        (httpx.post(url, json={"lesson": "busybox-triangle", "session": "bob"}, headers=wrong), 401, "token"),
        (httpx.post(url, json={"lesson": "busybox-triangle", "session": "bob"}, headers=auth()), 429, "limit"),
        (httpx.get(f"{url}/zzzzzzzzzz", headers=auth()), 404, "does not exist"),
        (httpx.get(f"{url}/../../etc", headers=auth()), 404, ""),
        (httpx.post(f"{url}/zzzzzzzzzz/keepalive", headers=auth()), 404, "does not exist"),
        (httpx.delete(f"{url}/zzzzzzzzzz", headers=auth()), 404, "does not exist"),
        (httpx.post(url, content=b"x" * 20000, headers={**auth(), "content-type": "application/json"}), 413, "body"),
    ]
    for response, code, words in cases:
        assert response.status_code == code, (response.request.method, response.request.url, response.text)
        assert words in response.text
        assert "Traceback" not in response.text
    assert cases[7][0].headers.get("retry-after")
    assert snapshot(store.r, settings.instance) == before
    Client(settings).delete(ok.json()["id"])
    wait_for(store, ok.json()["id"], {"deleted"})


def test_client_and_send_task_request(stack) -> None:
    """Another service: only Redis, `send_task('lessons.request')`, then polling the record."""
    settings, _api, _store = stack()
    client = Client(settings)
    record = client.request_lesson("busybox-hub", "svc")
    again = client.request_lesson("busybox-hub", "svc")
    assert again.id == record.id
    with pytest.raises(Exception, match="not in the catalog"):
        client.request_lesson("nope", "svc")
    final = client.wait(record.id, timeout=60)
    assert final.status == "ready" and len(final.checks) == 20  # 10 over the links, 10 by name
    client.delete(record.id)
    assert client.wait(record.id, timeout=60).status == "deleted"


def test_demo_command_prints_the_table_and_exits_0(tmp_path: Path, instance: str) -> None:
    lessonctl = Path(sys.executable).with_name("lessonctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    env.update({"LESSON_INSTANCE": instance, "LESSON_STATE_DIR": str(tmp_path / "state")})
    proc = subprocess.run(
        [str(lessonctl), "demo", str(TRIANGLE), "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["ready_at"] and len(record["checks"]) == 12 and all(c["ok"] for c in record["checks"])
    assert record["status"] == "deleted"
    assert "nothing left behind" in proc.stderr
    human = subprocess.run([str(lessonctl), "demo"], env=env, capture_output=True, text=True, timeout=120)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "bb1" in human.stdout and "10.10.12." in human.stdout and "6/6 pings passed" in human.stdout
    # real containers, seen from inside (the image's busybox, the lesson's command as PID 1)
    assert "pods are containers" in human.stdout
    for pod in ("bb1", "bb2", "bb3"):
        assert f"{pod}: container of busybox, inside: hostname {pod} | PID 1: sleep infinity" in human.stdout
