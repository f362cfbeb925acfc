"""The scheduler's overhead: request -> ready through API + Redis + Celery, next to the local backend alone;
and how soon a waiting client learns that a lesson is ready.

Run as root: `.venv/bin/python bench/pipeline.py [--runs 20] [--warmup 1] [--settle 0.3] [--concurrent 20]`.
Prints tables (the ones docs/benchmarks.md records).

- "backend alone": the same four steps called in one process (apply networks, apply pods, observe, pings),
  no queue, no Redis;
- "pipeline": POST /v1/livelessons to status ready, measured by the record's own created_at/ready_at
  (server clocks, no waiting error), with the client's own time beside it (POST -> ``Client.wait`` returned).

Fair by construction: both series get the same unrecorded warm-up runs first and the same settle pause
before every measured run (after the previous run's teardown has finished: the kernel's asynchronous
cleanup of deleted namespaces holds the RTNL lock), and the runs are interleaved in pairs, the order
alternating from pair to pair (pipeline then alone, alone then pipeline, ...) so that neither series
always runs just after the other's teardown. Overhead is the median of the paired differences
(pipeline record - backend alone, pair by pair), not a difference of two medians.

"client learns of ready": for each pipeline run, the time from the record's ``ready_at`` (set by the
worker in the transaction that marks it ready) to the moment the waiting client has the ready record in
hand: ``Client.wait`` (Redis pub/sub, no polling) and, beside it in a thread, the HTTP long-poll
``GET /v1/livelessons/{id}?wait_for=ready``. Same host, same clock.

Throughput: N lessons requested at once on one worker with 2 pool processes, until all are ready.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from stats import pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.client import Client  # noqa: E402
from scheduler.core.lessons import ResolvedLesson  # noqa: E402
from scheduler.core.plan import make_plan  # noqa: E402
from scheduler.core.records import LiveLesson, new_id  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import load_paths  # noqa: E402
from scheduler.services.state import Store  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.lessons import TRIANGLE  # noqa: E402
from tests.support.processes import ApiServer, settings_env  # noqa: E402
from workers.backends.base import Backend  # noqa: E402
from workers.backends.local import LocalBackend  # noqa: E402
from workers.backends.local.parallel import parallel as _parallel  # noqa: E402
from workers.connectivity import run_check  # noqa: E402

READY = frozenset({"ready", "failed"})


def alone_run(
    backend: Backend,
    lesson: ResolvedLesson,
    instance: str,
    placement: Mapping[str, str] | None = None,
    *,
    wait: float = 10.0,
) -> float:
    """One lesson (a triangle here) through the backend's four operations in this process, on the nodes of
    ``placement`` if given; milliseconds to all pings passing. ``wait``: seconds for readiness, and again for
    the pings."""
    plan = make_plan(lesson, new_id(), "bench", instance=instance, placement=placement)
    t0 = time.perf_counter()
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    obs = backend.observe(plan, wait=wait)
    deadline = time.monotonic() + wait
    results = _parallel(
        lambda c: run_check(backend, plan, c, obs.address(c.target, c.interface) or "", deadline=deadline),
        list(plan.checks),
    )
    elapsed = (time.perf_counter() - t0) * 1000
    if not all(r.ok for r in results):
        raise RuntimeError(f"pings failed: {results}")
    backend.destroy(plan.livelesson)  # synchronous: the teardown is over when it returns
    return elapsed


class Pipeline:
    def __init__(self, api: ApiServer, client: Client) -> None:
        self.api, self.client = api, client

    def request(self, session: str) -> str:
        response = httpx.post(
            f"{self.api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": session}, timeout=30
        )
        response.raise_for_status()
        return str(response.json()["id"])

    def ready(self, livelesson: str, timeout: float = 120) -> LiveLesson:
        record = self.client.wait(livelesson, timeout, until=READY)
        if record.status != "ready":
            raise RuntimeError(f"{livelesson} is {record.status}: {record.error}")
        return record

    def teardown(self, livelesson: str) -> None:
        """DELETE, then wait (by push) until the worker has torn it down: the next run starts on a quiet host."""
        httpx.delete(f"{self.api.url}/v1/livelessons/{livelesson}", timeout=30).raise_for_status()
        final = self.client.wait(livelesson, 60, until=frozenset({"deleted", "failed"}))
        if final.status != "deleted":
            raise RuntimeError(f"{livelesson} teardown: {final.status} {final.error}")

    def run(self, session: str) -> dict[str, float]:
        """One measured run: request -> ready, with the client's and the long-poll's view of it."""
        polled: dict[str, float] = {}
        t0 = time.perf_counter()
        livelesson = self.request(session)

        def long_poll() -> None:
            response = httpx.get(
                f"{self.api.url}/v1/livelessons/{livelesson}", params={"wait_for": "ready", "timeout": 60}, timeout=90
            )
            polled["at"] = time.time()
            polled["ok"] = float(response.status_code == 200 and response.json()["status"] == "ready")

        poller = threading.Thread(target=long_poll, daemon=True)
        poller.start()
        record = self.ready(livelesson)
        learned_at = time.time()
        client_ms = (time.perf_counter() - t0) * 1000
        poller.join(90)
        assert record.ready_at is not None
        ready_at = record.ready_at.timestamp()
        if not polled.get("ok"):
            raise RuntimeError(f"{livelesson}: the long-poll did not answer ready")
        self.teardown(livelesson)
        return {
            "record": (record.ready_at - record.created_at).total_seconds() * 1000,
            "client": client_ms,
            "learn_wait": (learned_at - ready_at) * 1000,
            "learn_http": (polled["at"] - ready_at) * 1000,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="measured pairs (pipeline + backend alone)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs of each series first")
    parser.add_argument("--settle", type=float, default=0.3, help="pause before every measured run (s)")
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    if os.geteuid() != 0:
        print("needs root (the local backend makes network namespaces)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    instance = "bp" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    state = work / "state"
    (work / "redis").mkdir()
    redis_server = PrivateRedis(directory=work / "redis", password=secrets.token_hex(16))
    redis_server.start()
    procs: list[CeleryProcess] = []
    api = None
    try:
        settings = Settings(
            redis_url=redis_server.url, instance=instance, state_dir=state, catalog=REPO / "config" / "lessons",
            log_format="json", log_level="WARNING", max_per_session=100, max_active=1000,
            # the scheduler's overhead is the same whatever runs in a pod; emulated pods, as when the figures
            # in docs/benchmarks.md were taken (bench/containers.py measures container pods)
            local_pods="emulated",
        )  # fmt: skip
        lesson = load_paths([TRIANGLE]).get("busybox-triangle")
        assert lesson is not None
        # the same instance and state directory as the worker's: both series share one node namespace
        backend = LocalBackend(instance=instance, state_dir=state, pods=settings.local_pods)
        worker = CeleryProcess(env=settings_env(settings), log_file=work / "worker.log", concurrency=2)
        procs.append(worker.start())
        api = ApiServer(settings, work / "api.log")
        store = Store.from_settings(settings)
        pipeline = Pipeline(api, Client(settings))

        # the same warm-up for both: imports, the worker's pipeline, the node namespace, the page cache
        for i in range(args.warmup):
            pipeline.run(f"warm{i}")
            alone_run(backend, lesson, instance)

        alone: list[float] = []
        runs: list[dict[str, float]] = []
        for i in range(args.runs):
            order = ("pipeline", "alone") if i % 2 == 0 else ("alone", "pipeline")
            for which in order:
                time.sleep(args.settle)
                if which == "pipeline":
                    runs.append(pipeline.run(f"s{i}"))
                else:
                    alone.append(alone_run(backend, lesson, instance))

        sessions = [f"c{i}" for i in range(args.concurrent)]
        time.sleep(args.settle)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrent) as pool:
            ids = list(pool.map(pipeline.request, sessions))
        for livelesson in ids:
            pipeline.ready(livelesson, timeout=300)
        burst_s = time.perf_counter() - t0
        for livelesson in ids:
            httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", timeout=30)
        deadline = time.monotonic() + 120
        while store.active_count() and time.monotonic() < deadline:
            time.sleep(0.2)
        load_after = os.getloadavg()[0]

        record = [r["record"] for r in runs]
        client = [r["client"] for r in runs]
        learn_wait = [r["learn_wait"] for r in runs]
        learn_http = [r["learn_http"] for r in runs]
        paired = [r - a for r, a in zip(record, alone, strict=True)]
        print(
            f"\n# bench/pipeline.py --runs {args.runs} --warmup {args.warmup} --settle {args.settle:g} "
            f"--concurrent {args.concurrent}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"Linux {platform.release()}, load average {load_before:.1f} before / {load_after:.1f} after"
        )
        print(f"\nrequest -> ready, {args.runs} interleaved pairs, {args.warmup} warm-up run(s) and a "
              f"{args.settle:g} s settle pause before every run, both series")  # fmt: skip
        print(f"| {'path':<44} | {'p50 ms':>7} | {'p95 ms':>7} | {'min ms':>7} |")
        print(f"|{'-' * 46}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
        for name, values in (
            ("triangle, local backend alone", alone),
            ("triangle, API+Redis+Celery (record)", record),
            ("triangle, API+Redis+Celery (client)", client),
        ):
            print(f"| {name:<44} | {pct(values, 50):7.1f} | {pct(values, 95):7.1f} | {min(values):7.1f} |")
        print(
            f"| {'scheduler overhead: paired record - alone':<44} | {statistics.median(paired):7.1f} | "
            f"{pct(paired, 95):7.1f} | {min(paired):7.1f} |"
        )
        print("(overhead p50 is the median of the per-pair differences, not p50 record - p50 alone)")
        print(
            f"\nclient learns of ready: record's ready_at -> the waiting client has the ready record, {args.runs} runs"
        )
        print(f"| {'waiter':<44} | {'p50 ms':>7} | {'p95 ms':>7} | {'max ms':>7} |")
        print(f"|{'-' * 46}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
        for name, values in (
            ("scheduler.client.Client.wait (pub/sub)", learn_wait),
            ("GET /v1/livelessons/{id}?wait_for=ready", learn_http),
        ):
            print(f"| {name:<44} | {pct(values, 50):7.1f} | {pct(values, 95):7.1f} | {max(values):7.1f} |")
        print(
            f"\nthroughput: {args.concurrent} triangles at once on 1 worker x 2 processes: all ready in "
            f"{burst_s:.2f} s = {args.concurrent / burst_s:.2f} lessons/s"
        )
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
