"""A lesson too big for one node (issue 18): 40 endpoints in a ring on nodes that hold 16 pods each.

Run as root: `.venv/bin/python bench/split_lesson.py [--runs 5]`. Prints the table docs/benchmarks.md
records.

Two instances of the local backend run side by side, each with its own worker (2 pool processes) on one
private Redis: "one node" (LESSON_LOCAL_NODES=1, no pod limit: the whole ring on one node, the seed's
affinity) and "three nodes of 16" (LESSON_LOCAL_NODES=3, LESSON_NODE_MAX_PODS=16: the ring is split and
its crossing links become VXLAN tunnels over the underlay). Runs alternate between the two, the order
flipping every pair, each after the previous run's teardown and a settle pause.

- request -> ready: the record's ``created_at`` -> ``ready_at`` (worker clocks), requested with the
  Python client; every run's record must have every check passing, or the bench stops;
- crossing links: counted from each record (endpoints on different nodes), beside what a link-blind
  placement (Kubernetes' default scheduler: the node with the most pods free) would cross on the same
  nodes, and the lower bound no placement can beat;
- the floor: the same ring through the local backend alone (apply, observe, every ping), in this process,
  with the same placement: what the scheduler's pipeline adds is the difference.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline import alone_run  # noqa: E402
from stats import pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.client import Client  # noqa: E402
from scheduler.core.placement import place_lesson, spread  # noqa: E402
from scheduler.core.records import LiveLesson  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import load_paths  # noqa: E402
from scheduler.services.logging import configure as configure_logging  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.lessons import ring_lesson  # noqa: E402
from tests.support.processes import settings_env  # noqa: E402
from workers.backends.local import LocalBackend  # noqa: E402

SIZE, PER_NODE, NODES = 40, 16, 3
DONE = frozenset({"ready", "failed"})


class Config:
    """One instance: its settings, worker and client."""

    def __init__(self, label: str, work: Path, redis_url: str, catalog: Path, nodes: int, max_pods: int) -> None:
        self.label = label
        self.instance = "bs" + secrets.token_hex(3)
        self.settings = Settings(
            redis_url=redis_url, instance=self.instance, state_dir=work / "state", catalog=catalog,
            log_format="json", log_level="WARNING", local_pods="emulated", local_nodes=nodes,
            node_max_pods=max_pods, provision_timeout_seconds=300,
        )  # fmt: skip
        self.worker = CeleryProcess(
            env=settings_env(self.settings), log_file=work / f"worker-{self.instance}.log", concurrency=2
        )
        self.client = Client(self.settings)
        self.backend = LocalBackend(
            instance=self.instance, state_dir=work / "state", pods="emulated", nodes=nodes, node_max_pods=max_pods
        )

    def run(self, session: str) -> LiveLesson:
        """Request the ring, wait until ready, check the record, tear it down; the ready record."""
        requested = self.client.request_lesson(f"ring{SIZE}", session)
        record = self.client.wait(requested.id, 300, until=DONE)
        if record.status != "ready" or not all(c.ok for c in record.checks):
            raise RuntimeError(f"{self.label}: {record.id} is {record.status}: {record.error}")
        self.client.delete(record.id)
        final = self.client.wait(record.id, 120, until=frozenset({"deleted", "failed"}))
        if final.status != "deleted":
            raise RuntimeError(f"{self.label}: teardown of {record.id}: {final.status}")
        return record

    def alone(self) -> float:
        """The floor: the ring through the backend alone with the same placement; ms to every ping passing."""
        lesson = load_paths([self.settings.catalog]).get(f"ring{SIZE}")
        assert lesson is not None
        rooms = self.backend.rooms()
        placement = place_lesson(lesson, rooms).nodes if rooms is not None else None
        return alone_run(self.backend, lesson, self.instance, placement)


def crossing(record: LiveLesson) -> int:
    nodes = {name: ep.node for name, ep in record.endpoints.items()}
    return sum(nodes[f"h{k}"] != nodes[f"h{k % SIZE + 1}"] for k in range(1, SIZE + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="measured runs of each configuration")
    parser.add_argument("--settle", type=float, default=1.0, help="pause before every measured run (s)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if os.geteuid() != 0:
        print("needs root (the local backend makes network namespaces)", file=sys.stderr)
        return 2
    configure_logging("json", "WARNING", stream=sys.stderr)  # the backend's own lines stay out of the table
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-split-"))
    catalog = work / "catalog"
    catalog.mkdir()
    (catalog / f"ring{SIZE}.yaml").write_text(ring_lesson(SIZE, slug=f"ring{SIZE}"))
    (work / "redis").mkdir()
    redis_server = PrivateRedis(directory=work / "redis", password=secrets.token_hex(16))
    redis_server.start()
    configs: list[Config] = []
    try:
        configs = [
            Config("one node (no pod limit)", work, redis_server.url, catalog, 1, 0),
            Config(f"{NODES} nodes of {PER_NODE} pods", work, redis_server.url, catalog, NODES, PER_NODE),
        ]
        for config in configs:
            config.worker.start()
        for config in configs:  # warm-up: imports, the nodes, the underlay, the page cache
            config.run("warm")
            config.alone()
        ready: dict[str, list[float]] = {c.label: [] for c in configs}
        alone: dict[str, list[float]] = {c.label: [] for c in configs}
        crossed: dict[str, set[int]] = {c.label: set() for c in configs}
        for i in range(args.runs):
            for config in configs if i % 2 == 0 else configs[::-1]:
                time.sleep(args.settle)
                record = config.run(f"s{i}")
                assert record.ready_at is not None
                ready[config.label].append((record.ready_at - record.created_at).total_seconds() * 1000)
                crossed[config.label].add(crossing(record))
                time.sleep(args.settle)
                alone[config.label].append(config.alone())
        load_after = os.getloadavg()[0]

        lesson = load_paths([catalog]).get(f"ring{SIZE}")
        assert lesson is not None
        names, links = [e.name for e in lesson.endpoints], [(x.a.name, x.b.name) for x in lesson.links]
        rooms = configs[1].backend.rooms()
        assert rooms is not None
        blind, bound = spread(names, links, rooms), place_lesson(lesson, rooms).bound
        print(
            f"\n# bench/split_lesson.py --runs {args.runs} --settle {args.settle:g}: "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"load average {load_before:.1f} before / {load_after:.1f} after; emulated pods"
        )
        print(f"\na ring of {SIZE} busybox endpoints ({SIZE} links, {4 * SIZE} checks), {args.runs} runs each")
        print(f"| {'nodes':<26} | {'crossing links':>14} | {'ready p50 ms':>12} | {'p95 ms':>7} | {'min ms':>7} "
              f"| {'backend alone p50 ms':>20} |")  # fmt: skip
        print(f"|{'-' * 28}|{'-' * 15}:|{'-' * 13}:|{'-' * 8}:|{'-' * 8}:|{'-' * 21}:|")
        for config in configs:
            values, floor = ready[config.label], alone[config.label]
            cut = ",".join(str(n) for n in sorted(crossed[config.label]))
            print(
                f"| {config.label:<26} | {cut:>14} | {pct(values, 50):12.0f} | {pct(values, 95):7.0f} | "
                f"{min(values):7.0f} | {pct(floor, 50):20.0f} |"
            )
        print(
            f"\ncrossing links on {NODES} nodes of {PER_NODE}: the scheduler's placement "
            f"{','.join(str(n) for n in sorted(crossed[configs[1].label]))}; a link-blind spread "
            f"(the most pods free first, as Kubernetes' default scheduler) {len(blind.crossing)}; "
            f"lower bound {bound}"
        )
        return 0
    finally:
        for config in configs:
            config.worker.stop()
        redis_server.cleanup()
        for config in configs:
            cleanup_instance(config.instance, work / "state")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
