"""Kubernetes backend benchmark: API requests per lesson by verb, and request -> ready time.

    sudo .venv/bin/python bench/k8s_backend.py [--runs 5] [--lessons busybox-line busybox-triangle ring-10 ...]

On the test cluster (tests/k8s/machinery/cluster.py: real kube-apiserver, scheduler and controller-manager, a
real node (kubelet, containerd, runc, Multus) where lesson pods run as real containers, and kwok nodes wired by
the node agent with the real CNI plugins; started here if it is not up, and stopped again after),
with a private redis-server and a real Celery worker running as the worker's ServiceAccount:

1. requests: each lesson once through tests/k8s/machinery/api_proxy.py, which counts every API request the worker
   makes by verb and resource, from the request to ready ("provision") and from delete to deleted
   ("teardown"). The goal: no polling loops, and a count that grows linearly with endpoints (E) plus
   connections (C). What the backend should need: namespace + the RoleBinding that grants the lesson role
   there + NetworkPolicy + C NADs + E pods (creates), a list and a watch of the pods (one more pair per
   2-second slice that wait_ready needs), and two execs per link direction (a ping until the first reply,
   then the measuring burst), 4C: 5 + E + 5C. Counted apart ("self"):
   the SelfSubjectReview (once per backend) and the SelfSubjectAccessReviews that wait for the grant to
   take effect (usually one). Teardown: get, delete, list, watch of the namespace: 4.
2. timing: ``--runs`` live lessons of each of the triangle and a 10-node ring, straight to the API server
   (no proxy), one at a time: request -> ready from the record (created_at -> ready_at) and per step,
   first on the real node (real containers: image pull through the loopback registry, runc, Multus), then
   on the kwok nodes (emulated: kwok marks pods Ready, the agent wires them) in the same run. For the kwok
   rows the bench moves the taint: the real node is tainted and the kwok nodes untainted, and back after.
   A pause (``--settle``) follows each teardown: the test cluster's node agent (standing in for Multus and
   the kubelet) runs the CNI DELs of the last lesson's pods after their namespace is gone, one pod at a
   time, and would otherwise delay the next lesson's wiring.

Everything runs under a unique instance and is removed, even on failure.
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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.client import Client  # noqa: E402
from scheduler.core.records import STEPS, LiveLesson  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import load_catalog  # noqa: E402
from scheduler.services.state import Store  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.k8s.machinery.api_proxy import ApiProxy, write_token_kubeconfig  # noqa: E402
from tests.support.k8s import INSTANCES_CONFIGMAP, REAL_NODE, WORKER_SA, probe_namespace  # noqa: E402
from tests.support.k8s import cluster as test_cluster  # noqa: E402
from tests.support.waits import wait_for  # noqa: E402

CLUSTER = REPO / "tests" / "k8s" / "machinery" / "cluster.py"
STATE = REPO / ".k8s"
DEFAULT_LESSONS = ["busybox-line", "busybox-triangle", "busybox-hub", "ring-10", "ring-20"]
TIMED = ["busybox-triangle", "ring-10"]
VERBS = ["create", "get", "list", "watch", "delete", "exec"]
SELF_REVIEWS = {"selfsubjectreviews", "selfsubjectaccessreviews"}


def ring(n: int) -> str:
    endpoints = "".join(f"- name: r{i}\n  image: busybox\n  command: [sleep, infinity]\n" for i in range(1, n + 1))
    links = "".join(f"- a: r{i}\n  b: r{i % n + 1}\n" for i in range(1, n + 1))
    return (
        f"slug: ring-{n}\nname: Ring of {n}\ncategory: fundamentals\ntier: prod\n"
        f"description: {n} hosts in a ring\nendpoints:\n{endpoints}connections:\n{links}"
    )


def kubectl(*args: str) -> str:
    binary = subprocess.run(
        [sys.executable, str(CLUSTER), "bin-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    argv = [f"{binary}/kubectl", f"--kubeconfig={STATE / 'kubeconfig'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def cluster(command: str) -> int:
    return subprocess.run([sys.executable, str(CLUSTER), command], capture_output=True, text=True).returncode


def wait(store: Store, livelesson: str, statuses: set[str], timeout: float = 180) -> LiveLesson:
    return wait_for(store, livelesson, statuses, timeout, interval=0.01, error=RuntimeError)


class Bench:
    def __init__(self, workdir: Path, catalog: Path, redis_url: str, instance: str) -> None:
        self.workdir = workdir
        self.catalog = catalog
        self.redis_url = redis_url
        self.instance = instance
        self.workers: list[CeleryProcess] = []
        self.mark = 0.0  # time.monotonic() of the last delete: what the proxy counted before it is provisioning

    def worker(self, kubeconfig: Path, name: str) -> tuple[Settings, CeleryProcess]:
        settings = Settings(
            redis_url=self.redis_url, backend="kubernetes", kubeconfig=kubeconfig, catalog=self.catalog,
            instance=self.instance, log_format="json", max_per_session=100,
        )  # fmt: skip
        env = {f"LESSON_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}
        proc = CeleryProcess(env=env, log_file=self.workdir / f"{name}.log", concurrency=4, name=name).start()
        self.workers.append(proc)
        return settings, proc

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.workers.clear()

    def one(self, settings: Settings, slug: str, session: str) -> tuple[LiveLesson, float, float]:
        """Request, wait ready, delete, wait deleted: (ready record, client wall s to ready, teardown s)."""
        store = Store.from_settings(settings)
        client = Client(settings)
        started = time.monotonic()
        livelesson = client.request_lesson(slug, session).id
        record = wait(store, livelesson, {"ready", "failed"})
        wall = time.monotonic() - started
        if record.status != "ready":
            raise RuntimeError(f"{slug} failed: {record.error}")
        self.mark = time.monotonic()
        client.delete(livelesson)
        final = wait(store, livelesson, {"deleted", "failed"})
        if final.status != "deleted":
            raise RuntimeError(f"{slug} teardown failed: {final.error}")
        return record, wall, time.monotonic() - self.mark


def sizes(catalog: Path, slug: str) -> tuple[int, int]:
    lesson = load_catalog(catalog).get(slug)
    assert lesson is not None, slug
    return len(lesson.endpoints), len(lesson.connections)


def request_table(bench: Bench, proxy: ApiProxy, settings: Settings, lessons: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, slug in enumerate(lessons):
        e, c = sizes(bench.catalog, slug)
        before = proxy.mark()
        bench.one(settings, slug, f"count{i}")
        # the mark between provisioning and teardown: requests that started before the delete
        requests = proxy.requests[before:]
        cut = bench.mark
        provision = Counter(r.verb for r in requests if r.started < cut and r.resource not in SELF_REVIEWS)
        teardown = Counter(r.verb for r in requests if r.started >= cut and r.resource not in SELF_REVIEWS)
        reviews = sum(r.resource in SELF_REVIEWS for r in requests)
        rows.append({"lesson": slug, "E": e, "C": c, "provision": provision, "teardown": teardown, "self": reviews})
    return rows


def print_requests(rows: list[dict[str, Any]]) -> None:
    print("\nAPI requests per lesson, counted at the proxy (worker as its ServiceAccount)")
    head = " | ".join(f"{v:>6}" for v in VERBS)
    print(
        f"| {'lesson':<17} | {'E':>2} | {'C':>2} | {head} | {'total':>5} | {'5+E+5C':>6} | {'self':>4} "
        f"| {'teardown':>8} |"
    )
    print(
        f"|{'-' * 19}|{'-' * 4}|{'-' * 4}|" + "|".join("-" * 8 for _ in VERBS)
        + f"|{'-' * 7}|{'-' * 8}|{'-' * 6}|{'-' * 10}|"
    )  # fmt: skip
    for row in rows:
        p, t = row["provision"], row["teardown"]
        counts = " | ".join(f"{p.get(v, 0):>6}" for v in VERBS)
        model = 5 + row["E"] + 5 * row["C"]
        extra = sorted(set(p) - set(VERBS))
        note = f" (+{', '.join(f'{k} {p[k]}' for k in extra)})" if extra else ""
        total = sum(p.values())
        print(
            f"| {row['lesson']:<17} | {row['E']:>2} | {row['C']:>2} | {counts} | {total:>5} | {model:>6} "
            f"| {row['self']:>4} | {sum(t.values()):>8} |{note}"
        )
    td = rows[0]["teardown"] if rows else Counter()
    print("teardown by verb (each lesson): " + ", ".join(f"{k} {v}" for k, v in sorted(td.items())))


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


BENCH_TAINT = "lesson-scheduler.test/bench=kwok:NoSchedule"


@contextlib.contextmanager
def placed_on(where: str) -> Iterator[None]:
    """Lesson pods land on the real node (the cluster's default) or, for "kwok", on the kwok nodes: the
    real node is tainted and the kwok nodes' taint lifted for the duration."""
    if where == "real":
        yield
        return
    names = [n.split("/", 1)[1] for n in kubectl("get", "nodes", "-o", "name").split()]
    kwok = [n for n in names if n.startswith(test_cluster.NODE_PREFIX)]
    t = test_cluster.KWOK_TAINT
    taint = f"{t['key']}={t['value']}:{t['effect']}"
    kubectl("taint", "node", REAL_NODE, BENCH_TAINT)
    for node in kwok:
        kubectl("taint", "node", node, f"{taint}-")
    try:
        yield
    finally:
        for node in kwok:
            kubectl("taint", "--overwrite", "node", node, taint)
        kubectl("taint", "node", REAL_NODE, BENCH_TAINT.split("=")[0] + ":NoSchedule-")


def timing_table(bench: Bench, settings: Settings, lessons: list[str], runs: int, settle: float) -> None:
    print(
        f"\nrequest -> ready, {runs} runs each, one lesson at a time, straight to the API server, "
        f"{settle:g} s pause after each teardown; real node (real containers) and kwok nodes (emulated)"
    )
    cols = ["record p50", "record p90", "min", "max", "client p50", *STEPS, "teardown p50"]
    print("| lesson | node | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for where in ("real", "kwok"):
        with placed_on(where):
            for slug in lessons:
                timing_row(bench, settings, slug, where, runs, settle)
    print("(milliseconds; steps are p50 of each step's own duration, the rest is queueing between them)")


def timing_row(bench: Bench, settings: Settings, slug: str, where: str, runs: int, settle: float) -> None:
    records, walls, teardowns = [], [], []
    for run in range(runs):
        record, wall, teardown = bench.one(settings, slug, f"time{run}")
        time.sleep(settle)  # the node agent unwires the last lesson's pods after its namespace is gone
        records.append(record)
        walls.append(wall)
        teardowns.append(teardown)
    totals = [(r.ready_at - r.created_at).total_seconds() for r in records]  # type: ignore[operator]
    steps = []
    for step in STEPS:
        durations = [
            (r.steps[step].finished_at - r.steps[step].started_at).total_seconds()  # type: ignore[operator]
            for r in records
        ]
        steps.append(f"{ms(durations, 50):.0f}")
    cells = [
        f"{ms(totals, 50):.0f}", f"{ms(totals, 90):.0f}", f"{1000 * min(totals):.0f}", f"{1000 * max(totals):.0f}",
        f"{ms(walls, 50):.0f}", *steps, f"{ms(teardowns, 50):.0f}",
    ]  # fmt: skip
    e, c = sizes(bench.catalog, slug)
    nodes = {r.node for r in records}
    placed = ", ".join(sorted(str(n) for n in nodes))
    print(f"| {slug} (E={e}, C={c}) | {where} ({placed}) | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lessons", nargs="+", default=DEFAULT_LESSONS)
    parser.add_argument("--timed", nargs="+", default=TIMED)
    parser.add_argument("--settle", type=float, default=2.0, help="pause after each timed teardown (s)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave a cluster this run started")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the test cluster's node agent makes network namespaces)", file=sys.stderr)
        return 2
    started_cluster = cluster("status") != 0
    if started_cluster:
        print("starting the test cluster (tests/k8s/machinery/cluster.py up)", file=sys.stderr)
        if cluster("up") != 0:
            print("the test cluster did not start: run `make k8s-up` to see why", file=sys.stderr)
            return 1
    instance = "bench" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    workdir = Path(tempfile.mkdtemp(prefix="k8s-bench-"))
    catalog = workdir / "catalog"
    catalog.mkdir()
    for f in (REPO / "config" / "lessons").glob("*.yaml"):
        shutil.copy(f, catalog / f.name)
    for n in (10, 20):
        (catalog / f"ring-{n}.yaml").write_text(ring(n))
    (workdir / "redis").mkdir()
    redis_server = PrivateRedis(directory=workdir / "redis").start()
    bench = Bench(workdir, catalog, redis_server.url, instance)
    try:
        kubectl("apply", "-f", str(REPO / "config" / "k8s" / "rbac.yaml"))
        token = kubectl("create", "token", "lesson-scheduler-worker", "-n", "lesson-scheduler", "--duration=2h").strip()
        # the admission policy lets the worker make namespaces only of the instances its ConfigMap lists
        kubectl("patch", "configmap", INSTANCES_CONFIGMAP, "-n", WORKER_SA[0], "--type=merge",
                "-p", json.dumps({"data": {instance: ""}}))  # fmt: skip
        deadline = time.monotonic() + 30
        while probe_namespace(token, instance) != 201:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the admission policy does not allow instance {instance}")
            time.sleep(0.1)
        ca = STATE / "pki" / "ca.crt"
        port = json.loads((STATE / "ports.json").read_text())["apiserver"]
        direct = write_token_kubeconfig(workdir / "direct", f"https://127.0.0.1:{port}", token=token, ca=ca)
        version = json.loads(kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
        print(f"kube-apiserver {version}, {os.cpu_count()} cores, {platform.python_implementation()} "
              f"{platform.python_version()}, instance {instance}")  # fmt: skip
        with ApiProxy.for_cluster(STATE) as proxy:
            settings, _ = bench.worker(proxy.kubeconfig(workdir / "proxied", token=token, ca=ca), "counted")
            bench.one(settings, "busybox-line", "warmup")  # imports, connections, the scheduler's caches
            rows = request_table(bench, proxy, settings, args.lessons)
            bench.stop()
        print_requests(rows)
        settings, _ = bench.worker(direct, "timed")
        bench.one(settings, "busybox-line", "warmup")
        timing_table(bench, settings, args.timed, args.runs, args.settle)
    finally:
        bench.stop()
        leftover = kubectl("get", "namespaces", "-l", f"lessons.io/instance={instance}", "-o", "name").split()
        if leftover:
            print(f"removing leftovers: {' '.join(leftover)}", file=sys.stderr)
            kubectl("delete", "--wait=true", *leftover)
        with contextlib.suppress(subprocess.CalledProcessError):
            kubectl("patch", "configmap", INSTANCES_CONFIGMAP, "-n", WORKER_SA[0], "--type=merge",
                    "-p", json.dumps({"data": {instance: None}}))  # fmt: skip
        redis_server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        if started_cluster and not args.keep_cluster:
            cluster("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
