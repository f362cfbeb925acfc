"""Local backend benchmark: per-phase milliseconds from nothing to every ping passing.

    sudo .venv/bin/python bench/local_backend.py [--runs 10] [--topology triangle ring10 star20]

For each topology and run: a fresh live lesson on a fresh node namespace (the instance's node namespace is
pruned between runs, so "networks" includes creating it), then

    networks  apply_networks (node namespace, bridges)
    pods      apply_pods (pod namespaces, pod processes with their listeners, CNI ADD per attachment)
    ready     observe(wait=...) until every pod is ready
    pings     every directed check of the plan, concurrently, until each passes
    total     the sum: request to "all pings pass"
    teardown  destroy + prune (not part of total)

p50 and p95 over the runs. In the same run, /work/shared/bench/floor-triangle.sh (the seed triangle done by
hand with `ip` and the CNI plugins) is timed once per triangle run, and the triangle's total is reported
as a ratio to it. Everything is created under a unique instance prefix and removed, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.core.lessons import ResolvedLesson, parse_lesson, resolve  # noqa: E402
from scheduler.core.plan import Probe, make_plan  # noqa: E402
from tests.support.ids import new_id as _id  # noqa: E402
from tests.support.leftovers import cleanup_instance  # noqa: E402
from tests.support.lessons import triangle  # noqa: E402
from workers.backends.local import LocalBackend  # noqa: E402
from workers.connectivity import run_check  # noqa: E402

FLOOR = REPO.parent / "shared" / "bench" / "floor-triangle.sh"
PHASES = ("networks", "pods", "ready", "pings", "total", "teardown")


def _endpoint(name: str) -> str:
    return f"- name: {name}\n  image: busybox\n  command: [sleep, infinity]\n  additionalPorts: [22]\n"


def _lesson(slug: str, endpoints: list[str], links: list[tuple[str, str]]) -> ResolvedLesson:
    text = f"slug: {slug}\nname: {slug}\ncategory: fundamentals\ntier: prod\ndescription: bench\n"
    text += "endpoints:\n" + "".join(_endpoint(e) for e in endpoints)
    text += "connections:\n" + "".join(f"- {{a: {a}, b: {b}}}\n" for a, b in links)
    return resolve(parse_lesson(text, f"<{slug}>"), f"<{slug}>", None)


def ring(n: int) -> ResolvedLesson:
    names = [f"r{i}" for i in range(1, n + 1)]
    return _lesson(f"ring{n}", names, [(names[i], names[(i + 1) % n]) for i in range(n)])


def star(n: int) -> ResolvedLesson:
    spokes = [f"s{i}" for i in range(1, n + 1)]
    return _lesson(f"star{n}", ["hub", *spokes], [("hub", s) for s in spokes])


def topologies() -> dict[str, Callable[[], ResolvedLesson]]:
    return {"triangle": triangle, "ring10": lambda: ring(10), "star20": lambda: star(20)}


def one_run(backend: LocalBackend, lesson: ResolvedLesson) -> dict[str, float]:
    plan = make_plan(lesson, _id(), "bench", instance=backend.instance)
    t0 = time.perf_counter()
    backend.apply_networks(plan)
    t1 = time.perf_counter()
    backend.apply_pods(plan)
    t2 = time.perf_counter()
    obs = backend.observe(plan, wait=10)
    t3 = time.perf_counter()
    if not obs.ready:
        raise RuntimeError(f"not ready: {[p.reason for p in obs.pods.values() if not p.ready]}")
    deadline = time.monotonic() + 10
    checks = list(plan.checks)

    def check(c: Probe) -> bool:
        address = obs.address(c.target, c.interface)
        assert address is not None
        return run_check(backend, plan, c, address, deadline=deadline).ok

    with ThreadPoolExecutor(max_workers=min(32, len(checks))) as pool:
        oks = list(pool.map(check, checks))
    t4 = time.perf_counter()
    if not all(oks):
        raise RuntimeError(f"pings failed: {[c for c, ok in zip(checks, oks, strict=True) if not ok]}")
    backend.destroy(plan.livelesson)
    backend.prune()
    t5 = time.perf_counter()
    ms = [(b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4), (t4, t5))]
    return dict(zip(PHASES, ms, strict=True))


def floor_run(script: Path) -> tuple[float, float]:
    """(total_ms, cni_ms) of one run of the hand-made triangle."""
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, check=False)
    total = re.search(r"total_ms=(\d+)", proc.stdout)
    cni = re.search(r"cni_ms=(\d+)", proc.stdout)
    if proc.returncode != 0 or total is None or cni is None:
        raise RuntimeError(f"floor-triangle.sh failed: {proc.stdout}{proc.stderr}")
    return float(total.group(1)), float(cni.group(1))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    # nearest-rank with linear interpolation (statistics.quantiles' "inclusive" method)
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def cleanup(instance: str, state_dir: Path) -> None:
    cleanup_instance(instance, state_dir)  # the tests' sweep: destroy, then anything with the mark
    shutil.rmtree(state_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded runs per topology first")
    parser.add_argument("--topology", nargs="+", default=["triangle", "ring10", "star20"])
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every sample and the summary to this file")
    parser.add_argument("--floor", type=Path, default=FLOOR, help="the hand-made triangle to compare with")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="seconds of pause before each measured run, so the kernel's asynchronous cleanup of the previous "
        "run's namespaces (which holds the RTNL lock) is not billed to the next one",
    )
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (p95 over fewer runs means nothing)")
    if os.geteuid() != 0:
        print("needs root (network namespaces, CNI plugins)", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    instance = "bn" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    state_dir = Path(tempfile.mkdtemp(prefix="lesson-bench-"))
    backend = LocalBackend(instance=instance, state_dir=state_dir, pods="emulated")  # bench/containers.py: containers
    known = topologies()
    results: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, str] = {}
    floors: list[float] = []
    floor_cni: list[float] = []
    try:
        for name in args.topology:
            lesson = known[name]()
            sizes[name] = f"{len(lesson.endpoints)} pods, {len(lesson.connections)} links"
            for _ in range(args.warmup):
                one_run(backend, lesson)
            series: dict[str, list[float]] = {p: [] for p in PHASES}
            for _ in range(args.runs):
                time.sleep(args.settle)
                for phase, value in one_run(backend, lesson).items():
                    series[phase].append(value)
                if name == "triangle" and not args.no_floor:
                    time.sleep(args.settle)
                    total, cni = floor_run(args.floor)
                    floors.append(total)
                    floor_cni.append(cni)
            results[name] = series
    finally:
        cleanup(instance, state_dir)

    load_after = os.getloadavg()
    print(
        f"# local backend, {args.runs} runs each, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"Linux {platform.release()}, load average {load_before[0]:.1f} before / {load_after[0]:.1f} after"
    )
    header = f"| {'topology':<28} | " + " | ".join(f"{p:>17}" for p in PHASES) + " |"
    print(header)
    print("|" + "-" * 30 + "|" + "|".join("-" * 19 for _ in PHASES) + "|")
    print(f"| {'':<28} | " + " | ".join(f"{'p50 / p95 ms':>17}" for _ in PHASES) + " |")
    for name, series in results.items():
        cells = [f"{pct(series[p], 0.5):7.1f} / {pct(series[p], 0.95):7.1f}" for p in PHASES]
        print(f"| {name + ' (' + sizes[name] + ')':<28} | " + " | ".join(cells) + " |")
    if floors:
        floor50 = pct(floors, 0.5)
        tri50 = pct(results["triangle"]["total"], 0.5)
        print(
            f"\nfloor-triangle.sh total: p50 {floor50:.0f} ms, p95 {pct(floors, 0.95):.0f} ms "
            f"(same run, {len(floors)} runs); its six CNI ADDs (cni_ms): p50 {pct(floor_cni, 0.5):.0f} ms"
        )
        print(f"triangle total / floor (p50): {tri50 / floor50:.2f}")
    if "triangle" in results:
        tri50 = pct(results["triangle"]["total"], 0.5)
        print(f"goal: triangle total p50 < 300 ms: {'met' if tri50 < 300 else 'NOT met'} ({tri50:.0f} ms)")
    if args.json:
        doc = {
            "date": datetime.now(UTC).isoformat(),
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "load_average": [load_before[0], load_after[0]],
            "runs": args.runs,
            "topologies": {
                name: {
                    "size": sizes[name],
                    "samples_ms": series,
                    "p50_ms": {p: pct(series[p], 0.5) for p in PHASES},
                    "p95_ms": {p: pct(series[p], 0.95) for p in PHASES},
                }
                for name, series in results.items()
            },
            "floor_total_ms": floors,
            "floor_cni_ms": floor_cni,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
