"""A live lesson on the local backend, driven straight through the backend (no queue): bring it up, wait
until ready, and run every check of its plan."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from scheduler.core.plan import Plan, Probe
from workers.backends.base import Backend, Observation
from workers.connectivity import PingResult, run_check


def up(backend: Backend, plan: Plan, wait: float = 10.0) -> Observation:
    """Apply the plan's networks and pods; the observation once every pod is ready (asserted)."""
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    return ready(backend, plan, wait)


def ready(backend: Backend, plan: Plan, wait: float = 10.0) -> Observation:
    obs = backend.observe(plan, wait=wait)
    assert obs.ready, {e: p.reason for e, p in obs.pods.items() if not p.ready}
    return obs


def ping_all(backend: Backend, plan: Plan, obs: Observation, budget: float = 5.0) -> dict[Probe, PingResult]:
    """Every check of the plan, 16 at a time, each link's first reply awaited until ``budget`` s from now."""
    deadline = time.monotonic() + budget

    def one(check: Probe) -> PingResult:
        address = obs.address(check.target, check.interface)
        assert address is not None, check
        return run_check(backend, plan, check, address, deadline=deadline)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(plan.checks)))) as pool:
        return dict(zip(plan.checks, pool.map(one, plan.checks), strict=True))
