"""Scaled-out workers: throughput with 1, 2 and 4 worker processes, and with two worker hosts, in one run;
and what limits it, measured.

Run as root: `.venv/bin/python bench/scale.py [--lessons 30] [--configs 1,2,4,2x1,2x2] [--pods emulated]`.

Every configuration gets a fresh set of Celery workers on one private redis-server (started here, loopback
only). A worker is ``celery -A workers.app worker -c 1`` (:class:`lessonctl.celery_process.CeleryProcess`):
one pool process per worker, so the number of worker processes is the variable. ``N`` means N such workers
on one host (one ``LESSON_INSTANCE``, one queue ``<instance>.lessons``, one state folder, one node
namespace). ``HxW`` means H worker hosts of W workers each: each host is its own process group with its
own ``LESSON_INSTANCE`` and ``LESSON_STATE_DIR``, so its own queue, node namespace, IPAM and records; the
lessons are requested round-robin across the hosts. (Within one instance the steps of a lesson are separate
Celery tasks on one queue that any worker of the instance may take, and each needs what the previous step
left on disk and in the kernel of the host that ran it: a host is therefore an instance, see
docs/benchmarks.md.)

Workload, per configuration: ``--lessons`` copies of the seed triangle (config/lessons/busybox-triangle.yaml)
requested at once through ``scheduler.services.lifecycle.request_lesson`` (the code path behind
``POST /v1/livelessons``), each with its own session. Measured: lessons/min from the first request to the
last record's ``ready_at``; p50/p95 of each record's ``ready_at - created_at``; then all are deleted and the
teardown is waited for (until every record is ``deleted``).

What limits it, sampled over the same window (first request -> last ready):

- host CPU: busy share of all cores from /proc/stat (user+nice+system+irq+softirq; steal apart), and the
  CPU time of the worker process groups themselves (main + pool process + their reaped children: CNI
  plugins, pings), as a share of all cores, so another job's load on the machine is told apart;
- Redis: commands/s and CPU (used_cpu_sys + used_cpu_user deltas, as % of one core: Redis runs commands on
  one thread) from INFO, and the busiest commands from INFO commandstats;
- the kernel's RTNL lock: a probe process (SCHED_FIFO, so it is not kept waiting for a CPU) sets the alias
  of a bridge in a network namespace of its own (RTM_NEWLINK: rtnl_setlink runs under the RTNL lock) every
  200 ms, and its latency is compared with the same probe on the idle workers just before the run;
  "delayed" is the share of probes slower than 3 x the idle p50 + 0.2 ms (about the share of time someone
  else held the lock);
- CPU queueing: a second probe at normal priority sleeps 200 ms at a time and records how late it wakes.

Everything this makes carries a fresh prefix (``sc<hex>``) and is removed at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from stats import pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.core.records import LiveLesson  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import Catalog, configured_catalog  # noqa: E402
from scheduler.services.lifecycle import delete_lesson, request_lesson  # noqa: E402
from scheduler.services.queue import sender  # noqa: E402
from scheduler.services.state import Store  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.processes import settings_env  # noqa: E402
from workers.backends.local.net import netns, rtnetlink  # noqa: E402

LESSON = "busybox-triangle"
STEPS = ("create_networks", "schedule_pods", "wait_ready", "verify_connectivity")
PROBE_PERIOD = 0.2


# --- samplers --------------------------------------------------------------------------------------------


def cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal (jiffies)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def cpu_share(before: list[int], after: list[int]) -> tuple[float, float, float]:
    """(busy %, steal %, irq+softirq %) of all cores between two /proc/stat samples."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    user, nice, system, _idle, _iowait, irq, softirq, steal = d
    total = sum(d) or 1
    return 100 * (user + nice + system + irq + softirq) / total, 100 * steal / total, 100 * (irq + softirq) / total


def group_cpu_seconds(groups: list[int], pids: list[int]) -> tuple[float, float, float]:
    """CPU seconds (utime+stime+cutime+cstime): of every process whose process group is in ``groups`` (the
    workers), of the processes ``pids`` (redis-server, this process, the probes), and of kernel threads
    (children of kthreadd: kworkers, among them the one that cleans up deleted network namespaces)."""
    tick = os.sysconf("SC_CLK_TCK")
    workers = others = kthreads = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # after "(comm)": state ppid pgrp ... utime(14th field overall) is fields[11]
        if int(fields[2]) in groups:
            workers += sum(int(x) for x in fields[11:15])
        elif int(proc.name) in pids:
            others += sum(int(x) for x in fields[11:15])
        elif fields[1] == "2" or proc.name == "2":
            kthreads += sum(int(x) for x in fields[11:15])
    return workers / tick, others / tick, kthreads / tick


def redis_snapshot(r: redis.Redis[str]) -> dict[str, Any]:
    info = r.info("all")
    stats = {k[len("cmdstat_") :]: v for k, v in info.items() if k.startswith("cmdstat_")}
    return {
        "t": time.monotonic(),
        "commands": int(info["total_commands_processed"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "cmdstats": {k: (int(v["calls"]), int(v["usec"])) for k, v in stats.items()},
    }


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _rtnl_probe(netns_name: str, bridge: str, conn: Any, stop: Any) -> None:
    """In a child process: enter ``netns_name``, take SCHED_FIFO if allowed, and every PROBE_PERIOD set the
    alias of ``bridge`` (an RTM_NEWLINK that runs under the RTNL lock); send (monotonic time, ms) pairs."""
    fd = os.open(f"/run/netns/{netns_name}", os.O_RDONLY)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    policy = "SCHED_FIFO 10"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        policy = "nice -20 (SCHED_FIFO refused)"
        os.nice(-20)
    conn.send(policy)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    name = rtnetlink._attr(rtnetlink._IFLA_IFNAME, bridge.encode() + b"\0")
    seq = 0
    while not stop.is_set():
        seq += 1
        body = rtnetlink._ifinfo(up=True) + name + rtnetlink._attr(rtnetlink._IFLA_IFALIAS, f"probe{seq}".encode())
        msg = struct.pack("=LHHLL", 16 + len(body), rtnetlink._RTM_NEWLINK, 0x1 | 0x4, seq, 0) + body
        t0 = time.perf_counter()
        sock.send(msg)
        data = sock.recv(4096)
        elapsed = (time.perf_counter() - t0) * 1000
        error = -struct.unpack_from("=i", data, 16)[0] if struct.unpack_from("=H", data, 4)[0] == 2 else 0
        if error:
            raise OSError(error, f"probe setlink {bridge}")
        conn.send([(time.monotonic(), elapsed)])
        time.sleep(PROBE_PERIOD)
    conn.send(None)


def _wake_probe(conn: Any, stop: Any) -> None:
    """In a child process at normal priority: how late a 200 ms sleep wakes up (CPU run-queue wait), ms."""
    while not stop.is_set():
        t0 = time.perf_counter()
        time.sleep(PROBE_PERIOD)
        conn.send([(time.monotonic(), (time.perf_counter() - t0 - PROBE_PERIOD) * 1000)])
    conn.send(None)


class Probes:
    """The two probe processes, started once for the whole run; samples are kept with their times."""

    def __init__(self, netns_name: str, bridge: str) -> None:
        ctx = mp.get_context("fork")
        self.stop = ctx.Event()
        self.rtnl_conn, rtnl_child = ctx.Pipe(duplex=False)
        self.wake_conn, wake_child = ctx.Pipe(duplex=False)
        self.procs = [
            ctx.Process(target=_rtnl_probe, args=(netns_name, bridge, rtnl_child, self.stop), daemon=True),
            ctx.Process(target=_wake_probe, args=(wake_child, self.stop), daemon=True),
        ]
        for p in self.procs:
            p.start()
        self.policy = self.rtnl_conn.recv()
        self.rtnl: list[tuple[float, float]] = []
        self.wake: list[tuple[float, float]] = []

    def drain(self) -> None:
        for conn, into in ((self.rtnl_conn, self.rtnl), (self.wake_conn, self.wake)):
            while conn.poll():
                item = conn.recv()
                if item:
                    into.extend(item)

    def between(self, which: str, t0: float, t1: float) -> list[float]:
        self.drain()
        return [ms for t, ms in getattr(self, which) if t0 <= t <= t1]

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(3)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)  # our own child, by PID
                p.join(3)


# --- the workload ----------------------------------------------------------------------------------------


@dataclass
class Host:
    """One worker host: an instance with its own state folder, queue, node namespace, and W workers."""

    settings: Settings
    store: Store
    catalog: Catalog
    workers: list[CeleryProcess] = field(default_factory=list)


@dataclass
class Result:
    label: str
    hosts: int
    workers: int
    lessons: int
    window_s: float
    request_s: float
    totals_ms: list[float]
    steps_ms: dict[str, list[float]]
    teardown_s: float
    cpu_busy: float
    cpu_steal: float
    workers_cpu: float
    ours_cpu: float
    kthreads_cpu: float
    softirq_cpu: float
    redis_cmds: float
    redis_cpu: float
    top_commands: list[tuple[str, int, float]]
    rtnl_idle: list[float]
    rtnl_run: list[float]
    wake_idle: list[float]
    wake_run: list[float]
    load_before: float
    load_after: float
    failed: list[str]

    @property
    def per_min(self) -> float:
        return self.lessons / self.window_s * 60

    @property
    def others_cpu(self) -> float:
        """Busy time not charged to anything this run started, nor to kernel threads or interrupts."""
        return max(0.0, self.cpu_busy - self.ours_cpu - self.kthreads_cpu - self.softirq_cpu)

    @property
    def rtnl_delayed(self) -> float:
        threshold = 3 * pct(self.rtnl_idle, 50) + 0.2
        return 100 * sum(ms > threshold for ms in self.rtnl_run) / max(1, len(self.rtnl_run))


def wait_all(
    stores: dict[str, Store], ids: list[str], done: Callable[[LiveLesson], bool], timeout: float
) -> dict[str, LiveLesson]:
    """Poll (10 Hz, one MGET per host) until ``done`` holds for every record; the final records by id."""
    deadline = time.monotonic() + timeout
    final: dict[str, LiveLesson] = {}
    while True:
        for host, store in stores.items():
            pending = [i for i in ids if i.startswith(host + ":") and i not in final]
            for rec in store.many(i.split(":", 1)[1] for i in pending):
                if done(rec):
                    final[f"{host}:{rec.id}"] = rec
        if len(final) == len(ids):
            return final
        if time.monotonic() > deadline:
            missing = [i for i in ids if i not in final]
            raise TimeoutError(f"{len(missing)} of {len(ids)} not done after {timeout:.0f} s: {missing[:5]}")
        time.sleep(0.1)


def run_config(
    label: str,
    hosts: list[Host],
    lessons: int,
    r: redis.Redis[str],
    probes: Probes,
    idle_s: float,
    log_dir: Path,
    own_pids: list[int],
) -> Result:
    per_host = int(label.split("x")[1]) if "x" in label else int(label)
    for h, host in enumerate(hosts):
        for w in range(per_host):
            name = f"{host.settings.instance}-w{w}"
            proc = CeleryProcess(
                env=settings_env(host.settings), log_file=log_dir / f"{label}-h{h}-w{w}.log", concurrency=1, name=name
            )
            host.workers.append(proc.start())
    try:
        for host in hosts:
            app = sender(host.settings)
            for proc in host.workers:
                proc.wait_ready(app, timeout=90)
        # the idle reference: the same probes, workers up and idle, nothing else of ours running
        time.sleep(0.5)
        t_idle = time.monotonic()
        time.sleep(idle_s)
        t_idle_end = time.monotonic()
        rtnl_idle = probes.between("rtnl", t_idle, t_idle_end)
        wake_idle = probes.between("wake", t_idle, t_idle_end)

        load_before = os.getloadavg()[0]
        groups = [p.pid for host in hosts for p in host.workers if p.pid is not None]
        cpu0, redis0, group0 = cpu_times(), redis_snapshot(r), group_cpu_seconds(groups, own_pids)
        t0_mono, t0_wall = time.monotonic(), time.time()

        def request(i: int) -> str:
            host = hosts[i % len(hosts)]
            created = request_lesson(host.settings, host.store, host.catalog, LESSON, f"scale-{label}-{i}")
            return f"{host.settings.instance}:{created.record.id}"

        with ThreadPoolExecutor(max_workers=min(16, lessons)) as pool:
            ids = list(pool.map(request, range(lessons)))
        request_s = time.monotonic() - t0_mono
        stores = {host.settings.instance: host.store for host in hosts}
        final = wait_all(stores, ids, lambda rec: rec.status in ("ready", "failed"), timeout=600)
        t1_mono = time.monotonic()
        cpu1, redis1, group1 = cpu_times(), redis_snapshot(r), group_cpu_seconds(groups, own_pids)
        window_span = t1_mono - t0_mono
        failed = [f"{i}: {rec.error}" for i, rec in final.items() if rec.status != "ready"]
        ready = [rec for rec in final.values() if rec.status == "ready" and rec.ready_at is not None]
        last_ready = max(rec.ready_at.timestamp() for rec in ready if rec.ready_at) if ready else time.time()
        window_s = last_ready - t0_wall
        totals = [(rec.ready_at - rec.created_at).total_seconds() * 1000 for rec in ready if rec.ready_at]
        steps: dict[str, list[float]] = {s: [] for s in STEPS}
        for rec in ready:
            for s in STEPS:
                timing = rec.steps.get(s)
                if timing and timing.started_at and timing.finished_at:
                    steps[s].append((timing.finished_at - timing.started_at).total_seconds() * 1000)
        busy, steal, softirq = cpu_share(cpu0, cpu1)
        dt = redis1["t"] - redis0["t"]
        top = []
        for cmd, (calls, usec) in redis1["cmdstats"].items():
            c0, u0 = redis0["cmdstats"].get(cmd, (0, 0))
            if calls - c0:
                top.append((cmd, calls - c0, (usec - u0) / 1000))
        top.sort(key=lambda x: -x[1])
        rtnl_run = probes.between("rtnl", t0_mono, t1_mono)
        wake_run = probes.between("wake", t0_mono, t1_mono)

        # teardown: delete all, wait until every record is deleted
        t_del = time.monotonic()
        for i in ids:
            instance, livelesson = i.split(":", 1)
            host = next(h for h in hosts if h.settings.instance == instance)
            delete_lesson(host.settings, host.store, livelesson)
        wait_all(stores, ids, lambda rec: rec.status == "deleted", timeout=600)
        teardown_s = time.monotonic() - t_del
        load_after = os.getloadavg()[0]
        return Result(
            label=label, hosts=len(hosts), workers=per_host, lessons=lessons, window_s=window_s,
            request_s=request_s, totals_ms=totals, steps_ms=steps, teardown_s=teardown_s, cpu_busy=busy,
            cpu_steal=steal, workers_cpu=100 * (group1[0] - group0[0]) / window_span / (os.cpu_count() or 1),
            ours_cpu=100 * (group1[0] + group1[1] - group0[0] - group0[1]) / window_span / (os.cpu_count() or 1),
            kthreads_cpu=100 * (group1[2] - group0[2]) / window_span / (os.cpu_count() or 1), softirq_cpu=softirq,
            redis_cmds=(redis1["commands"] - redis0["commands"]) / dt,
            redis_cpu=100 * (redis1["cpu"] - redis0["cpu"]) / dt,
            top_commands=top[:6], rtnl_idle=rtnl_idle, rtnl_run=rtnl_run, wake_idle=wake_idle, wake_run=wake_run,
            load_before=load_before, load_after=load_after, failed=failed,
        )  # fmt: skip
    finally:
        for host in hosts:
            for proc in host.workers:
                proc.stop()
            host.workers.clear()


def by_config(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per configuration (in first-run order), the median over its rounds of the figures the verdict uses."""
    out: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(x.label for x in results):
        runs = [x for x in results if x.label == label]

        def med(fn: Callable[[Result], float], runs: list[Result] = runs) -> float:
            return statistics.median(fn(x) for x in runs)

        out[label] = {
            "rounds": len(runs), "hosts": runs[0].hosts, "procs": runs[0].hosts * runs[0].workers,
            "per_min": med(lambda x: x.per_min), "min": min(x.per_min for x in runs),
            "max": max(x.per_min for x in runs), "p50": med(lambda x: pct(x.totals_ms, 50)),
            "p95": med(lambda x: pct(x.totals_ms, 95)), "busy": med(lambda x: x.cpu_busy),
            "workers": med(lambda x: x.workers_cpu), "others": med(lambda x: x.others_cpu),
            "kthreads": med(lambda x: x.kthreads_cpu + x.softirq_cpu),
            "redis_cpu": med(lambda x: x.redis_cpu), "redis_cmds": med(lambda x: x.redis_cmds),
            "rtnl_delayed": med(lambda x: x.rtnl_delayed), "rtnl_p95": med(lambda x: pct(x.rtnl_run, 95)),
            "rtnl_idle_p95": med(lambda x: pct(x.rtnl_idle, 95)), "teardown": med(lambda x: x.teardown_s),
        }  # fmt: skip
    return out


def conclusion(results: list[Result]) -> str:
    table = by_config(results)
    one_host = sorted(((k, v) for k, v in table.items() if v["hosts"] == 1), key=lambda kv: kv[1]["procs"])
    parts = []
    if one_host:
        base = one_host[0][1]["per_min"]
        parts.append(
            "throughput (median lessons/min) "
            + ", ".join(f"{v['procs']:.0f} proc {v['per_min']:.0f} ({v['per_min'] / base:.2f}x)" for _, v in one_host)
        )
    label, top = max(table.items(), key=lambda kv: kv[1]["per_min"])
    candidates = {
        f"host CPU ({top['busy']:.0f}% busy of {os.cpu_count()} cores: workers {top['workers']:.0f}%, "
        f"other jobs {top['others']:.0f}%)": top["busy"],
        f"Redis ({top['redis_cpu']:.1f}% of its one core, {top['redis_cmds']:.0f} cmds/s)": top["redis_cpu"],
        f"RTNL lock (probe delayed in {top['rtnl_delayed']:.0f}% of samples, p95 {top['rtnl_p95']:.1f} ms "
        f"vs {top['rtnl_idle_p95']:.1f} ms idle)": top["rtnl_delayed"],
    }
    ranked = sorted(candidates.items(), key=lambda kv: -kv[1])
    (name, share), rest = ranked[0], ranked[1:]
    verdict = "saturates" if share >= 85 else "is the busiest resource but not saturated"
    parts.append(
        f"at the fastest configuration ({label}: {top['per_min']:.0f}/min) {name} {verdict}; then "
        + "; ".join(n for n, _ in rest)
    )
    return "conclusion: " + "; ".join(parts)


def print_report(results: list[Result], args: argparse.Namespace, header: str) -> None:
    print(header)
    print(
        f"\n{args.lessons} x {LESSON} requested at once per configuration, pods {args.pods}; every worker is "
        "`celery worker -c 1` (1 pool process):\nN = N workers on one host (one instance); HxW = H hosts "
        "(own LESSON_INSTANCE, LESSON_STATE_DIR, queue, node netns) x W workers\n"
    )
    cols = ("config", "procs", "lessons/min", "p50 ms", "p95 ms", "CPU busy %", "workers CPU %", "kthreads CPU %",
            "irq+softirq %", "others CPU %", "steal %", "Redis cmds/s", "Redis CPU %", "RTNL idle p50/p95 ms",
            "RTNL run p50/p95 ms", "RTNL delayed %",
            "wake late idle p95 ms", "wake late run p50/p95 ms", "teardown s", "load before/after")  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 1) + ":" for c in cols) + "|")
    for x in results:  # in the order they ran
        row = (
            x.label, str(x.hosts * x.workers), f"{x.per_min:.1f}", f"{pct(x.totals_ms, 50):.0f}",
            f"{pct(x.totals_ms, 95):.0f}", f"{x.cpu_busy:.0f}", f"{x.workers_cpu:.0f}",
            f"{x.kthreads_cpu:.0f}", f"{x.softirq_cpu:.0f}", f"{x.others_cpu:.0f}", f"{x.cpu_steal:.1f}",
            f"{x.redis_cmds:.0f}", f"{x.redis_cpu:.1f}",
            f"{pct(x.rtnl_idle, 50):.2f} / {pct(x.rtnl_idle, 95):.2f}",
            f"{pct(x.rtnl_run, 50):.2f} / {pct(x.rtnl_run, 95):.2f}", f"{x.rtnl_delayed:.0f}",
            f"{pct(x.wake_idle, 95):.1f}", f"{pct(x.wake_run, 50):.1f} / {pct(x.wake_run, 95):.1f}",
            f"{x.teardown_s:.1f}",
            f"{x.load_before:.1f} / {x.load_after:.1f}",
        )  # fmt: skip
        print("| " + " | ".join(v.rjust(len(c)) for v, c in zip(row, cols, strict=True)) + " |")
    print(
        "\n(lessons/min: first request -> last record ready_at; p50/p95: each record's ready_at - created_at; "
        "CPU busy: /proc/stat, all cores; workers CPU: the worker process groups incl. reaped children, share "
        "of all cores; kthreads: kernel threads (kworkers: namespace cleanup and more, anyone's); irq+softirq: "
        "/proc/stat (packets: pings, anyone's); others CPU: busy minus all those and everything this run started "
        "(workers, redis-server, this process, its probes), i.e. other jobs on the machine; Redis CPU: % of one "
        "core; RTNL: setlink probe every 200 ms under SCHED_FIFO, idle = "
        f"same workers before the requests; wake late: 200 ms sleeps at normal priority; probe: {args.policy})"
    )
    print("\nper step, p50 / p95 ms of each step's own duration (the rest of request -> ready is queueing):")
    cols2 = ("config", *STEPS, "sum of step p50s", "request -> ready p50", "requests sent in s")
    print("| " + " | ".join(cols2) + " |")
    print("|" + "|".join("-" * (len(c) + 1) + ":" for c in cols2) + "|")
    for x in results:
        row2 = (
            x.label,
            *(f"{pct(x.steps_ms[s], 50):.0f} / {pct(x.steps_ms[s], 95):.0f}" for s in STEPS),
            f"{sum(pct(x.steps_ms[s], 50) for s in STEPS):.0f}",
            f"{pct(x.totals_ms, 50):.0f}",
            f"{x.request_s:.2f}",
        )
        print("| " + " | ".join(v.rjust(len(c)) for v, c in zip(row2, cols2, strict=True)) + " |")
    print("\nRedis, busiest commands per configuration (calls in the window, total ms of Redis time):")
    for x in results:
        print(f"  {x.label:>4}: " + ", ".join(f"{c} {n} ({ms:.0f} ms)" for c, n, ms in x.top_commands))
    if len(results) > len(by_config(results)):
        print("\nper configuration, median over rounds (lessons/min min-max):")
        cols3 = ("config", "rounds", "procs", "lessons/min", "min-max", "p50 ms", "p95 ms", "CPU busy %",
                 "workers CPU %", "kthreads+irq %", "others CPU %", "Redis CPU %", "RTNL delayed %",
                 "teardown s")  # fmt: skip
        print("| " + " | ".join(cols3) + " |")
        print("|" + "|".join("-" * (len(c) + 1) + ":" for c in cols3) + "|")
        for label, v in by_config(results).items():
            row3 = (
                label, f"{v['rounds']:.0f}", f"{v['procs']:.0f}", f"{v['per_min']:.1f}",
                f"{v['min']:.0f}-{v['max']:.0f}", f"{v['p50']:.0f}", f"{v['p95']:.0f}", f"{v['busy']:.0f}",
                f"{v['workers']:.0f}", f"{v['kthreads']:.0f}", f"{v['others']:.0f}", f"{v['redis_cpu']:.1f}",
                f"{v['rtnl_delayed']:.0f}", f"{v['teardown']:.1f}",
            )  # fmt: skip
            print("| " + " | ".join(a.rjust(len(c)) for a, c in zip(row3, cols3, strict=True)) + " |")
    for x in results:
        if x.failed:
            print(f"FAILED in {x.label}: {len(x.failed)}: {x.failed[:3]}")
    print("\n" + conclusion(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lessons", type=int, default=30, help="triangles requested at once per configuration")
    parser.add_argument("--configs", default="1,2,4,2x1,2x2", help="N workers on one host, or HxW hosts x workers")
    parser.add_argument("--pods", choices=("emulated", "container"), default="emulated")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; odd rounds run the configs in reverse")
    parser.add_argument("--image-dir", type=Path, help="LESSON_IMAGE_DIR for --pods container (busybox in it)")
    parser.add_argument("--idle", type=float, default=4.0, help="seconds of idle probing before each run")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after each teardown (s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the local backend makes network namespaces)", file=sys.stderr)
        return 2
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    load_start = os.getloadavg()
    base = "sc" + secrets.token_hex(3)
    instances = [f"{base}a", f"{base}b"]
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (work / "redis").mkdir()
    redis_server = PrivateRedis(directory=work / "redis", password=secrets.token_hex(16))
    probe_ns, probe_bridge = f"{instances[0]}-probe", f"{base}prb"
    probes: Probes | None = None
    results: list[Result] = []
    try:
        redis_server.start()
        r: redis.Redis[str] = redis.Redis.from_url(redis_server.url, decode_responses=True)
        netns.add(probe_ns)
        rtnetlink.ensure_bridges(probe_ns, [probe_bridge], {})
        probes = Probes(probe_ns, probe_bridge)
        args.policy = probes.policy

        def host(instance: str) -> Host:
            settings = Settings(
                redis_url=redis_server.url, instance=instance, state_dir=work / instance,
                catalog=REPO / "config" / "lessons", log_format="json", log_level="WARNING",
                max_per_session=1000, max_active=10000, local_pods=args.pods, image_dir=args.image_dir,
            )  # fmt: skip
            return Host(settings, Store.from_settings(settings), configured_catalog(settings))

        order = [c for rnd in range(args.repeat) for c in (configs if rnd % 2 == 0 else configs[::-1])]
        for label in order:
            n_hosts = int(label.split("x")[0]) if "x" in label else 1
            if n_hosts > len(instances):
                parser.error(f"{label}: at most {len(instances)} hosts")
            hosts = [host(i) for i in instances[:n_hosts]]
            own = [os.getpid(), *(p.pid for p in probes.procs if p.pid)]
            own += [redis_server.proc.pid] if redis_server.proc else []
            result = run_config(label, hosts, args.lessons, r, probes, args.idle, work / "logs", own)
            results.append(result)
            print(
                f"# {label}: {result.per_min:.1f} lessons/min, p50 {pct(result.totals_ms, 50):.0f} ms, "
                f"CPU {result.cpu_busy:.0f}%, Redis {result.redis_cpu:.0f}%, teardown {result.teardown_s:.1f} s",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            time.sleep(args.settle)
        load_end = os.getloadavg()
        header = (
            f"# bench/scale.py --lessons {args.lessons} --configs {','.join(configs)} --repeat {args.repeat} "
            f"--pods {args.pods}"
            f"{' --image-dir ' + str(args.image_dir) if args.image_dir else ''}: "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load average (1/5/15 min) "
            f"{'/'.join(f'{v:.2f}' for v in load_start)} before, {'/'.join(f'{v:.2f}' for v in load_end)} after"
        )
        print_report(results, args, header)
        return 1 if any(x.failed for x in results) else 0
    finally:
        if probes is not None:
            probes.close()
        with contextlib.suppress(Exception):
            netns.delete(probe_ns)
        redis_server.cleanup()
        for instance in instances:
            cleanup_instance(instance, work / instance)
        left = sorted(n for n in netns.names() if n.startswith(base))
        if left:
            print(f"left behind (could not remove): {left}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
