"""Connectivity checks: ``ping`` run through a backend's exec, its summary parsed. Shared by every backend."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from scheduler.errors import SchedulerError
from scheduler.plan import Check, Plan
from workers.backends.base import Backend

__all__ = ["PingResult", "parse_ping", "ping_argv", "run_check"]

# iputils: "2 packets transmitted, 2 received, 0% packet loss"
# busybox: "2 packets transmitted, 2 packets received, 0% packet loss"
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
# iputils: "rtt min/avg/max/mdev = 0.041/0.052/0.063/0.011 ms"; busybox: "round-trip min/avg/max = ..."
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = [\d.]+/([\d.]+)/")


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtt_avg_ms: float | None

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


def parse_ping(output: str) -> PingResult:
    counts = _COUNTS.search(output)
    if counts is None:
        return PingResult(0, 0, None)
    rtt = _RTT.search(output)
    return PingResult(int(counts.group(1)), int(counts.group(2)), float(rtt.group(1)) if rtt else None)


def ping_argv(address: str, count: int = 1, wait_s: int = 1) -> list[str]:
    # -n: no reverse DNS; -q: summary only; -W: per-reply wait, so one try is bounded
    return ["ping", "-n", "-q", "-c", str(count), "-W", str(wait_s), address]


def run_check(backend: Backend, plan: Plan, check: Check, address: str, *, deadline: float) -> PingResult:
    """Ping until a reply or the deadline: the first packet of a fresh link waits for ARP."""
    host = address.split("/")[0]
    result = PingResult(0, 0, None)
    while True:
        try:
            out = backend.exec(plan, check.source, ping_argv(host), timeout=5.0)
            result = parse_ping(out.stdout)
        except SchedulerError as exc:
            if not exc.transient:
                raise
        if result.ok or time.monotonic() >= deadline:
            return result
        time.sleep(0.05)
