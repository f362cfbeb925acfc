"""Soak under faults: many lessons over minutes while workers are SIGKILLed and Redis restarts.

Run as root: `.venv/bin/python bench/soak.py [--duration 600] [--count 200] [--json out.json]`. Prints a table.

The real stack on this host, nothing mocked: a private redis-server with AOF (as in compose.yaml), two
Celery worker processes and beat, the API (`lessonctl serve`) with a token, the local backend (network
namespaces, the real CNI plugins). Everything carries a fresh instance ("sk" + random), and everything of
that instance is removed at the end, pass or fail.

- Load: ``--count`` lessons requested through the API over the first 85 % of ``--duration``, mixed
  topologies from config/lessons, each session its own; one request in ten is sent twice (the same
  (lesson, session) must give the same live lesson). Each lesson gets an intent: kept alive by keepalives
  then deleted; kept alive then left to expire (TTL, collected by GC on beat); deleted a moment after the
  request (often mid-provisioning); or never touched (expires).
- Faults: every ``--kill-every`` MIN..MAX seconds a random worker is SIGKILLed (its whole process group:
  main process, pool and whatever they were running) and a new one started; once, at ``--redis-at`` of the
  run, Redis is stopped and started again on the same port and directory (AOF) after ``--redis-down`` s.
- ``--sentinel``: Redis is a Sentinel group instead (a primary, 2 replicas, 3 sentinels on loopback, one
  password; every process finds the primary through the sentinels, acknowledged writes wait for a replica).
  Its fault is the primary SIGKILLed (the host lost) instead of the restart: once at ``--redis-at`` of the
  run, and once more right after a request got its 202 (from that request's own thread, so the lesson is
  being created as the primary dies). Each time a replica is promoted, and the old primary is started again
  (its AOF) ``--redis-down`` s after the kill (and not before the promotion) and must come back as a
  replica. From each kill a probe POSTs a new lesson every 0.1 s (ignoring Retry-After): the time from the
  kill to its first 202 is the outage as a client sees it; the probe's lesson is then tracked as any other.
- Every API call retries a 503 (Redis away) the way a client would, after its Retry-After.
- At the end: every lesson must have settled (deleted or failed) within the drain time, then one final GC
  pass (`lessonctl gc`) runs and the leaks are counted.

Reported: lessons requested, ready, failed (with reasons), lost (a lesson that vanished, never settled, or
a duplicate request answered with another id: must be 0); request -> ready p50/p95 from the records' own
timestamps; leaked namespaces, bridges, veths, IPAM files, state folders, processes and Redis index
entries after the final GC (must be 0); worker RSS at the start and at the end, the API's too. With
``--sentinel``, for each primary kill: the failover time (kill -> a new primary that accepts writes), kill
-> first 202 (the probe's, and the load's first request sent after the kill), and whether the old primary
came back as a replica.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from stats import pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.core import naming  # noqa: E402
from scheduler.core.errors import SchedulerError  # noqa: E402
from scheduler.core.naming import bridge_name  # noqa: E402
from scheduler.dev.redis_sentinel import SentinelGroup  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.catalog import load_catalog  # noqa: E402
from scheduler.services.state import Store  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.support import netns_tools as netns  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.processes import ApiServer, settings_env  # noqa: E402
from workers.backends.local.image_store import ImageStore  # noqa: E402
from workers.backends.local.runtime.runc import Runc, cgroup_dirs, mounts_under  # noqa: E402

TOKEN = "soak-" + secrets.token_hex(8)
SETTLED = {"deleted", "failed"}
INTENTS = (("keep-then-delete", 0.40), ("keep-then-expire", 0.25), ("delete-early", 0.15), ("idle", 0.20))


@dataclass
class Config:
    duration: float = 600.0
    count: int = 200
    workers: int = 2
    concurrency: int = 2
    kill_min: float = 30.0
    kill_max: float = 60.0
    redis_at: float = 0.45  # fraction of the duration
    redis_down: float = 3.0
    ttl: int = 20
    gc_interval: int = 2
    lease: int = 10
    provision_timeout: int = 120
    seed: int | None = None
    verbose: bool = False
    sentinel: bool = False  # a Sentinel group instead of one Redis; primary SIGKILLs instead of the restart
    nodes: int = 1  # LESSON_LOCAL_NODES: with a small node_max_pods, lessons are split over nodes (VXLAN links)
    node_max_pods: int = 0  # LESSON_NODE_MAX_PODS


@dataclass
class Tracked:
    index: int
    lesson: str
    session: str
    intent: str
    hold: float
    id: str | None = None
    requested_at: float = 0.0  # monotonic, client side
    status: str = "unsent"
    ready_s: float | None = None  # record's ready_at - created_at (server clocks)
    error: str | None = None
    seen_ready: bool = False
    duplicate_ok: bool | None = None
    vanished: bool = False
    bridges: list[str] = field(default_factory=list)
    split: bool = False  # placed over several nodes (its links crossing them through VXLAN)
    probe: bool = False  # requested by the failover probe, not the planned load


def rss_kib(pid: int | None) -> int:
    """Resident memory of a process and its children (a worker's pool), in KiB."""
    if pid is None:
        return 0
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class Soak:
    def __init__(self, config: Config, log: Callable[[str], None]) -> None:
        self.cfg = config
        self.log = log
        self.rng = random.Random(config.seed)
        self.instance = "sk" + secrets.token_hex(3)
        self.work = Path(tempfile.mkdtemp(prefix="soak-"))
        self.state_dir = self.work / "state"
        (self.work / "redis").mkdir()
        self.redis: PrivateRedis | None = None
        self.group: SentinelGroup | None = None
        if config.sentinel:  # the password only in files and the processes' environment, never in the results
            self.group = SentinelGroup(password=secrets.token_hex(16), directory=self.work / "redis")
        else:
            self.redis = PrivateRedis(directory=self.work / "redis", aof=True)
        self.workers: list[CeleryProcess] = []
        self.dead: list[CeleryProcess] = []
        self.beat: CeleryProcess | None = None
        self.api: ApiServer | None = None
        self.tracked: list[Tracked] = []
        self.lock = threading.Lock()
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.pool = ThreadPoolExecutor(max_workers=12, thread_name_prefix="soak")
        self.counters: Counter[str] = Counter()
        self.faults: list[dict[str, Any]] = []
        self.stop_flag = threading.Event()
        self.t0 = 0.0
        self.rss: dict[str, Any] = {}
        self.worker_generation = 0
        self.started_at: dict[int, float] = {}
        self.unexpected: list[dict[str, Any]] = []
        self.hit_by_kill: set[tuple[int, str]] = set()  # (lesson, its status when the fault struck)
        self.hit_by_redis: set[tuple[int, str]] = set()
        self.hit_by_failover: set[tuple[int, str]] = set()
        self.accepted_posts: list[tuple[float, float]] = []  # load POSTs answered 200/202: (sent, answered), run time
        self.failover_threads: list[threading.Thread] = []
        self.kill_on_accept = threading.Event()  # armed: the next request that gets its 202 kills the primary
        self.second_kill_armed = False

    # --- the stack ---------------------------------------------------------------------------------------

    def settings(self) -> Settings:
        if self.group is not None:
            redis = self.group.settings()
        else:
            assert self.redis is not None
            redis = {"redis_url": self.redis.url}
        return Settings(
            **redis,
            instance=self.instance,
            state_dir=self.state_dir,
            catalog=REPO / "config" / "lessons",
            ttl_seconds=self.cfg.ttl,
            gc_interval_seconds=self.cfg.gc_interval,
            lease_seconds=self.cfg.lease,
            provision_timeout_seconds=self.cfg.provision_timeout,
            max_active=max(200, self.cfg.count * 2),
            local_nodes=self.cfg.nodes,
            node_max_pods=self.cfg.node_max_pods,
            log_format="json",
            log_level="WARNING",
        )

    def start_worker(self, slot: int) -> CeleryProcess:
        self.worker_generation += 1
        proc = CeleryProcess(
            env=settings_env(self.settings()),
            log_file=self.work / f"worker{slot}-{self.worker_generation}.log",
            concurrency=self.cfg.concurrency,
            name=f"{self.instance}w{self.worker_generation}",
        ).start()
        if proc.pid is not None:
            self.started_at[proc.pid] = time.monotonic()
        return proc

    def start(self) -> None:
        if self.group is not None:
            self.group.start()
        else:
            assert self.redis is not None
            self.redis.start()
        settings = self.settings()
        # the lessons' pods are busybox containers: the image, built as `make demo` builds it
        ImageStore.configured(settings.state_dir, settings.image_dir).build_busybox()
        self.workers = [self.start_worker(i) for i in range(self.cfg.workers)]
        self.beat = CeleryProcess("beat", env=settings_env(settings), log_file=self.work / "beat.log").start()
        self.api = ApiServer(settings, self.work / "api.log", LESSON_API_TOKEN=TOKEN)
        self.store = Store.from_settings(settings)
        self.http = httpx.Client(base_url=self.api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15)
        self.catalog = load_catalog(settings.catalog)

    def shutdown(self) -> None:
        self.stop_flag.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.http.close()
        if self.api is not None:
            self.api.stop()
        for proc in self.workers:
            proc.stop()
        if self.beat is not None:
            self.beat.stop()
        if self.group is not None:
            self.group.cleanup()
        if self.redis is not None:
            self.redis.cleanup()
        cleanup_instance(self.instance, self.state_dir)  # the safety net: whatever the run left, by its mark

    # --- the API, as a patient client -------------------------------------------------------------------

    def call(self, method: str, path: str, body: dict[str, str] | None = None, patience: float = 90) -> httpx.Response:
        deadline = time.monotonic() + patience
        while True:
            sent = time.monotonic()
            try:
                response = self.http.request(method, path, json=body)
            except httpx.TransportError:
                self.counters["api transport errors"] += 1
                response = None
            if response is not None and response.status_code != 503:
                if response.status_code >= 500:
                    self.counters[f"api {response.status_code}"] += 1
                if method == "POST" and path == "/v1/livelessons" and response.status_code in (200, 202):
                    self.accepted_posts.append((sent - self.t0, time.monotonic() - self.t0))
                return response
            if response is not None:
                self.counters["api 503 (retried)"] += 1
            if time.monotonic() > deadline or self.stop_flag.is_set():
                raise RuntimeError(f"{method} {path}: no answer but 503 for {patience}s")
            wait = 1.0
            if response is not None:
                with contextlib.suppress(ValueError):
                    wait = min(5.0, float(response.headers.get("retry-after", "1")))
            time.sleep(wait)

    # --- scheduling ---------------------------------------------------------------------------------------

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        with self.lock:
            self.seq += 1
            heapq.heappush(self.events, (time.monotonic() + delay, self.seq, fn))

    def run_events(self) -> None:
        while not self.stop_flag.is_set():
            with self.lock:
                due = []
                while self.events and self.events[0][0] <= time.monotonic():
                    due.append(heapq.heappop(self.events)[2])
            for fn in due:
                self.pool.submit(self.guarded, fn)
            time.sleep(0.02)

    def guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a load action that failed is counted, never silently dropped
            self.counters[f"action error: {type(exc).__name__}"] += 1
            self.log(f"  action error: {exc}")

    # --- load ---------------------------------------------------------------------------------------------

    def plan_load(self) -> None:
        lessons = sorted(self.catalog.lessons)
        window = self.cfg.duration * 0.85
        hold_max = max(3.0, min(60.0, self.cfg.duration * 0.12))
        for i in range(self.cfg.count):
            intent = self.rng.choices([n for n, _ in INTENTS], weights=[w for _, w in INTENTS])[0]
            t = Tracked(i, self.rng.choice(lessons), f"soak{i}", intent, self.rng.uniform(2.0, hold_max))
            self.tracked.append(t)
            when = (i + self.rng.random()) * window / self.cfg.count
            self.at(when, lambda t=t: self.request(t))

    def request(self, t: Tracked) -> None:
        t.requested_at = time.monotonic()
        response = self.call("POST", "/v1/livelessons", {"lesson": t.lesson, "session": t.session})
        if response.status_code not in (200, 202):
            t.status, t.error = "refused", f"{response.status_code} {response.text[:200]}"
            self.counters[f"request refused {response.status_code}"] += 1
            return
        t.id = response.json()["id"]
        t.status = response.json()["status"]
        if self.kill_on_accept.is_set():  # the lesson is being created, its 202 just sent: the primary dies now
            with self.lock:
                fire = self.kill_on_accept.is_set()
                self.kill_on_accept.clear()
            if fire:
                self.primary_failover(f"right after the 202 of {t.id}")
        if self.rng.random() < 0.1:  # the same request again: must be the same live lesson
            again = self.call("POST", "/v1/livelessons", {"lesson": t.lesson, "session": t.session})
            t.duplicate_ok = again.status_code in (200, 202) and again.json()["id"] == t.id
            self.counters["duplicate requests"] += 1
        if t.intent == "delete-early":
            self.at(self.rng.uniform(0.1, 3.0), lambda: self.delete(t))
        elif t.intent in ("keep-then-delete", "keep-then-expire"):
            self.at(self.rng.uniform(1.0, self.cfg.ttl / 3), lambda: self.keepalive(t))

    def keepalive(self, t: Tracked) -> None:
        if t.status in SETTLED or t.id is None:
            return
        if t.seen_ready and time.monotonic() > t.requested_at + (t.ready_s or 0) + t.hold:
            if t.intent == "keep-then-delete":
                self.delete(t)
            return  # keep-then-expire: stop; the TTL runs out and GC collects it
        response = self.call("POST", f"/v1/livelessons/{t.id}/keepalive")
        self.counters[f"keepalive {response.status_code}"] += 1
        self.at(self.rng.uniform(1.0, self.cfg.ttl / 3), lambda: self.keepalive(t))

    def delete(self, t: Tracked) -> None:
        if t.id is None or t.status in SETTLED:
            return
        response = self.call("DELETE", f"/v1/livelessons/{t.id}")
        self.counters[f"delete {response.status_code}"] += 1

    # --- watching -----------------------------------------------------------------------------------------

    def poll(self) -> None:
        while not self.stop_flag.is_set():
            self.poll_once()
            time.sleep(0.3)

    def poll_once(self) -> None:
        live = [t for t in self.tracked if t.id is not None and t.status not in SETTLED | {"vanished"}]
        if not live:
            return
        try:
            records = {r.id: r for r in self.store.many([t.id for t in live if t.id])}
        except SchedulerError:
            return  # Redis away: look again later
        for t in live:
            record = records.get(t.id or "")
            if record is None:
                # a settled record lives on for its TTL; an unsettled one must never disappear
                self.log(f"  LOST: {t.id} ({t.lesson}) vanished while {t.status}")
                t.vanished = True
                t.status = "vanished"
                continue
            t.status = record.status
            if not t.bridges:
                t.bridges = [bridge_name(self.instance, record.id, i) for i in range(8)]
            if record.placement and len(set(record.placement.values())) > 1:
                t.split = True
            if record.ready_at is not None and not t.seen_ready:
                t.seen_ready = True
                t.ready_s = (record.ready_at - record.created_at).total_seconds()
            if record.status == "failed" and record.error is not None:
                t.error = f"{record.error.step}: {record.error.message}"

    # --- faults -------------------------------------------------------------------------------------------

    def faults_loop(self) -> None:
        end = self.t0 + self.cfg.duration
        next_kill = time.monotonic() + self.rng.uniform(self.cfg.kill_min, self.cfg.kill_max)
        redis_at = self.t0 + self.cfg.redis_at * self.cfg.duration
        redis_done = False
        while not self.stop_flag.is_set() and time.monotonic() < end:
            self.supervise()
            now = time.monotonic()
            if not redis_done and now >= redis_at:
                if self.group is not None:
                    self.primary_failover(f"at {self.cfg.redis_at:.0%} of the run", wait_in_flight=True)
                else:
                    self.restart_redis()
                redis_done = True
            elif self.group is not None and self.arm_second_kill(now):
                pass
            elif now >= next_kill:
                self.kill_worker()
                next_kill = time.monotonic() + self.rng.uniform(self.cfg.kill_min, self.cfg.kill_max)
            time.sleep(0.1)

    def supervise(self) -> None:
        """A worker that exits without being killed is a finding: record why, and restart it as compose would."""
        for slot, proc in enumerate(self.workers):
            if not proc.alive():
                assert proc.proc is not None
                self.unexpected.append({
                    "t": round(time.monotonic() - self.t0, 1), "pid": proc.pid, "returncode": proc.proc.returncode,
                    "log_tail": proc.log_tail(40),
                })  # fmt: skip
                self.log(f"  {time.monotonic() - self.t0:6.1f}s WORKER EXITED BY ITSELF: pid {proc.pid} "
                         f"rc {proc.proc.returncode}\n{proc.log_tail(15)}")  # fmt: skip
                proc.stop()
                self.workers[slot] = self.start_worker(slot)

    def in_flight(self) -> list[Tracked]:
        """Lessons a worker is busy with: provisioning or being torn down."""
        return [t for t in self.tracked if t.status not in SETTLED | {"ready", "unsent", "refused", "vanished"}]

    def kill_worker(self) -> None:
        # a kill should land mid-step: wait (a little) for a moment when some lesson is being worked on
        deadline = time.monotonic() + 10
        while not self.in_flight() and time.monotonic() < deadline and not self.stop_flag.is_set():
            time.sleep(0.02)
        slot = self.rng.randrange(len(self.workers))
        victim = self.workers[slot]
        hit = self.in_flight()
        busy = len(hit)
        self.hit_by_kill.update((t.index, t.status) for t in hit)
        pid = victim.pid
        assert pid is not None
        rss, age = rss_kib(pid), time.monotonic() - self.started_at.get(pid, self.t0)
        os.killpg(pid, 9)  # the whole worker at once, as a crash or an OOM kill of the container would
        assert victim.proc is not None
        victim.proc.wait()
        victim.stop()  # reaps what is left of its own group; never touches anything else
        self.workers[slot] = self.start_worker(slot)
        self.faults.append({"t": round(time.monotonic() - self.t0, 1), "fault": "SIGKILL worker", "pid": pid,
                            "lessons provisioning": busy, "rss_kib": rss, "age_s": round(age)})  # fmt: skip
        self.log(f"  {time.monotonic() - self.t0:6.1f}s SIGKILL worker pid {pid} ({busy} lessons provisioning)")

    def restart_redis(self) -> None:
        deadline = time.monotonic() + 10  # as for kills: aim for a moment when lessons are being worked on
        while not self.in_flight() and time.monotonic() < deadline and not self.stop_flag.is_set():
            time.sleep(0.02)
        hit = self.in_flight()
        busy = len(hit)
        self.hit_by_redis.update((t.index, t.status) for t in hit)
        t = time.monotonic()
        assert self.redis is not None
        self.redis.stop()  # SIGTERM: redis-server flushes its AOF and exits, as `docker compose restart redis`
        time.sleep(self.cfg.redis_down)
        self.redis.start()
        down = time.monotonic() - t
        self.faults.append({"t": round(t - self.t0, 1), "fault": "Redis restart", "down_s": round(down, 1),
                            "lessons provisioning": busy})  # fmt: skip
        self.log(f"  {t - self.t0:6.1f}s Redis restarted, down {down:.1f}s ({busy} lessons provisioning)")

    # --- Sentinel: the primary lost ----------------------------------------------------------------------

    def primary_kills(self) -> list[dict[str, Any]]:
        return [f for f in self.faults if f["fault"] == "SIGKILL Redis primary"]

    def arm_second_kill(self, now: float) -> bool:
        """Arm the kill-after-202 once the first failover is over (old primary back) and the run is at its
        second point, halfway from ``--redis-at`` to the end of the load."""
        kills = self.primary_kills()
        if self.second_kill_armed or len(kills) != 1 or not kills[0].get("done"):
            return False
        if now < self.t0 + (self.cfg.redis_at + 0.85) / 2 * self.cfg.duration:
            return False
        self.second_kill_armed = True  # once: the kill it arms is recorded only a moment after it disarms
        self.kill_on_accept.set()
        return True

    def primary_failover(self, cause: str, wait_in_flight: bool = False) -> None:
        """SIGKILL the primary now; the promotion, the probe and the old primary's return run in a thread."""
        assert self.group is not None
        if wait_in_flight:  # as for the other faults: aim for a moment when lessons are being worked on
            deadline = time.monotonic() + 10
            while not self.in_flight() and time.monotonic() < deadline and not self.stop_flag.is_set():
                time.sleep(0.02)
        hit = self.in_flight()
        self.hit_by_failover.update((t.index, t.status) for t in hit)
        killed = time.monotonic()
        port = self.group.kill_primary()
        entry: dict[str, Any] = {"t": round(killed - self.t0, 2), "fault": "SIGKILL Redis primary", "cause": cause,
                                 "old_port": port, "lessons provisioning": len(hit)}  # fmt: skip
        self.faults.append(entry)
        self.log(f"  {killed - self.t0:6.1f}s SIGKILL Redis primary :{port} {cause} ({len(hit)} lessons in flight)")
        probe = threading.Thread(target=self.guarded, args=(lambda: self.probe(entry, killed),), daemon=True)
        probe.start()
        gc_lock = threading.Thread(target=self.guarded, args=(lambda: self.watch_gc_lock(entry, killed),), daemon=True)
        gc_lock.start()
        thread = threading.Thread(
            target=self.guarded, args=(lambda: self.after_kill(entry, killed, port, [probe, gc_lock]),), daemon=True
        )
        self.failover_threads.append(thread)
        thread.start()

    def after_kill(self, entry: dict[str, Any], killed: float, port: int, helpers: list[threading.Thread]) -> None:
        assert self.group is not None
        try:
            new = self.group.wait_failover(port, timeout=60)
            entry["failover_s"] = round(time.monotonic() - killed, 2)
            entry["new_port"] = new
        except SchedulerError as exc:
            entry["failover_s"] = None
            entry["failover_error"] = str(exc)
        time.sleep(max(0.0, killed + self.cfg.redis_down - time.monotonic()))
        restarted = time.monotonic()
        self.group.restart(port)
        entry["restarted_after_s"] = round(restarted - killed, 2)
        # back as a replica: ROLE says slave, of the primary the sentinels name now, and the link is up (a
        # restarted server may first follow whatever its command line named, or be a primary for a while)
        old = redis.Redis(port=port, password=self.group.password, socket_timeout=1, decode_responses=True)
        role: list[Any] = ["?"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                role = old.execute_command("ROLE")
                if role[0] == "slave" and int(role[2]) == self.group.primary_port() and role[3] == "connected":
                    entry["rejoin_s"] = round(time.monotonic() - restarted, 2)  # restart -> a connected replica
                    break
            time.sleep(0.1)
        old.close()
        entry["old_primary_role"] = role[0] if "rejoin_s" in entry else f"{role[:4]}"
        entry["old_primary_follows"] = int(role[2]) if role[0] == "slave" else None
        deadline = time.monotonic() + 30
        in_sync = False
        while time.monotonic() < deadline and not in_sync:
            with contextlib.suppress(Exception):
                in_sync = self.group.in_sync()
            if not in_sync:
                time.sleep(0.2)
        entry["replicas_in_sync"] = in_sync
        for helper in helpers:
            helper.join(130)
        entry["done"] = True
        self.log(f"  {killed - self.t0:6.1f}s failover: :{port} -> :{entry.get('new_port')} in "
                 f"{entry['failover_s']} s, first 202 after {entry.get('kill_to_first_202_s')} s, old primary "
                 f"{entry['old_primary_role']} of :{entry['old_primary_follows']} {entry.get('rejoin_s')} s after "
                 f"its restart, in sync {in_sync}")  # fmt: skip

    def watch_gc_lock(self, entry: dict[str, Any], killed: float) -> None:
        """How long GC's lock, as the new primary has it, stays held after the kill (the same token).

        A pass takes well under a second; a lock the dead primary's pass could not release (and that was
        replicated) stays for its whole timeout, and no GC pass runs meanwhile."""
        key = self.store.prefix + "lock:gc"
        token: str | None = None
        while time.monotonic() < killed + 60 and token is None and not self.stop_flag.is_set():
            with contextlib.suppress(redis.RedisError):
                token = self.store.r.get(key)
                if token is None and self.store.r.execute_command("ROLE")[0] == "master":
                    entry["gc_lock_held_after_kill_s"] = 0.0  # the new primary has no lock: GC can run
                    return
            time.sleep(0.1)
        while time.monotonic() < killed + 180 and not self.stop_flag.is_set():
            with contextlib.suppress(redis.RedisError):
                if self.store.r.get(key) != token:
                    break
            time.sleep(0.1)
        entry["gc_lock_held_after_kill_s"] = round(time.monotonic() - killed, 1)

    def probe(self, entry: dict[str, Any], killed: float) -> None:
        """POST a new lesson every 0.1 s from the kill until one gets its 202; then track it as any other."""
        lesson = sorted(self.catalog.lessons)[0]
        session = f"probe{len(self.primary_kills())}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        attempts: Counter[str] = Counter()
        with httpx.Client(base_url=self.http.base_url, headers=headers, timeout=15) as client:
            while time.monotonic() < killed + 120 and not self.stop_flag.is_set():
                sent = time.monotonic()
                try:
                    response = client.post("/v1/livelessons", json={"lesson": lesson, "session": session})
                except httpx.TransportError:
                    attempts["transport error"] += 1
                    self.counters["probe transport errors"] += 1
                    time.sleep(0.1)
                    continue
                attempts[str(response.status_code)] += 1
                if response.status_code >= 500 and response.status_code != 503:
                    self.counters[f"api {response.status_code}"] += 1
                if response.status_code in (200, 202):
                    entry["kill_to_first_202_s"] = round(time.monotonic() - killed, 2)
                    entry["probe_attempts"] = dict(attempts)
                    with self.lock:
                        t = Tracked(len(self.tracked), lesson, session, "keep-then-delete", 5.0, probe=True)
                        t.requested_at, t.id, t.status = sent, response.json()["id"], response.json()["status"]
                        self.tracked.append(t)
                    self.at(1.0, lambda t=t: self.keepalive(t))
                    return
                if response.status_code != 503:
                    entry["probe_refused"] = f"{response.status_code} {response.text[:200]}"
                    return
                time.sleep(0.1)
        entry["probe_attempts"] = dict(attempts)

    # --- memory ------------------------------------------------------------------------------------------

    def sample_rss(self, label: str) -> None:
        self.rss[label] = {
            "workers_kib": [rss_kib(w.pid) for w in self.workers],
            "api_kib": rss_kib(self.api.proc.pid if self.api else None),
        }

    # --- the run -----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.start()
        self.log(f"soak {self.instance}: {cfg.count} lessons over {cfg.duration:.0f}s, {cfg.workers} workers x "
                 f"{cfg.concurrency}, kill every {cfg.kill_min:.0f}-{cfg.kill_max:.0f}s, "
                 + ("Sentinel: primary SIGKILL at " if cfg.sentinel else "Redis restart at ")
                 + f"{cfg.redis_at:.0%}" + (" and right after a later 202" if cfg.sentinel else "")
                 + f"; work dir {self.work}")  # fmt: skip
        self.t0 = time.monotonic()
        self.plan_load()
        threads = [threading.Thread(target=f, daemon=True) for f in (self.run_events, self.poll, self.faults_loop)]
        for thread in threads:
            thread.start()
        # worker memory "at the start": once the first lessons are ready (imports done, pipeline built)
        while not self.rss and time.monotonic() < self.t0 + cfg.duration:
            if sum(t.seen_ready for t in self.tracked) >= 3:
                self.sample_rss("start")
            time.sleep(0.5)
        while time.monotonic() < self.t0 + cfg.duration:
            if cfg.verbose:
                self.progress()
            time.sleep(5)
        for thread in self.failover_threads:  # a failover still under way ends before the drain counts
            thread.join(180)
        # drain: every intent ends by itself (delete or TTL); give it the longest hold, a TTL, GC and a deadline
        drain_limit = max(60.0, cfg.duration * 0.12) + cfg.ttl + cfg.provision_timeout + 30
        drain_end = time.monotonic() + drain_limit
        while time.monotonic() < drain_end:
            pending = [t for t in self.tracked if t.status not in SETTLED | {"refused", "vanished"}]
            if not pending:
                break
            if cfg.verbose:
                self.progress()
            time.sleep(1)
        drained_s = time.monotonic() - self.t0
        self.sample_rss("end")
        unsettled = [t for t in self.tracked if t.status not in SETTLED | {"refused", "vanished"}]
        for t in unsettled:  # counted as lost below; removed here so the leak count is about the system
            self.log(f"  STUCK: {t.id} {t.lesson} in {t.status} ({t.intent})")
        self.stop_flag.set()
        for thread in threads:
            thread.join(10)
        gc_passes = self.final_gc()
        leaks = self.leaks()
        return self.report(unsettled, leaks, gc_passes, drained_s)

    def progress(self) -> None:
        counts = Counter(t.status for t in self.tracked)
        self.log(f"  {time.monotonic() - self.t0:6.1f}s " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    def final_gc(self) -> list[str]:
        """`lessonctl gc` until a pass finds nothing (the teardowns it sends run on the workers)."""
        lessonctl = Path(sys.executable).with_name("lessonctl")
        env = {**os.environ, **settings_env(self.settings())}
        passes = []
        for _ in range(5):
            proc = subprocess.run([str(lessonctl), "gc"], env=env, capture_output=True, text=True, timeout=120)
            out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
            passes.append(out[0])
            if proc.returncode == 0 and all(part.endswith("=0") for part in out[0].split()):
                break
            time.sleep(3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.store.active_count():
            time.sleep(0.5)
        return passes

    def leaks(self) -> dict[str, list[str]]:
        prefix = f"{self.instance}-"
        mark = f"lesson-scheduler/{self.instance}/"
        found: dict[str, list[str]] = {}
        found["namespaces"] = sorted(n for n in netns.names() if n.startswith(prefix))
        table = {}  # every node's links (the node namespaces go with the last lesson; anything left is a leak)
        for node in (naming.node_netns(self.instance, k) for k in range(self.cfg.nodes)):
            if netns.exists(node):
                table.update({f"{n}@{node}": link for n, link in netns.link_table(node).items()})
        found["bridges"] = sorted(n for n, link in table.items() if link.kind == "bridge")
        found["veths"] = sorted(n for n, link in table.items() if link.kind == "veth")
        found["VXLAN devices"] = sorted(n for n, link in table.items() if link.kind == "vxlan")
        ours = {b for t in self.tracked for b in t.bridges}
        root = netns.ip("-j", "-d", "link", "show")
        found["root-namespace links"] = sorted(
            link["ifname"] for link in json.loads(root or "[]")
            if link["ifname"] in ours or link.get("ifalias", "").startswith(mark)
        )  # fmt: skip
        ipam = self.state_dir / self.instance / "ipam"
        found["IPAM files"] = sorted(str(p.relative_to(ipam)) for p in ipam.rglob("*")) if ipam.exists() else []
        lessons = self.state_dir / self.instance / "lessons"
        found["state folders"] = sorted(p.name for p in lessons.iterdir()) if lessons.exists() else []
        procs = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark.encode() in (proc / "cmdline").read_bytes():
                        procs.append(proc.name)
        found["processes"] = procs
        # containers: runc's records, overlay mounts, cgroups and container layers of any of our lessons
        runc = Runc(self.state_dir / self.instance / "runc")
        found["containers"] = sorted(c.id for c in runc.states().values())
        found["mounts"] = [str(m) for m in mounts_under(self.state_dir / self.instance)]
        instance_cgroups = [d for d in cgroup_dirs(naming.cgroup_instance(self.instance)) if d.is_dir()]
        found["cgroups"] = sorted(str(p) for d in instance_cgroups for p in d.iterdir() if p.is_dir())
        found["container layers"] = sorted(str(p) for p in lessons.glob("*/containers")) if lessons.exists() else []
        r = self.store.r
        key = f"lessons:{self.instance}:"
        index = [f"active:{m}" for m in r.smembers(key + "active")]
        for name in ("expiry", "deadline", "lease"):
            index += [f"{name}:{m}" for m in r.zrange(key + name, 0, -1)]
        index += [k.removeprefix(key) for k in r.scan_iter(match=key + "pair:*")]
        index += [k.removeprefix(key) for k in r.scan_iter(match=key + "session:*") if r.scard(k)]
        found["Redis index entries"] = index
        return found

    def report(
        self, unsettled: list[Tracked], leaks: dict[str, list[str]], gc_passes: list[str], drained_s: float
    ) -> dict[str, Any]:
        accepted = [t for t in self.tracked if t.id is not None]
        ready = [t for t in accepted if t.seen_ready]
        failed = [t for t in accepted if t.status == "failed"]
        vanished = [t for t in self.tracked if t.vanished]
        duplicates_bad = [t for t in self.tracked if t.duplicate_ok is False]
        lost = len(unsettled) + len(vanished) + len(duplicates_bad)
        reasons = Counter((t.error or "?").split("\n")[0][:160] for t in failed)
        cancelled = [t for t in accepted if not t.seen_ready and t.status == "deleted"]
        ready_s = [t.ready_s for t in ready if t.ready_s is not None]
        kills = []
        for entry in self.primary_kills():
            after = [answered - entry["t"] for sent, answered in self.accepted_posts if sent >= entry["t"]]
            kills.append({
                **{k: v for k, v in entry.items() if k != "done"},
                "kill_to_first_load_202_s": round(min(after), 2) if after else None,
            })  # fmt: skip
        return {
            "instance": self.instance,
            "config": asdict(self.cfg),
            "cores": os.cpu_count(),
            "run_s": round(drained_s, 1),
            "requested": len(self.tracked),
            "probes": sum(t.probe for t in self.tracked),
            "accepted": len(accepted),
            "refused": sum(t.status == "refused" for t in self.tracked),
            "ready": len(ready),
            "split": sum(t.split for t in ready),
            "failed": len(failed),
            "failed_reasons": dict(reasons),
            "deleted_before_ready": len(cancelled),
            "lost": lost,
            "lost_detail": {
                "unsettled": [f"{t.id} {t.status}" for t in unsettled],
                "vanished": [t.id for t in vanished],
                "duplicate_mismatch": [t.id for t in duplicates_bad],
            },
            "intents": dict(Counter(t.intent for t in self.tracked)),
            "request_to_ready_s": {
                "p50": round(pct(ready_s, 50), 2),
                "p95": round(pct(ready_s, 95), 2),
                "max": round(max(ready_s), 2) if ready_s else None,
                "mean": round(statistics.fmean(ready_s), 2) if ready_s else None,
            },
            "slowest_ready_after_a_fault_s": max(
                [
                    self.tracked[i].ready_s or 0.0
                    for i, st in self.hit_by_kill | self.hit_by_redis | self.hit_by_failover
                    if st != "deleting"
                ]
                + [0.0]
            ),
            "faults": self.faults,
            "worker_kills": sum(f["fault"] == "SIGKILL worker" for f in self.faults),
            # lessons being worked on when a fault struck, and how they ended
            "in_flight_at_faults": {
                name: dict(Counter(f"{status} -> {self.outcome(self.tracked[i], status)}" for i, status in hit))
                for name, hit in (
                    ("worker kills", self.hit_by_kill),
                    *((("primary kills", self.hit_by_failover),) if self.cfg.sentinel else ()),
                    *((("Redis restart", self.hit_by_redis),) if not self.cfg.sentinel else ()),
                )
            },
            "primary_kills": kills,
            "redis_restarts": sum(f["fault"] == "Redis restart" for f in self.faults),
            "unexpected_exits": self.unexpected,
            "counters": dict(self.counters),
            "final_gc": gc_passes,
            "leaks": {k: len(v) for k, v in leaks.items()},
            "leak_detail": {k: v[:20] for k, v in leaks.items() if v},
            "leaked": sum(len(v) for v in leaks.values()),
            "rss_kib": self.rss,
            "worker_rss_at_kill_kib": [(f["rss_kib"], f["age_s"]) for f in self.faults if "rss_kib" in f],
        }

    @staticmethod
    def outcome(t: Tracked, status_then: str) -> str:
        if status_then != "deleting" and t.seen_ready:
            return "ready"
        return t.status  # torn down (deleted), failed, or still stuck


def _nodes_line(r: dict[str, Any]) -> list[str]:
    cfg = r["config"]
    if cfg.get("nodes", 1) <= 1:
        return []
    pods = cfg["node_max_pods"] or "unlimited"
    return [
        f"nodes: {cfg['nodes']} of {pods} pods each (LESSON_LOCAL_NODES, LESSON_NODE_MAX_PODS); "
        f"lessons split over nodes and ready: {r.get('split', 0)}"
    ]


def table(result: dict[str, Any]) -> str:
    r = result
    cfg = r["config"]
    mib = lambda kib: f"{kib / 1024:.0f} MiB"  # noqa: E731
    rss = r["rss_kib"]
    start, end = rss.get("start", {}), rss.get("end", {})
    at_kill = r["worker_rss_at_kill_kib"]
    oldest = max(at_kill, key=lambda pair: pair[1], default=(0, 0))
    lines = [
        f"soak: {r['requested']} lessons over {cfg['duration']:.0f}s (+ drain, {r['run_s']:.0f}s in all), "
        f"{cfg['workers']} workers x {cfg['concurrency']} + beat, {r['cores']} cores, instance {r['instance']}",
        *_nodes_line(r),
        "",
        f"{'requested':<34} {r['requested']}"
        + (f" ({r['requested'] - r['probes']} + {r['probes']} failover probes)" if r.get("probes") else ""),
        f"{'ready':<34} {r['ready']}",
        f"{'deleted before ready (by intent)':<34} {r['deleted_before_ready']}",
        f"{'failed':<34} {r['failed']}",
        *[f"{'  ' + str(n) + ' x':<34} {reason}" for reason, n in r["failed_reasons"].items()],
        f"{'refused':<34} {r['refused']}",
        f"{'LOST':<34} {r['lost']}",
        f"{'request -> ready p50 / p95 / max':<34} {r['request_to_ready_s']['p50']} s / "
        f"{r['request_to_ready_s']['p95']} s / {r['request_to_ready_s']['max']} s",
        f"{'faults':<34} {r['worker_kills']} worker SIGKILLs, "
        + (
            f"{len(r['primary_kills'])} Redis primary SIGKILLs (Sentinel)"
            if cfg.get("sentinel")
            else f"{r['redis_restarts']} Redis restart"
        ),
        *[
            f"{'  in flight at ' + name:<34} " + (", ".join(f"{n} x {what}" for what, n in outcome.items()) or "none")
            for name, outcome in r["in_flight_at_faults"].items()
        ],
        f"{'  slowest ready after a fault':<34} {r['slowest_ready_after_a_fault_s']:.1f} s",
        *[line for n, kill in enumerate(r.get("primary_kills", []), 1) for line in kill_lines(n, kill)],
        f"{'workers that exited by themselves':<34} {len(r['unexpected_exits'])}",
        f"{'API 503s retried':<34} {r['counters'].get('api 503 (retried)', 0)}",
        f"{'final GC':<34} {' | '.join(r['final_gc'])}",
        *[f"{'leaked ' + k:<34} {v}" for k, v in r["leaks"].items()],
        f"{'LEAKED':<34} {r['leaked']}",
        f"{'worker RSS start -> end':<34} {' + '.join(mib(k) for k in start.get('workers_kib', []))} -> "
        f"{' + '.join(mib(k) for k in end.get('workers_kib', []))} (end workers are the restarted ones)",
        f"{'worker RSS when killed':<34} {mib(min((k for k, _ in at_kill), default=0))} - "
        f"{mib(max((k for k, _ in at_kill), default=0))} (oldest: {mib(oldest[0])} after {oldest[1]} s)",
        f"{'API RSS start -> end':<34} {mib(start.get('api_kib', 0))} -> {mib(end.get('api_kib', 0))}",
    ]
    return "\n".join(lines)


def kill_lines(n: int, kill: dict[str, Any]) -> list[str]:
    """One primary kill: when and why, the failover, the outage as clients saw it, the old primary's return."""
    s = lambda v: "never" if v is None else f"{v} s"  # noqa: E731
    back = kill.get("old_primary_role") == "slave"
    return [
        f"{f'primary kill {n}':<34} at {kill['t']:.1f} s, {kill['cause']} ({kill['lessons provisioning']} in flight)",
        f"{'  failover (kill -> new primary)':<34} {s(kill.get('failover_s'))}",
        f"{'  kill -> first 202 (probe)':<34} {s(kill.get('kill_to_first_202_s'))}, "
        + ", ".join(f"{v} x {k}" for k, v in kill.get("probe_attempts", {}).items()),
        f"{'  kill -> first 202 (load)':<34} {s(kill.get('kill_to_first_load_202_s'))} (Retry-After honoured)",
        f"{'  GC lock held after the kill':<34} {s(kill.get('gc_lock_held_after_kill_s'))}"
        + (" (no GC pass meanwhile)" if (kill.get("gc_lock_held_after_kill_s") or 0) > 5 else ""),
        f"{'  old primary back as replica':<34} "
        + (f"yes, {kill.get('rejoin_s')} s after its restart ({kill.get('restarted_after_s')} s after the kill), "
           f"replica of :{kill.get('old_primary_follows')}" if back else f"NO (role {kill.get('old_primary_role')})")
        + ("" if kill.get("replicas_in_sync") else ", replicas NOT in sync"),
    ]  # fmt: skip


def run(config: Config, log: Callable[[str], None] = print, logs: Path | None = None) -> dict[str, Any]:
    soak = Soak(config, log)
    try:
        return soak.run()
    finally:
        soak.shutdown()
        if logs is not None:  # every process's log, for a post-mortem
            logs.mkdir(parents=True, exist_ok=True)
            for file in soak.work.rglob("*.log"):  # with the Sentinel group's servers and sentinels too
                shutil.copy(file, logs / "-".join(file.relative_to(soak.work).parts))
        shutil.rmtree(soak.work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load and faults (default 600)")
    parser.add_argument("--count", type=int, default=200, help="lessons requested (default 200)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--kill-every", nargs=2, type=float, default=[30, 60], metavar=("MIN", "MAX"))
    parser.add_argument("--redis-at", type=float, default=0.45, help="when Redis restarts, as a fraction of the run")
    parser.add_argument("--redis-down", type=float, default=3.0, help="seconds Redis stays down")
    parser.add_argument("--ttl", type=int, default=20, help="LESSON_TTL_SECONDS for the run")
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="a Sentinel group (primary, 2 replicas, 3 sentinels); the primary SIGKILLed twice",
    )
    parser.add_argument("--nodes", type=int, default=1, help="LESSON_LOCAL_NODES (default 1)")
    parser.add_argument(
        "--node-max-pods", type=int, default=0, help="LESSON_NODE_MAX_PODS: small, and lessons are split (default 0)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--logs", type=Path, default=None, help="copy every process's log here at the end")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress every few seconds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (the local backend makes network namespaces)", file=sys.stderr)
        return 2
    config = Config(
        duration=args.duration, count=args.count, workers=args.workers, concurrency=args.concurrency,
        kill_min=args.kill_every[0], kill_max=args.kill_every[1], redis_at=args.redis_at,
        redis_down=args.redis_down, ttl=args.ttl, seed=args.seed, verbose=args.verbose, sentinel=args.sentinel,
        nodes=args.nodes, node_max_pods=args.node_max_pods,
    )  # fmt: skip
    result = run(config, log=lambda line: print(line, flush=True), logs=args.logs)
    print()
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if ok(result) else 1


def ok(result: dict[str, Any]) -> bool:
    """Nothing lost or leaked, no worker exited by itself; with Sentinel, both kills measured, both back."""
    kills = result.get("primary_kills", [])
    failover_ok = not result["config"].get("sentinel") or (
        len(kills) == 2
        and all(k.get("kill_to_first_202_s") is not None and k.get("old_primary_role") == "slave" for k in kills)
    )
    return result["lost"] == 0 and result["leaked"] == 0 and not result["unexpected_exits"] and failover_ok


if __name__ == "__main__":
    sys.exit(main())
