"""The backend contract (workers/backends/base.py), one suite run against every backend.

Each test runs once per param of ``make_backend`` (tests/contract/conftest.py): a new backend is done when
it passes them all. One small lesson (busybox-line: four hosts, three links) keeps the suite fast.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from scheduler.core.errors import PermanentError
from scheduler.core.plan import Plan, make_plan
from scheduler.services.catalog import load_catalog
from tests.contract.conftest import MakeBackend
from tests.support.ids import new_id
from tests.support.lessons import CATALOG
from workers.backends.base import Backend, ExecResult

LESSON = load_catalog(CATALOG).get("busybox-line")
DEPLOYMENT = "contract-a"
OTHER_DEPLOYMENT = "contract-b"
READY_SECONDS = 30.0


def plan_for(instance: str, deployment: str = DEPLOYMENT) -> Plan:
    assert LESSON is not None
    return make_plan(LESSON, new_id(), "contract", instance=instance, deployment=deployment)


def applied(make_backend: MakeBackend, instance: str) -> tuple[Backend, Plan]:
    """A backend and a lesson it applied, ready."""
    backend = make_backend(DEPLOYMENT)
    plan = plan_for(instance)
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    assert backend.observe(plan, wait=READY_SECONDS).ready
    return backend, plan


def ping_peer(backend: Backend, plan: Plan) -> ExecResult:
    """``ping`` from the first check's source to its target's address; the first reply may take a moment
    (ARP, a link coming up), so a few tries within 10 s."""
    check = plan.checks[0]
    address = backend.observe(plan).address(check.target, check.interface)
    assert address is not None
    argv = ["ping", "-n", "-q", "-c", "1", "-W", "1", address.split("/")[0]]
    deadline = time.monotonic() + 10
    while True:
        result = backend.exec(plan, check.source, argv, timeout=5.0)
        if result.returncode == 0 or time.monotonic() >= deadline:
            return result


def test_check_passes(make_backend: MakeBackend) -> None:
    make_backend(DEPLOYMENT).check()


def test_apply_twice_is_idempotent_and_observe_reports_every_interface_addressed(
    make_backend: MakeBackend, instance: str
) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = plan_for(instance)
    for _ in range(2):
        backend.apply_networks(plan)
    not_yet = backend.observe(plan)  # no pods yet: reported, never raised
    assert not not_yet.ready and all(not p.ready and p.reason for p in not_yet.pods.values())
    for _ in range(2):
        backend.apply_pods(plan)
    observation = backend.observe(plan, wait=READY_SECONDS)
    assert observation.ready, observation
    assert set(observation.pods) == {p.endpoint for p in plan.pods}
    for pod in plan.pods:
        status = observation.pods[pod.endpoint]
        # eth0 on the main network first (the seed's), then the links' interfaces in plan order
        assert [i.name for i in status.interfaces] == ["eth0", *[i.name for i in pod.interfaces]]
        assert [i.network for i in status.interfaces] == ["main", *[i.network for i in pod.interfaces]]
        assert all(i.address for i in status.interfaces), status
    # applying again once ready changes nothing
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    assert backend.observe(plan, wait=READY_SECONDS).ready
    assert backend.list() == [plan.livelesson]


def test_exec_returns_the_exit_status_and_raises_only_typed_errors(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    ok = ping_peer(backend, plan)
    assert ok.returncode == 0, ok
    failed = backend.exec(plan, plan.pods[0].endpoint, ["ls", "/no/such/path"], timeout=5.0)
    assert failed.returncode != 0  # a result, not an exception


def test_exec_in_an_unknown_endpoint_is_permanent(make_backend: MakeBackend, instance: str) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = plan_for(instance)
    with pytest.raises(PermanentError):
        backend.exec(plan, "no-such-endpoint", ["true"], timeout=5.0)  # named, with the known ones


def test_half_made_lesson_is_listed_and_destroy_twice_removes_it(make_backend: MakeBackend, instance: str) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = plan_for(instance)
    backend.apply_networks(plan)  # networks only: a crash before the pods step
    assert plan.livelesson in backend.list()
    backend.destroy(plan.livelesson)
    backend.destroy(plan.livelesson)
    assert plan.livelesson not in backend.list()


def test_destroy_twice_removes_a_whole_lesson(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    backend.destroy(plan.livelesson)
    backend.destroy(plan.livelesson)
    assert backend.list() == []


def test_destroy_of_an_id_never_applied_is_a_noop(make_backend: MakeBackend) -> None:
    backend = make_backend(DEPLOYMENT)
    backend.destroy(new_id())
    assert backend.list() == []


def test_another_deployment_neither_lists_nor_destroys_the_lesson(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    other = make_backend(OTHER_DEPLOYMENT)
    assert other.list() == []
    with contextlib.suppress(PermanentError):  # left alone: a no-op, or refused
        other.destroy(plan.livelesson)
    assert backend.list() == [plan.livelesson]
    assert backend.observe(plan).ready
