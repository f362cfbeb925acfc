"""The backend contract (workers/backends/base.py), one suite run against every backend.

Each test runs once per param of ``backend_kind`` (tests/contract/conftest.py): a new backend is done when
it passes them all. Every member of the interface is covered, grouped by its job: Provisioner (check,
apply_networks, apply_pods, observe, destroy, list), Access (exec, attach, connect, reach), Capacity
(places, rooms), Housekeeping (prune, close). Small lessons keep the suite fast: busybox-line (four hosts,
three links), and for the ways in a line of three whose h1 serves http on 8080.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.placement import place_lesson
from scheduler.core.plan import Plan, make_plan
from scheduler.services.catalog import load_catalog
from tests.contract.conftest import ROOM, MakeBackend, Squat
from tests.support.ids import new_id
from tests.support.lessons import CATALOG, names_catalog
from workers.backends.base import Backend, ExecResult
from workers.connectivity import parse_ping, ping_argv

LESSON = load_catalog(CATALOG).get("busybox-line")
DEPLOYMENT = "contract-a"
OTHER_DEPLOYMENT = "contract-b"
READY_SECONDS = 30.0


def lesson_plan(
    instance: str,
    deployment: str = DEPLOYMENT,
    *,
    lesson: ResolvedLesson | None = None,
    livelesson: str | None = None,
    placement: Mapping[str, str] | None = None,
) -> Plan:
    lesson = lesson or LESSON
    assert lesson is not None
    return make_plan(
        lesson, livelesson or new_id(), "contract", instance=instance, deployment=deployment, placement=placement
    )


def applied(make_backend: MakeBackend, instance: str, plan: Plan | None = None) -> tuple[Backend, Plan]:
    """A backend and a lesson it applied, ready."""
    backend = make_backend(DEPLOYMENT)
    plan = plan or lesson_plan(instance)
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    observation = backend.observe(plan, wait=READY_SECONDS)
    assert observation.ready, observation
    return backend, plan


@pytest.fixture
def served(make_backend: MakeBackend, instance: str, tmp_path: Path) -> tuple[Backend, Plan]:
    """A ready lesson h1 - h2 - h3 whose h1 serves http on 8080 (busybox httpd, its root /etc)."""
    lesson = load_catalog(names_catalog(tmp_path)).get("names")
    return applied(make_backend, instance, lesson_plan(instance, lesson=lesson))


def ping(backend: Backend, plan: Plan, source: str, host: str) -> ExecResult:
    """``ping`` of ``host`` from ``source``; the first reply may take a moment (ARP, a link coming up), so
    a few tries within 10 s."""
    deadline = time.monotonic() + 10
    while True:
        result = backend.exec(plan, source, ping_argv(host), timeout=5.0)
        if result.returncode == 0 or time.monotonic() >= deadline:
            return result


@contextlib.contextmanager
def stdin_from(data: bytes) -> Iterator[None]:
    """This process's file descriptor 0 reads ``data``, then its end, for the duration."""
    saved = os.dup(0)
    with tempfile.TemporaryFile() as source:
        source.write(data)
        source.seek(0)
        os.dup2(source.fileno(), 0)
        try:
            yield
        finally:
            os.dup2(saved, 0)
            os.close(saved)


def read_reply(conn: socket.socket) -> bytes:
    """What came until the pod's end closed the connection, or went quiet for a few seconds after it
    answered (a relay may keep its end open a moment longer)."""
    chunks: list[bytes] = []
    conn.settimeout(10)
    while True:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            if not chunks:
                raise
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        conn.settimeout(3)


# --- Provisioner ---------------------------------------------------------------------------------------------


def test_check_passes(make_backend: MakeBackend) -> None:
    make_backend(DEPLOYMENT).check()


def test_apply_twice_is_idempotent_and_observe_reports_every_interface_addressed(
    make_backend: MakeBackend, instance: str
) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = lesson_plan(instance)
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


def test_a_name_held_without_our_mark_is_refused_never_adopted(
    make_backend: MakeBackend, squat: Squat, instance: str
) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = lesson_plan(instance)
    untouched = squat(plan)
    with pytest.raises(PermanentError, match="refusing to use it"):
        backend.apply_networks(plan)
    assert untouched()
    with contextlib.suppress(PermanentError):  # left alone: skipped, or refused
        backend.destroy(plan.livelesson)
    assert untouched()


def test_a_lesson_of_another_deployment_is_never_adopted(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    other = make_backend(OTHER_DEPLOYMENT)
    theirs = lesson_plan(instance, OTHER_DEPLOYMENT, livelesson=plan.livelesson)  # same id, the other's plan
    with pytest.raises(PermanentError, match="refusing to use it"):
        other.apply_networks(theirs)
    assert other.list() == []
    assert backend.list() == [plan.livelesson]
    assert backend.observe(plan).ready


def test_half_made_lesson_is_listed_and_destroy_twice_removes_it(make_backend: MakeBackend, instance: str) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = lesson_plan(instance)
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


# --- Access --------------------------------------------------------------------------------------------------


def test_exec_returns_the_exit_status_and_raises_only_typed_errors(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    check = plan.checks[0]
    address = backend.observe(plan).address(check.target, check.interface)
    assert address is not None
    ok = ping(backend, plan, check.source, address.split("/")[0])
    assert ok.returncode == 0, ok
    assert parse_ping(ok.stdout).received == 1, ok.stdout
    failed = backend.exec(plan, plan.pods[0].endpoint, ["cat", "/no/such/path"], timeout=5.0)
    assert failed.returncode != 0 and "/no/such/path" in failed.stderr  # a result, not an exception


def test_exec_that_outlasts_its_timeout_is_temporary(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        backend.exec(plan, plan.pods[0].endpoint, ["sleep", "30"], timeout=2.0)
    assert time.monotonic() - started < 15


def test_exec_in_an_unknown_endpoint_or_a_pod_not_made_is_permanent(make_backend: MakeBackend, instance: str) -> None:
    backend = make_backend(DEPLOYMENT)
    plan = lesson_plan(instance)
    with pytest.raises(PermanentError, match="no-such-endpoint"):  # named, with the known ones
        backend.exec(plan, "no-such-endpoint", ["true"], timeout=5.0)
    backend.apply_networks(plan)  # networks only: no pod to run in
    with pytest.raises(PermanentError):
        backend.exec(plan, plan.pods[0].endpoint, ["true"], timeout=5.0)


def test_attach_runs_on_this_processs_stdin_and_stdout_and_returns_the_exit_status(
    make_backend: MakeBackend, instance: str, capfd: pytest.CaptureFixture[str]
) -> None:
    backend, plan = applied(make_backend, instance)
    endpoint = plan.pods[0].endpoint
    capfd.readouterr()
    with stdin_from(b"typed into the pod\n"):
        assert backend.attach(plan, endpoint, ["cat"], tty=False) == 0
    assert capfd.readouterr().out == "typed into the pod\n"
    with stdin_from(b""):
        assert backend.attach(plan, endpoint, ["false"], tty=False) == 1
    with pytest.raises(PermanentError, match="no-such-endpoint"):
        backend.attach(plan, "no-such-endpoint", ["true"], tty=False)


def test_connect_reaches_a_port_on_the_pods_loopback(served: tuple[Backend, Plan]) -> None:
    backend, plan = served
    with backend.connect(plan, "h1", 8080, timeout=10.0) as conn:
        if backend.pods == "emulated":
            assert read_reply(conn) == b""  # the stand-in accepts and closes: the pod's listener was reached
        else:
            conn.sendall(b"GET /hosts HTTP/1.0\r\n\r\n")  # httpd in h1 serves its /etc
            reply = read_reply(conn)
            assert reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n")[0], reply[:200]
            assert b"h1" in reply.partition(b"\r\n\r\n")[2], reply
    # nothing listens on 9 in h2: refused, or a connection that ends at once
    try:
        closed = backend.connect(plan, "h2", 9, timeout=10.0)
    except TemporaryError:
        pass
    else:
        with closed:
            closed.settimeout(10)
            assert closed.recv(100) == b""
    with pytest.raises(PermanentError, match="no-such-endpoint"):
        backend.connect(plan, "no-such-endpoint", 8080, timeout=10.0)


def test_reach_names_a_host_every_pod_resolves_to_the_pods_eth0_address(served: tuple[Backend, Plan]) -> None:
    backend, plan = served
    host, _, port = backend.reach(plan, plan.pod("h1"), 8080).rpartition(":")
    assert port == "8080"
    eth0 = backend.observe(plan).address("h1", "eth0")
    assert eth0 is not None
    for source in ("h2", "h3"):  # h3 has no link to h1: the name leads over eth0
        result = ping(backend, plan, source, host)
        assert result.returncode == 0, result
        assert parse_ping(result.stdout).resolved == eth0.split("/")[0], result.stdout


# --- Capacity ------------------------------------------------------------------------------------------------


def test_rooms_are_named_exactly_when_the_backend_places(make_backend: MakeBackend) -> None:
    keeping = make_backend(DEPLOYMENT)
    assert keeping.places is False and keeping.rooms() is None
    placing = make_backend(DEPLOYMENT, places=True)
    assert placing.places is True
    rooms = placing.rooms()
    assert rooms and all(0 <= r.pods <= ROOM for r in rooms), rooms


def test_a_placed_lesson_runs_on_its_nodes_and_holds_their_room_until_destroyed(
    make_backend: MakeBackend, instance: str
) -> None:
    assert LESSON is not None
    backend = make_backend(DEPLOYMENT, places=True)
    before = {r.name: r.pods for r in backend.rooms() or []}
    placement = place_lesson(LESSON, backend.rooms() or []).nodes
    plan = lesson_plan(instance, placement=placement)
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    observation = backend.observe(plan, wait=READY_SECONDS)
    assert observation.ready, observation
    assert {e: p.node for e, p in observation.pods.items()} == dict(placement)
    during = {r.name: r.pods for r in backend.rooms() or []}
    assert sum(before.values()) - sum(during.values()) == len(plan.pods), (before, during)
    backend.destroy(plan.livelesson)
    assert {r.name: r.pods for r in backend.rooms() or []} == before


# --- Housekeeping --------------------------------------------------------------------------------------------


def test_prune_keeps_what_a_live_lesson_needs_and_is_idempotent(make_backend: MakeBackend, instance: str) -> None:
    backend, plan = applied(make_backend, instance)
    assert backend.prune() is False  # a live lesson still needs everything
    assert backend.observe(plan).ready
    backend.destroy(plan.livelesson)
    backend.prune()  # may remove something (the local backend's node namespace)
    assert backend.prune() is False  # nothing left to remove
    later = lesson_plan(instance)  # what prune removed, the next lesson makes again
    backend.apply_networks(later)
    backend.apply_pods(later)
    assert backend.observe(later, wait=READY_SECONDS).ready


def test_close_releases_the_backend_and_leaves_its_lessons_as_they_are(
    make_backend: MakeBackend, instance: str
) -> None:
    backend, plan = applied(make_backend, instance)
    backend.close()
    later = make_backend(DEPLOYMENT)
    assert later.list() == [plan.livelesson]
    assert later.observe(plan).ready
