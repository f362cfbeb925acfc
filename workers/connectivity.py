"""Connectivity checks: ``ping`` run through a backend's exec, its summary parsed. Shared by every backend.

A check first pings once at a time until the first reply (a fresh link's first packet waits for ARP), then
sends a short burst and records what the burst measured: sent, received, loss and min/avg/max round trip.
The check passes when the burst's loss is within the allowed bound. A check ``by_name`` pings the target's
name instead of its address: the name is resolved inside the source pod (its resolver: Kubernetes DNS, or the
local backend's hosts file), and the check passes only if it resolved to the target's eth0 address.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from scheduler.core.errors import SchedulerError
from scheduler.core.plan import Plan, Probe
from workers.backends.base import Backend

__all__ = ["Burst", "PingResult", "parse_ping", "ping_argv", "run_check"]

# iputils: "2 packets transmitted, 2 received, 0% packet loss"
# busybox: "2 packets transmitted, 2 packets received, 0% packet loss"
_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
# iputils: "rtt min/avg/max/mdev = 0.041/0.052/0.063/0.011 ms"; busybox: "round-trip min/avg/max = ..."
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)")
# both: "PING h2 (10.250.0.3): 56 data bytes" / "PING h2 (10.250.0.3) 56(84) bytes of data."
_RESOLVED = re.compile(r"^PING \S+ \(([\d.]+)\)", re.MULTILINE)


@dataclass(frozen=True)
class Burst:
    """How a passing link is measured: ``probes`` pings ``interval`` seconds apart, at most ``max_loss_pct``
    of them lost."""

    probes: int = 5
    interval: float = 0.02
    max_loss_pct: float = 0.0


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    rtt_min_ms: float | None = None
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    max_loss_pct: float = 0.0
    # the address ping said it sent to (a name's, once resolved), and by name the one it must be; they
    # qualify the counts rather than being measurements, so results compare by their counts and times
    resolved: str | None = field(default=None, compare=False)
    expected: str | None = field(default=None, compare=False)

    @property
    def loss_pct(self) -> float:
        return round(100.0 * (self.sent - self.received) / self.sent, 1) if self.sent else 100.0

    @property
    def ok(self) -> bool:
        if self.expected is not None and self.resolved != self.expected:
            return False
        return self.sent > 0 and self.received > 0 and self.loss_pct <= self.max_loss_pct


def parse_ping(output: str, max_loss_pct: float = 0.0, expected: str | None = None) -> PingResult:
    resolved = match.group(1) if (match := _RESOLVED.search(output)) else None
    counts = _COUNTS.search(output)
    if counts is None:
        return PingResult(0, 0, max_loss_pct=max_loss_pct, resolved=resolved, expected=expected)
    rtt = _RTT.search(output)
    low, avg, high = (float(v) for v in rtt.groups()) if rtt else (None, None, None)
    return PingResult(int(counts.group(1)), int(counts.group(2)), low, avg, high, max_loss_pct, resolved, expected)


def ping_argv(address: str, count: int = 1, wait_s: int = 1, interval: float | None = None) -> list[str]:
    # -n: no reverse DNS; -q: summary only; -W: per-reply wait, so one try is bounded
    argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait_s)]
    if interval is not None:
        argv += ["-i", f"{interval:g}"]
    return [*argv, address]


def run_check(
    backend: Backend, plan: Plan, check: Probe, address: str, *, deadline: float, burst: Burst | None = None
) -> PingResult:
    """Ping once at a time until a reply or the deadline, then measure the link with a burst. By name, a
    reply from another address than ``address`` (the name resolved elsewhere) counts as none."""
    burst = burst or Burst()
    expected = address.split("/")[0] if check.by_name else None
    host = check.target if check.by_name else address.split("/")[0]
    tries = PingResult(0, 0, max_loss_pct=burst.max_loss_pct, expected=expected)
    while True:
        try:
            out = backend.exec(plan, check.source, ping_argv(host), timeout=5.0)
            one = parse_ping(out.stdout, burst.max_loss_pct, expected)
            tries = PingResult(
                tries.sent + one.sent,
                tries.received + one.received,
                max_loss_pct=burst.max_loss_pct,
                resolved=one.resolved or tries.resolved,
                expected=expected,
            )
            if one.received and (expected is None or one.resolved == expected):
                break
        except SchedulerError as exc:
            if not exc.transient:
                raise
        if time.monotonic() >= deadline:
            return tries  # never answered: what was sent, and nothing received
        time.sleep(0.05)
    argv = ping_argv(host, count=burst.probes, interval=burst.interval)
    budget = max(5.0, burst.probes * burst.interval + 2.0)
    try:
        out = backend.exec(plan, check.source, argv, timeout=budget)
    except SchedulerError as exc:
        if not exc.transient:
            raise
        return PingResult(burst.probes, 0, max_loss_pct=burst.max_loss_pct, resolved=tries.resolved, expected=expected)
    return parse_ping(out.stdout, burst.max_loss_pct, expected)
