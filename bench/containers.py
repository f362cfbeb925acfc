"""Containers on the local backend: the triangle's request -> ready with real containers, beside emulated pods
and beside the floor (the same work done by hand), in one run.

Run as root: `.venv/bin/python bench/containers.py [--runs 10] [--warmup 1] [--settle 0.3]`.

Four series, interleaved (one of each per round, the order rotating from round to round), each with the same
unrecorded warm-up and the same settle pause before every measured run:

- "container": the seed triangle (config/lessons/busybox-triangle.yaml) from POST /v1/livelessons to ready
  through the API, a private redis-server and a real Celery worker (1 worker, 2 pool processes) with
  LESSON_LOCAL_PODS=container (runc, overlay over busybox built from /bin/busybox); the record's own
  ``ready_at - created_at``, as bench/pipeline.py measures it. Torn down (waited for) after each run.
- "emulated": the same with a second, separate stack (its own redis-server, API and worker) with
  LESSON_LOCAL_PODS=emulated (a stand-in process per pod).
- ../shared/bench/floor-triangle.sh: namespaces, the six CNI ADDs and the six pings by hand.
- bench/floor-containers.sh: each pod's eth0 by hand (three CNI ADDs, static IPAM: main_ms), the three
  busybox containers started by hand (overlay mount + runc run, in parallel: start_ms) from the same unpacked
  image, with the runtime config the backend itself generates, then one ``runc exec true`` and six in
  parallel, and the six pings by name over eth0 (names_ms).

The ratios: container ready / (floor-triangle + main + start + names), and emulated ready / (floor-triangle +
main), whose pings by name are not in its floor (so that ratio overstates its overhead), p50 over p50. The
per-step table (each step's own duration from the
records) shows where the container mode's extra time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from local_backend import FLOOR, floor_run  # noqa: E402
from pipeline import Pipeline, pct  # noqa: E402

from lessonctl.celery_process import CeleryProcess  # noqa: E402
from scheduler.client import Client  # noqa: E402
from scheduler.core.plan import make_plan  # noqa: E402
from scheduler.core.records import LiveLesson, new_id  # noqa: E402
from scheduler.core.steps import STEPS  # noqa: E402
from scheduler.dev.redis_server import PrivateRedis  # noqa: E402
from scheduler.services.logging import configure as configure_logging  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.lessons import triangle  # noqa: E402
from tests.support.processes import ApiServer, settings_env  # noqa: E402
from workers.backends.local.image_store import BUSYBOX, ImageStore  # noqa: E402
from workers.backends.local.runtime.runc import runtime_config  # noqa: E402

FLOOR_CONTAINERS = REPO / "bench" / "floor-containers.sh"
SERIES = ("container", "emulated", "floor-triangle", "floor-containers")


class Stack:
    """A private redis-server, the API and one Celery worker (2 pool processes) for one pod mode."""

    def __init__(self, mode: Literal["container", "emulated"], work: Path, image_dir: Path) -> None:
        self.mode = mode
        self.instance = f"bc{mode[0]}" + secrets.token_hex(3)
        self.work = work / mode
        self.state = self.work / "state"
        (self.work / "redis").mkdir(parents=True)
        self.redis = PrivateRedis(directory=self.work / "redis", password=secrets.token_hex(16))
        self.worker: CeleryProcess | None = None
        self.api: ApiServer | None = None
        self.redis.start()
        self.settings = Settings(
            redis_url=self.redis.url, instance=self.instance, state_dir=self.state, image_dir=image_dir,
            local_pods=mode, catalog=REPO / "config" / "lessons", log_format="json", log_level="WARNING",
            max_per_session=100, max_active=1000,
        )  # fmt: skip

    def start(self) -> Stack:
        env = settings_env(self.settings)
        self.worker = CeleryProcess(env=env, log_file=self.work / "worker.log", concurrency=2, name=self.instance)
        self.worker.start()
        self.api = ApiServer(self.settings, self.work / "api.log")
        self.pipeline = Pipeline(self.api, Client(self.settings))
        return self

    def run(self, session: str) -> LiveLesson:
        """One triangle: request -> ready, then torn down (waited for, by push)."""
        livelesson = self.pipeline.request(session)
        record = self.pipeline.ready(livelesson)
        self.pipeline.teardown(livelesson)
        return record

    def close(self) -> None:
        if self.api is not None:
            self.api.stop()
        if self.worker is not None:
            self.worker.stop()
        self.redis.cleanup()
        cleanup_instance(self.instance, self.state)


def floor_containers(image: Path, config: Path) -> dict[str, float]:
    proc = subprocess.run(
        ["bash", str(FLOOR_CONTAINERS), str(image), str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = dict(re.findall(r"(\w+_ms)=(\d+)", proc.stdout))
    if proc.returncode != 0 or set(found) != {"main_ms", "start_ms", "exec_ms", "exec6_ms", "names_ms"}:
        raise RuntimeError(f"floor-containers.sh failed: {proc.stdout}{proc.stderr}")
    return {k: float(v) for k, v in found.items()}


def record_ms(record: LiveLesson) -> float:
    assert record.ready_at is not None
    return (record.ready_at - record.created_at).total_seconds() * 1000


def step_ms(record: LiveLesson, step: str) -> float:
    timing = record.steps[step]
    assert timing.started_at is not None and timing.finished_at is not None
    return (timing.finished_at - timing.started_at).total_seconds() * 1000


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except FileNotFoundError:
        return "missing"
    return (out.strip().splitlines() or ["?"])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="measured runs of each series")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs of each series first")
    parser.add_argument("--settle", type=float, default=0.3, help="pause before every measured run (s)")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    if os.geteuid() != 0:
        print("needs root (network namespaces, runc, overlay mounts)", file=sys.stderr)
        return 2
    for tool in ("runc", "umoci", "skopeo", "jq", "redis-server"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    configure_logging("console", "WARNING")  # stderr, warnings only: stdout is the table
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-containers-"))
    stacks: list[Stack] = []
    try:
        # the image both the worker and the floor run: busybox built from /bin/busybox, as `make demo` does
        store = ImageStore(work / "images")
        store.build_busybox()
        image = store.unpacked(BUSYBOX)
        stacks.append(Stack("container", work, store.root).start())
        stacks.append(Stack("emulated", work, store.root).start())
        container, emulated = stacks
        # the floor's containers get the runtime config the backend generates (bb1's; jq sets the rest)
        plan = make_plan(triangle(), new_id(), "bench", instance=container.instance)
        floor_config = work / "floor-config.json"
        floor_config.write_text(json.dumps(runtime_config(plan, plan.pod("bb1"), image, work / "rootfs")))

        records: dict[str, list[LiveLesson]] = {"container": [], "emulated": []}
        floors: dict[str, list[float]] = {k: [] for k in ("total", "cni", "main", "start", "exec", "exec6", "names")}

        def one(which: str, session: str, keep: bool) -> None:
            if which in records:
                record = (container if which == "container" else emulated).run(session)
                if keep:
                    records[which].append(record)
            elif which == "floor-triangle":
                total, cni = floor_run(FLOOR)
                if keep:
                    floors["total"].append(total)
                    floors["cni"].append(cni)
            else:
                found = floor_containers(image.path, floor_config)
                if keep:
                    for key in ("main", "start", "exec", "exec6", "names"):
                        floors[key].append(found[f"{key}_ms"])

        # the same warm-up for all four: imports, each worker's pipeline, node namespaces, the page cache
        for i in range(args.warmup):
            for which in SERIES:
                one(which, f"warm{i}", keep=False)
        for i in range(args.runs):
            order = SERIES[i % 4 :] + SERIES[: i % 4]
            for which in order:
                time.sleep(args.settle)
                one(which, f"s{i}", keep=True)
        load_after = os.getloadavg()[0]
    finally:
        for stack in reversed(stacks):
            stack.close()
        shutil.rmtree(work, ignore_errors=True)

    ready = {mode: [record_ms(r) for r in rs] for mode, rs in records.items()}
    # the product also gives each pod eth0 and pings each linked pair by name: the floor does that work too
    floor_sum = [sum(parts) for parts in zip(*(floors[k] for k in ("total", "main", "start", "names")), strict=True)]
    emulated_floor = [t + m for t, m in zip(floors["total"], floors["main"], strict=True)]
    print(
        f"# bench/containers.py --runs {args.runs} --warmup {args.warmup} --settle {args.settle:g}: "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"load average {load_before:.1f} before / {load_after:.1f} after"
    )
    print(
        f"# CPython {platform.python_version()}, {tool_version(['runc', '--version'])}, "
        f"{tool_version(['umoci', '--version'])}, busybox from /bin/busybox"
    )
    print(
        f"\n{args.runs} runs of each series, interleaved (the order rotating each round), {args.warmup} warm-up "
        f"run(s) and a {args.settle:g} s settle pause before every run, all series"
    )
    print(f"| {'series':<64} | {'p50 ms':>7} | {'p95 ms':>7} | {'min ms':>7} |")
    print(f"|{'-' * 66}|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
    rows = (
        ("triangle, container pods: request -> ready (record)", ready["container"]),
        ("triangle, emulated pods: request -> ready (record)", ready["emulated"]),
        ("floor-triangle.sh total (netns, 6 CNI ADDs, 6 pings)", floors["total"]),
        ("  its six CNI ADDs (cni_ms)", floors["cni"]),
        ("floor-containers.sh main_ms (3 x eth0: CNI ADD, static IPAM)", floors["main"]),
        ("floor-containers.sh start_ms (3 x overlay + runc run, parallel)", floors["start"]),
        ("floor-containers.sh names_ms (6 pings by name, runc exec)", floors["names"]),
        ("floor-triangle + main + start + names (summed run by run)", floor_sum),
        ("floor-triangle + main (summed run by run)", emulated_floor),
        ("  one runc exec true (exec_ms)", floors["exec"]),
        ("  six runc exec true in parallel (exec6_ms)", floors["exec6"]),
    )
    for name, values in rows:
        print(f"| {name:<64} | {pct(values, 50):7.1f} | {pct(values, 95):7.1f} | {min(values):7.1f} |")

    print("\nwhere the time goes: p50 of each step's own duration (from the records), ms; the rest is queueing")
    print(f"| {'pods':<10} | " + " | ".join(f"{s:>19}" for s in STEPS) + f" | {'rest':>7} | {'ready':>7} |")
    print(f"|{'-' * 12}|" + "|".join(f"{'-' * 20}:" for _ in STEPS) + f"|{'-' * 8}:|{'-' * 8}:|")
    medians: dict[str, list[float]] = {}
    for mode, rs in records.items():
        steps = [pct([step_ms(r, s) for r in rs], 50) for s in STEPS]
        rest = pct([record_ms(r) - sum(step_ms(r, s) for s in STEPS) for r in rs], 50)
        medians[mode] = [*steps, rest, pct(ready[mode], 50)]
    medians["difference"] = [c - e for c, e in zip(medians["container"], medians["emulated"], strict=True)]
    for mode, values in medians.items():
        cells = " | ".join(f"{v:19.1f}" for v in values[: len(STEPS)])
        print(f"| {mode:<10} | {cells} | {values[-2]:7.1f} | {values[-1]:7.1f} |")
    print("(difference: container p50 - emulated p50, column by column)")

    c50, e50 = pct(ready["container"], 50), pct(ready["emulated"], 50)
    print(
        f"\ncontainer ready / (floor-triangle + main + start + names) (p50): {c50:.0f} / {pct(floor_sum, 50):.0f} = "
        f"{c50 / pct(floor_sum, 50):.2f}"
    )
    print(
        f"emulated ready / (floor-triangle + main) (p50): {e50:.0f} / {pct(emulated_floor, 50):.0f} = "
        f"{e50 / pct(emulated_floor, 50):.2f} (its pings by name are not in this floor)"
    )
    print(f"container ready / emulated ready (p50): {c50 / e50:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
