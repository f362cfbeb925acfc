"""A lesson too big for one node, on Kubernetes (issue 18): a ring of 40 on three real nodes.

    sudo .venv/bin/python bench/split_k8s.py [--runs 3] [--size 40] [--per-node 16]

On the test cluster (`make k8s-up`; started here if it is not up, and stopped again after) with three
real nodes in network namespaces of ours (`cluster.py nodes-up --count 3`, each a kubelet, containerd,
Multus and the product's node agent; stopped again after), a private redis-server and two real Celery
workers as the worker's ServiceAccount, both with LESSON_K8S_PLACEMENT=nodes:

- "one node": no pod limit of ours, so the whole ring goes on one node (best fit), the seed's rule;
- "3 nodes of 16": LESSON_NODE_MAX_PODS=16, so the ring is split, its crossing links VXLAN segments made by
  the node agents.

Runs alternate between the two, the order flipping every pair, each after the previous run's teardown and
a settle pause. Per run: request -> ready from the record (created_at -> ready_at; every check must pass,
or the bench stops), and the crossing links counted from the record. The floor, in the same run: the same
ring through the Kubernetes backend alone (apply, observe until ready, every ping; in this process, with
the same placement): what the pipeline adds is the difference. Real containers throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from k8s_backend import CLUSTER, STATE, cluster, kubectl, wait  # noqa: E402
from pipeline import alone_run  # noqa: E402
from stats import pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.client import Client  # noqa: E402
from scheduler.core.placement import place_lesson, spread  # noqa: E402
from scheduler.core.records import LiveLesson  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import load_paths  # noqa: E402
from scheduler.services.logging import configure as configure_logging  # noqa: E402
from scheduler.services.state import Store  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.k8s.machinery.api_proxy import write_token_kubeconfig  # noqa: E402
from tests.support.k8s import INSTANCES_CONFIGMAP, WORKER_SA, probe_namespace  # noqa: E402
from tests.support.lessons import ring_lesson  # noqa: E402
from tests.support.processes import settings_env  # noqa: E402
from workers.backends.kubernetes.backend import KubernetesBackend  # noqa: E402

NODES = 3
TIMEOUT = 600.0


def name() -> str:
    return "bk" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


class Config:
    """One instance: its settings, worker, client and backend."""

    def __init__(self, label: str, work: Path, redis_url: str, catalog: Path, kubeconfig: Path, max_pods: int):
        self.label = label
        self.instance = name()
        self.settings = Settings(
            redis_url=redis_url, backend="kubernetes", kubeconfig=kubeconfig, instance=self.instance,
            catalog=catalog, log_format="json", log_level="WARNING", k8s_placement="nodes",
            node_max_pods=max_pods, provision_timeout_seconds=int(TIMEOUT),
        )  # fmt: skip
        self.worker = CeleryProcess(
            env=settings_env(self.settings), log_file=work / f"worker-{self.instance}.log", concurrency=4
        )
        self.store = Store.from_settings(self.settings)
        self.client = Client(self.settings)
        self.backend = KubernetesBackend.from_settings(self.settings)

    def run(self, slug: str, session: str) -> LiveLesson:
        """Request, wait until ready, check the record, tear it down; the ready record."""
        livelesson = self.client.request_lesson(slug, session).id
        record = wait(self.store, livelesson, {"ready", "failed"}, TIMEOUT)
        if record.status != "ready" or not all(c.ok for c in record.checks):
            raise RuntimeError(f"{self.label}: {record.id} is {record.status}: {record.error}")
        self.client.delete(livelesson)
        final = wait(self.store, livelesson, {"deleted", "failed"}, TIMEOUT)
        if final.status != "deleted":
            raise RuntimeError(f"{self.label}: teardown of {livelesson}: {final.status}")
        return record

    def alone(self, slug: str) -> float:
        """The floor: the ring through the backend alone with the same placement; ms to every ping passing."""
        lesson = load_paths([self.settings.catalog]).get(slug)
        assert lesson is not None
        rooms = self.backend.rooms()
        placement = place_lesson(lesson, rooms).nodes if rooms is not None else None
        return alone_run(self.backend, lesson, self.instance, placement, wait=TIMEOUT)


def crossing(record: LiveLesson, size: int) -> int:
    nodes = {name: ep.node for name, ep in record.endpoints.items()}
    return sum(nodes[f"h{k}"] != nodes[f"h{k % size + 1}"] for k in range(1, size + 1))


def allow(instance: str | None, present: bool) -> None:
    """The worker's admission policy lets it make namespaces only of the instances its ConfigMap lists."""
    patch = {"data": {instance: "" if present else None}}
    kubectl("patch", "configmap", INSTANCES_CONFIGMAP, "-n", WORKER_SA[0], "--type=merge", "-p", json.dumps(patch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each configuration")
    parser.add_argument("--size", type=int, default=40, help="endpoints in the ring")
    parser.add_argument("--per-node", type=int, default=16, help="LESSON_NODE_MAX_PODS of the split configuration")
    parser.add_argument("--settle", type=float, default=5.0, help="pause before every measured run (s)")
    args = parser.parse_args()
    if args.runs < 1 or not 3 <= args.size <= 100 or not 1 <= args.per_node < args.size:
        parser.error("--runs >= 1, --size in 3..100, --per-node in 1..size-1")
    if os.geteuid() != 0:
        print("needs root (the test cluster's nodes are network namespaces)", file=sys.stderr)
        return 2
    configure_logging("json", "WARNING", stream=sys.stderr)
    started_cluster = cluster("status") != 0
    if started_cluster and cluster("up") != 0:
        print("the test cluster did not start: run `make k8s-up` to see why", file=sys.stderr)
        return 1
    # kubelets that hold the whole ring (and its warm-up) on one node
    nodes_up = subprocess.run(
        [sys.executable, str(CLUSTER), "nodes-up", f"--count={NODES}", f"--max-pods={args.size + 8}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if nodes_up.returncode != 0:
        print(f"cluster.py nodes-up failed:\n{nodes_up.stdout}{nodes_up.stderr}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-split-k8s-"))
    catalog = work / "catalog"
    catalog.mkdir()
    slug = f"ring{args.size}"
    (catalog / f"{slug}.yaml").write_text(ring_lesson(args.size, slug=slug))
    (work / "redis").mkdir()
    redis_server = PrivateRedis(directory=work / "redis", password=secrets.token_hex(16)).start()
    configs: list[Config] = []
    try:
        token = kubectl("create", "token", WORKER_SA[1], "-n", WORKER_SA[0], "--duration=2h").strip()
        port = json.loads((STATE / "ports.json").read_text())["apiserver"]
        kubeconfig = write_token_kubeconfig(
            work / "worker", f"https://127.0.0.1:{port}", token=token, ca=STATE / "pki" / "ca.crt"
        )
        split = f"{NODES} nodes of {args.per_node} pods"
        configs = [
            Config("one node (no pod limit)", work, redis_server.url, catalog, kubeconfig, 0),
            Config(split, work, redis_server.url, catalog, kubeconfig, args.per_node),
        ]
        for config in configs:
            allow(config.instance, True)
            deadline = time.monotonic() + 30
            while probe_namespace(token, config.instance) != 201:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the admission policy does not allow instance {config.instance}")
                time.sleep(0.1)
            config.worker.start()
        for config in configs:  # warm-up: imports, the images on every node, the scheduler's caches
            config.run(slug, "warm")
        ready: dict[str, list[float]] = {c.label: [] for c in configs}
        alone: dict[str, list[float]] = {c.label: [] for c in configs}
        crossed: dict[str, set[int]] = {c.label: set() for c in configs}
        for i in range(args.runs):
            for config in configs if i % 2 == 0 else configs[::-1]:
                time.sleep(args.settle)
                record = config.run(slug, f"s{i}")
                assert record.ready_at is not None
                ready[config.label].append((record.ready_at - record.created_at).total_seconds() * 1000)
                crossed[config.label].add(crossing(record, args.size))
                time.sleep(args.settle)
                alone[config.label].append(config.alone(slug))
        load_after = os.getloadavg()[0]

        lesson = load_paths([catalog]).get(slug)
        assert lesson is not None
        names, links = [e.name for e in lesson.endpoints], [(x.a.name, x.b.name) for x in lesson.links]
        rooms = configs[1].backend.rooms()
        assert rooms is not None
        blind, bound = spread(names, links, rooms), place_lesson(lesson, rooms).bound
        version = json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
        print(
            f"\n# bench/split_k8s.py --runs {args.runs} --size {args.size} --per-node {args.per_node} "
            f"--settle {args.settle:g}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"Linux {platform.release()}, kube-apiserver {version}, load average {load_before:.1f} before / "
            f"{load_after:.1f} after; real containers on {NODES} real nodes (kubelet + containerd + Multus)"
        )
        links_text = f"{args.size} links, {4 * args.size} checks"
        print(f"\na ring of {args.size} busybox endpoints ({links_text}), {args.runs} runs each")
        print(f"| {'nodes':<26} | {'crossing links':>14} | {'ready p50 ms':>12} | {'max ms':>7} | {'min ms':>7} "
              f"| {'backend alone p50 ms':>20} |")  # fmt: skip
        print(f"|{'-' * 28}|{'-' * 15}:|{'-' * 13}:|{'-' * 8}:|{'-' * 8}:|{'-' * 21}:|")
        for config in configs:
            values, floor = ready[config.label], alone[config.label]
            cut = ",".join(str(n) for n in sorted(crossed[config.label]))
            print(
                f"| {config.label:<26} | {cut:>14} | {pct(values, 50):12.0f} | {max(values):7.0f} | "
                f"{min(values):7.0f} | {pct(floor, 50):20.0f} |"
            )
        print(
            f"\ncrossing links on {NODES} nodes of {args.per_node}: the scheduler's placement "
            f"{','.join(str(n) for n in sorted(crossed[configs[1].label]))}; a link-blind spread "
            f"(the most pods free first, as Kubernetes' default scheduler) {len(blind.crossing)}; "
            f"lower bound {bound}"
        )
        return 0
    finally:
        for config in configs:
            config.worker.stop()
            config.backend.close()
            leftover = kubectl("get", "namespaces", "-l", f"lessons.io/instance={config.instance}", "-o", "name")
            if leftover.split():
                kubectl("delete", "--wait=true", *leftover.split())
            with contextlib.suppress(subprocess.CalledProcessError):
                allow(config.instance, False)
        redis_server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run([sys.executable, str(CLUSTER), "nodes-down"], capture_output=True, check=False)
        if started_cluster:
            cluster("down")


if __name__ == "__main__":
    sys.exit(main())
