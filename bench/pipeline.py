"""The scheduler's overhead: request -> ready through API + Redis + Celery, next to the local backend alone.

Run as root: `.venv/bin/python bench/pipeline.py [--runs 10] [--concurrent 20]`. Prints a table.
- "backend alone": the same four steps called in one process (apply networks, apply pods, observe,
  pings), no queue, no Redis;
- "pipeline": POST /v1/livelessons to status ready, measured by the record's own created_at/ready_at
  (server clocks, no polling error), with the HTTP round trip measured by the client beside it;
- throughput: N lessons requested at once on one worker with 2 pool processes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.catalog import load_paths  # noqa: E402
from scheduler.plan import make_plan  # noqa: E402
from scheduler.records import new_id  # noqa: E402
from scheduler.redis_server import PrivateRedis  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.state import Store  # noqa: E402
from tests.conftest import cleanup_instance, settings_env  # noqa: E402
from tests.integration.stack import ApiServer  # noqa: E402
from workers.backends.local import LocalBackend, _parallel  # noqa: E402
from workers.backends.ping import run_check  # noqa: E402
from workers.launcher import CeleryProcess  # noqa: E402

TRIANGLE = REPO / "config" / "lessons" / "busybox-triangle.yaml"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def backend_alone(runs: int, instance: str, state: Path) -> list[float]:
    lesson = load_paths([TRIANGLE]).get("busybox-triangle")
    assert lesson is not None
    backend = LocalBackend(instance=instance, state_dir=state)
    out = []
    for _ in range(runs):
        plan = make_plan(lesson, new_id(), "bench", instance=instance)
        t0 = time.perf_counter()
        backend.apply_networks(plan)
        backend.apply_pods(plan)
        obs = backend.observe(plan, wait=10)
        deadline = time.monotonic() + 10
        results = _parallel(
            lambda c, plan=plan, obs=obs, deadline=deadline: run_check(
                backend, plan, c, obs.address(c.target, c.interface) or "", deadline=deadline
            ),
            list(plan.checks),
        )
        out.append((time.perf_counter() - t0) * 1000)
        assert all(r.ok for r in results)
        backend.destroy(plan.livelesson)
    return out


def wait_ready(store: Store, livelesson: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get(livelesson)
        if record is not None and record.status in {"ready", "failed"}:
            if record.status != "ready":
                raise RuntimeError(f"{livelesson} failed: {record.error}")
            return
        time.sleep(0.005)
    raise RuntimeError(f"{livelesson} not ready in {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the local backend makes network namespaces)", file=sys.stderr)
        return 2
    instance = "bp" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    state = work / "state"
    redis_server = PrivateRedis(directory=work / "redis")
    (work / "redis").mkdir()
    redis_server.start()
    procs: list[CeleryProcess] = []
    api = None
    try:
        settings = Settings(
            redis_url=redis_server.url, instance=instance, state_dir=state, catalog=REPO / "config" / "lessons",
            log_format="json", log_level="WARNING", max_per_session=100, max_active=1000,
        )  # fmt: skip
        alone = backend_alone(args.runs, instance, state)
        worker = CeleryProcess(env=settings_env(settings), log_file=work / "worker.log", concurrency=2)
        procs.append(worker.start())
        api = ApiServer(settings, work / "api.log")
        store = Store.from_settings(settings)
        # warm-up: the worker's first task imports and builds its pipeline
        first = httpx.post(f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": "warm"}).json()
        wait_ready(store, first["id"])
        httpx.delete(f"{api.url}/v1/livelessons/{first['id']}")

        server_ms, client_ms = [], []
        for i in range(args.runs):
            t0 = time.perf_counter()
            resp = httpx.post(f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": f"s{i}"})
            livelesson = resp.json()["id"]
            wait_ready(store, livelesson)
            client_ms.append((time.perf_counter() - t0) * 1000)
            record = store.get(livelesson)
            assert record is not None and record.ready_at is not None
            server_ms.append((record.ready_at - record.created_at).total_seconds() * 1000)
            httpx.delete(f"{api.url}/v1/livelessons/{livelesson}")
            time.sleep(0.3)  # let the teardown finish so runs do not overlap

        sessions = [f"c{i}" for i in range(args.concurrent)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
            ids = list(
                pool.map(
                    lambda s: httpx.post(
                        f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": s}, timeout=30
                    ).json()["id"],
                    sessions,
                )
            )
        for livelesson in ids:
            wait_ready(store, livelesson, timeout=300)
        burst_s = time.perf_counter() - t0
        for livelesson in ids:
            httpx.delete(f"{api.url}/v1/livelessons/{livelesson}")

        rows = [
            ("triangle, local backend alone", alone),
            ("triangle, API+Redis+Celery (record)", server_ms),
            ("triangle, API+Redis+Celery (client)", client_ms),
        ]
        print(f"\nrequest -> ready, {args.runs} runs each, {os.cpu_count()} cores")
        print(f"{'path':<40} {'p50 ms':>8} {'p95 ms':>8} {'min ms':>8}")
        for name, values in rows:
            print(f"{name:<40} {pct(values, 50):8.1f} {pct(values, 95):8.1f} {min(values):8.1f}")
        overhead = pct(server_ms, 50) - pct(alone, 50)
        print(f"{'scheduler overhead (p50 record - alone)':<40} {overhead:8.1f}")
        print(
            f"\nthroughput: {args.concurrent} triangles at once on 1 worker x 2 processes: all ready in "
            f"{burst_s:.2f} s = {args.concurrent / burst_s:.2f} lessons/s"
        )
        deadline = time.monotonic() + 60
        while store.active_count() and time.monotonic() < deadline:
            time.sleep(0.2)
        return 0
    finally:
        if api is not None:
            api.stop()
        for proc in procs:
            proc.stop()
        redis_server.cleanup()
        cleanup_instance(instance, state)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
