"""What an operator sees, for real: Flower's API over a running worker, the worker's JSON log, the API's
Prometheus metrics, and the healthchecks of compose.yaml run against real processes.

Real Redis, real Celery worker and beat processes, the real API and a real Flower, the local backend (root).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.leftovers import leftovers
from tests.support.lessons import REPO
from tests.support.processes import ApiServer, Flower, settings_env
from tests.support.waits import eventually, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

STEPS = ("create_networks", "schedule_pods", "wait_ready", "verify_connectivity")
STEP_TASKS = tuple(f"lessons.{step}" for step in STEPS)
FLOWER_AUTH = ("ops", "flower-pass")


def node_name(worker: CeleryProcess) -> str:
    """The worker's Celery node name as Celery expands it (``-n name@%h``)."""
    name = worker.argv[worker.argv.index("-n") + 1]
    return name.replace("%h", socket.gethostname())


# --- Flower ---------------------------------------------------------------------------------------------------


@pytest.fixture
def flower_for(tmp_path: Path) -> Iterator[Callable[[Settings], Flower]]:
    started: list[Flower] = []

    def start(settings: Settings) -> Flower:
        flower = Flower(settings, tmp_path / f"flower-{len(started)}.log", FLOWER_AUTH)
        started.append(flower)
        return flower

    yield start
    for flower in started:
        flower.stop()


def test_flower_lists_the_worker_and_the_lesson_tasks_and_refuses_strangers(
    settings_for, start_worker, flower_for, tmp_path: Path
) -> None:
    settings = settings_for()
    worker = start_worker(settings)
    flower = flower_for(settings)
    store = Store.from_settings(settings)
    name = node_name(worker)

    # the worker is listed (inspect), and its heartbeats reach Flower's event stream before the lesson starts
    workers = eventually(lambda: flower.get("/api/workers", refresh="1"), what="worker listed by /api/workers")
    assert name in workers, list(workers)
    eventually(lambda: flower.get("/api/workers", status="1").get(name) is True, what="worker online in events")

    client = Client(settings)
    livelesson = client.request_lesson("busybox-triangle", "flower").id
    record = wait_for(store, livelesson, {"ready", "failed"})
    assert record.status == "ready", record.error
    client.delete(livelesson)
    wait_for(store, livelesson, {"deleted"})

    def lesson_tasks() -> dict[str, list[dict[str, Any]]]:
        tasks = flower.get("/api/tasks", limit="1000")
        mine: dict[str, list[dict[str, Any]]] = {}
        for task in tasks.values():
            if (task.get("name") or "").startswith("lessons.") and (
                livelesson in (task.get("args") or "") or "'flower'" in (task.get("args") or "")
            ):
                mine.setdefault(task["name"], []).append(task)
        wanted = {"lessons.request", *STEP_TASKS, "lessons.teardown"}
        done = {n for n, ts in mine.items() if any(t["state"] == "SUCCESS" for t in ts)}
        assert wanted <= done, f"missing or unfinished: {sorted(wanted - done)}; seen {sorted(mine)}"
        return mine

    mine = eventually(lesson_tasks, what="every lessons.* task of the lesson in /api/tasks, SUCCESS")
    for task_name, tasks in mine.items():
        for task in tasks:
            # a waiting step re-schedules itself: RETRY is a normal intermediate state, nothing else is
            assert task["state"] in {"SUCCESS", "RETRY", "STARTED", "RECEIVED"}, (task_name, task)
            assert task["worker"] == name, task
    one = mine["lessons.create_networks"][0]
    assert one["runtime"] is not None and one["received"] and one["started"]
    # filters an operator uses: by task name and by state
    by_name = flower.get("/api/tasks", taskname="lessons.verify_connectivity", state="SUCCESS")
    assert any(livelesson in t["args"] for t in by_name.values())
    # searching by live-lesson id finds its tasks (the id is the steps' only argument)
    found = flower.get("/api/tasks", search=f"args:{livelesson}")
    assert {t["name"] for t in found.values()} >= {*STEP_TASKS, "lessons.teardown"}
    info = flower.get(f"/api/task/info/{one['uuid']}")
    assert info["name"] == "lessons.create_networks" and info["state"] == "SUCCESS"
    assert set(flower.get("/api/task/types")["task-types"]) >= {"lessons.request", *STEP_TASKS}

    # the views an operator opens, with credentials
    for path in ("/", "/workers", f"/worker/{name}", "/tasks", f"/task/{one['uuid']}", "/broker"):
        response = httpx.get(f"{flower.url}{path}", auth=FLOWER_AUTH, timeout=15)
        assert response.status_code == 200, (path, response.text[:300])

    # strangers are refused: no credentials, a wrong password, another scheme
    for path in ("/", "/workers", "/tasks", "/broker", f"/task/{one['uuid']}", "/api/workers", "/api/tasks",
                 f"/api/task/info/{one['uuid']}", "/api/queues/length"):  # fmt: skip
        for auth in (None, (FLOWER_AUTH[0], "wrong"), ("root", FLOWER_AUTH[1])):
            response = httpx.get(f"{flower.url}{path}", auth=auth, timeout=15)
            assert response.status_code == 401, (path, auth, response.status_code)
            assert livelesson not in response.text
        bearer = httpx.get(f"{flower.url}{path}", headers={"Authorization": "Bearer x"}, timeout=15)
        assert bearer.status_code == 401, path
    # nor can they act: revoking or sending tasks needs the same credentials
    post = httpx.post(f"{flower.url}/api/task/send-task/lessons.gc", json={}, timeout=15)
    assert post.status_code in (401, 403)
    # what stays open (compose's healthcheck relies on it): a plain OK, no task or lesson data
    health = httpx.get(f"{flower.url}/healthcheck", timeout=5)
    assert health.status_code == 200 and health.text == "OK"

    # compose.yaml's healthchecks of flower and worker, run against these processes
    assert run_healthcheck("flower", {"127.0.0.1:5555": f"127.0.0.1:{flower.port}"}, settings).returncode == 0
    worker_check = run_healthcheck("worker", {"worker@": name.split("@")[0] + "@"}, settings)
    assert worker_check.returncode == 0, worker_check.stdout + worker_check.stderr
    stranger = run_healthcheck("worker", {"worker@": "nobody@", "--timeout 10": "--timeout 2"}, settings)
    assert stranger.returncode != 0  # the check is not vacuous: a node that does not answer fails it
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


# --- compose healthchecks -------------------------------------------------------------------------------------


def run_healthcheck(service: str, replace: dict[str, str], settings: Settings) -> subprocess.CompletedProcess[str]:
    """Run ``services.<service>.healthcheck.test`` of compose.yaml here, with its addresses swapped for the
    test's (``replace``), the way Docker runs it in the container."""
    from tests.support.compose import interpolate

    doc = yaml.safe_load((REPO / "compose.yaml").read_text())
    test = interpolate(doc["services"][service]["healthcheck"]["test"], {})
    kind, args = test[0], test[1:]

    def swap(text: str) -> str:
        for old, new in replace.items():
            text = text.replace(old, new)
        return text

    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, **settings_env(settings), "HOSTNAME": socket.gethostname(),
           "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}  # fmt: skip
    if kind == "CMD-SHELL":
        argv = ["sh", "-c", swap(args[0])]
    else:
        assert kind == "CMD", test
        argv = [swap(a) for a in args]
        if argv[0] == "python":
            argv[0] = sys.executable
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


# --- logs -----------------------------------------------------------------------------------------------------


def json_lines(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(JSON objects, other lines) of a process's log. Celery's start banner is the only plain text."""
    objects, other = [], []
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(value, dict):
            objects.append(value)
        else:
            other.append(line)
    return objects, other


FIELDS = ("livelesson", "lesson", "session", "step")


def run_logged_lesson(settings: Settings, start_worker, tmp_path: Path, session: str) -> tuple[str, Path, Path]:
    """One triangle through the API, ready, then deleted: (live lesson id, worker log, API log)."""
    worker = start_worker(settings)
    api = ApiServer(settings, tmp_path / f"api-{session}.log")
    try:
        store = Store.from_settings(settings)
        created = httpx.post(
            f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": session}, timeout=10
        )
        assert created.status_code == 202, created.text
        livelesson = created.json()["id"]
        assert wait_for(store, livelesson, {"ready", "failed"}).status == "ready"
        assert httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", timeout=10).status_code == 202
        wait_for(store, livelesson, {"deleted"})
    finally:
        api.stop()
    time.sleep(0.5)  # the worker's last lines reach the file
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []
    return livelesson, worker.log_file, api.log_file


def lacking_fields(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"event": line.get("event"), "logger": line.get("logger"), "task": line.get("task"),
         "missing": [f for f in FIELDS if not line.get(f)]}
        for line in lines if not all(line.get(f) for f in FIELDS)
    ]  # fmt: skip


def test_worker_log_has_every_step_with_lesson_context(settings_for, start_worker, tmp_path: Path) -> None:
    settings = settings_for(log_format="json")
    livelesson, worker_log, api_log = run_logged_lesson(settings, start_worker, tmp_path, "logs")

    lines, _ = json_lines(worker_log)
    assert lines, worker_log.read_text()[-3000:]
    for line in lines:
        assert {"event", "level", "timestamp", "logger"} <= set(line), line
    about = [line for line in lines if livelesson in json.dumps(line)]
    complete = [line for line in about if all(line.get(f) for f in FIELDS)]
    for line in complete:
        assert (line["livelesson"], line["lesson"], line["session"]) == (livelesson, "busybox-triangle", "logs")
    steps = {line["step"] for line in complete}
    assert set(STEPS) <= steps, f"steps without a complete line: {sorted(set(STEPS) - steps)}"
    assert "teardown" in steps
    # every line that names the lesson carries all four fields, not just one line per step
    assert lacking_fields(about) == [], json.dumps(lacking_fields(about), indent=1)

    # the API's line about the same request carries the same context
    api_lines, _ = json_lines(api_log)
    requested = [line for line in api_lines if line.get("livelesson") == livelesson]
    assert requested
    for line in requested:
        assert (line["lesson"], line["session"], line["step"]) == ("busybox-triangle", "logs", "request"), line


def test_every_worker_line_about_a_lesson_carries_its_context(settings_for, start_worker, tmp_path: Path) -> None:
    """The issue's rule in full: lines about the lesson include those that name only one of its tasks."""
    settings = settings_for(log_format="json")
    livelesson, worker_log, _ = run_logged_lesson(settings, start_worker, tmp_path, "strict")
    lines, _ = json_lines(worker_log)
    task_ids = {line["task_id"] for line in lines if line.get("livelesson") == livelesson and line.get("task_id")}
    assert len(task_ids) >= len(STEPS) + 1
    about = [line for line in lines if any(ref in json.dumps(line) for ref in {livelesson, *task_ids})]
    assert lacking_fields(about) == [], json.dumps(lacking_fields(about), indent=1)


# --- metrics --------------------------------------------------------------------------------------------------


def scrape(api: ApiServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{api.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_follow_a_lesson_from_request_to_gc(settings_for, start_worker, tmp_path: Path) -> None:
    settings = settings_for(ttl_seconds=10, gc_interval_seconds=1)
    start_worker(settings)
    api = ApiServer(settings, tmp_path / "api.log")
    try:
        store = Store.from_settings(settings)
        before = scrape(api)
        assert value(before, "lessons_requested_total") == 0
        assert value(before, "lessons_ready_total") == 0

        created = httpx.post(
            f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": "metrics"}, timeout=10
        )
        livelesson = created.json()["id"]
        record = wait_for(store, livelesson, {"ready", "failed"})
        assert record.status == "ready", record.error
        samples = scrape(api)

        assert value(samples, "lessons_requested_total") == 1
        assert value(samples, "lessons_ready_total") == 1
        assert value(samples, "livelessons_active", status="ready") == 1
        for step in STEPS:
            assert value(samples, "lesson_step_seconds_count", step=step) == 1, step
            assert value(samples, "lesson_step_seconds_bucket", step=step, le="+Inf") == 1, step
            buckets = sorted(
                (float(dict(labels)["le"]), v) for (n, labels), v in samples.items()
                if n == "lesson_step_seconds_bucket" and dict(labels)["step"] == step
            )  # fmt: skip
            assert len(buckets) > 5 and [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
            timing = record.steps[step]
            took = (timing.finished_at - timing.started_at).total_seconds()
            assert value(samples, "lesson_step_seconds_sum", step=step) == pytest.approx(took, abs=0.01)
        elapsed = (record.ready_at - record.created_at).total_seconds()
        assert value(samples, "lesson_request_to_ready_seconds_count") == 1
        assert value(samples, "lesson_request_to_ready_seconds_sum") == pytest.approx(elapsed, abs=0.01)
        assert value(samples, "lesson_request_to_ready_seconds_bucket", le="+Inf") == 1
        assert not any(n == "lessons_failed_total" and v for (n, _), v in samples.items())

        # no keepalive: past its TTL beat's GC collects it, and says why
        beat = start_worker(settings, kind="beat")
        try:
            wait_for(store, livelesson, {"deleted"}, timeout=60)

            def collected() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                samples = scrape(api)
                return samples if value(samples, "gc_collected_total", reason="expired") else None

            after = eventually(collected, what="gc_collected_total{reason=expired}")
            assert value(after, "gc_collected_total", reason="expired") == 1
            assert not value(after, "livelessons_active", status="ready")
            assert value(after, "lessons_ready_total") == 1
            # compose.yaml's beat healthcheck against this beat, and against a beat that is not there
            schedule = str(beat.log_file.with_suffix(".schedule"))
            check = run_healthcheck("beat", {"/tmp/celerybeat-schedule": schedule}, settings)
            assert check.returncode == 0, check.stderr
            missing = run_healthcheck("beat", {"/tmp/celerybeat-schedule": str(tmp_path / "none")}, settings)
            assert missing.returncode != 0
        finally:
            beat.stop()
        assert run_healthcheck("api", {"http://127.0.0.1:8000": api.url}, settings).returncode == 0
    finally:
        api.stop()
    assert run_healthcheck("api", {"http://127.0.0.1:8000": api.url}, settings).returncode != 0
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


# --- Redis full ------------------------------------------------------------------------------------------------


def test_a_full_redis_refuses_requests_with_503_and_drops_nothing(tmp_path: Path, instance: str) -> None:
    """compose.yaml runs Redis with noeviction: when it is full, requests must fail loudly and nothing vanish."""
    (tmp_path / "redis").mkdir()
    with PrivateRedis(directory=tmp_path / "redis") as server:  # its own Redis: never fill the shared one
        settings = Settings(
            redis_url=server.url, instance=instance, state_dir=tmp_path / "state", catalog=REPO / "config" / "lessons"
        )  # type: ignore[call-arg]
        api = ApiServer(settings, tmp_path / "api-full.log")
        try:
            client = redis.Redis(port=server.port, decode_responses=True)
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            client.config_set("maxmemory", "4mb")
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for i in range(100_000):
                    client.set(f"fill:{i}", "x" * 1024)
            keys = client.dbsize()
            response = httpx.post(
                f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": "full"}, timeout=10
            )
            assert client.dbsize() == keys  # nothing evicted, nothing half-written
            assert "Traceback" not in response.text
            assert response.status_code == 503, response.text
            assert response.headers.get("retry-after")
        finally:
            api.stop()
