"""The local backend for real: network namespaces, the CNI bridge and host-local plugins, real pings.

Needs root (skips by hand without it; fails under CI=true). Everything is created under the unique
``instance`` fixture's prefix and removed after each test, pass or fail. What is checked is read back
with iproute2 and /proc, independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from scheduler.core import naming
from scheduler.core.errors import PrerequisiteMissing
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.plan import Plan, make_plan
from scheduler.services.catalog import load_paths
from tests.support import netns_tools as netns
from tests.support.faults import REAL_CNI
from tests.support.faults import cni_dir_with as fake_cni
from tests.support.ids import new_id
from tests.support.leftovers import marked_processes
from tests.support.lessons import CURRICULUM, REPO, TRIANGLE, triangle
from tests.support.local_lessons import ping_all, ready, up
from tests.support.prereqs import needs
from workers.backends.base import Observation
from workers.backends.local import LocalBackend
from workers.backends.local.net import attachments as attach

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root")]

T = TypeVar("T")
R = TypeVar("R")


# --- helpers ---------------------------------------------------------------------------------------------


def concurrently(fn: Callable[[T], R], items: list[T]) -> list[R]:
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(items)))) as pool:
        return list(pool.map(fn, items))


def backend_plan(backend: LocalBackend, lesson: ResolvedLesson | None = None, livelesson: str | None = None) -> Plan:
    return make_plan(lesson or triangle(), livelesson or new_id(), "s1", instance=backend.instance)


@pytest.fixture
def backend(instance: str, tmp_path: Path) -> LocalBackend:
    # the state dir the instance fixture sweeps after the test
    return LocalBackend(instance=instance, state_dir=tmp_path / "state", pods="emulated")


def assert_all_pings_pass(backend: LocalBackend, plan: Plan, obs: Observation | None = None) -> None:
    results = ping_all(backend, plan, obs or ready(backend, plan))
    assert len([c for c in results if not c.by_name]) == 2 * len(plan.networks)
    assert {(c.source, c.target) for c in results if c.by_name} == {(c.source, c.target) for c in results}
    failing = {f"{c.source}->{c.target} over {c.network}": r for c, r in results.items() if not r.ok}
    assert not failing, failing


def ip_json(*args: str, ns: str) -> list[dict]:  # type: ignore[type-arg]
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")  # type: ignore[no-any-return]


def pod_addresses(ns: str) -> dict[str, list[ipaddress.IPv4Interface]]:
    """Interface -> IPv4 addresses inside the namespace, from `ip -j addr` (lo left out)."""
    return {
        itf["ifname"]: [
            ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}") for a in itf["addr_info"] if a["family"] == "inet"
        ]
        for itf in ip_json("addr", ns=ns)
        if itf["ifname"] != "lo"
    }


def ping(backend: LocalBackend, plan: Plan, source: str, address: str, count: int = 1) -> bool:
    """One real ping from inside ``source``'s pod; True if every packet came back."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", address]
    return backend.exec(plan, source, argv, timeout=10).returncode == 0


def state_paths(state_dir: Path) -> set[str]:
    return {str(p.relative_to(state_dir)) for p in state_dir.rglob("*")} if state_dir.exists() else set()


def snapshot(backend: LocalBackend, livelesson: str) -> dict[str, set[str]]:
    """What exists on the host, listed independently of the backend: namespaces, node links, files, processes."""
    node = backend.node_netns
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {
        "netns": {
            line.split()[0] for line in listed.splitlines() if line.startswith(f"{backend.instance}-{livelesson}")
        },
        "node links": {link["ifname"] for link in ip_json("link", ns=node)} if netns.exists(node) else set(),
        "state": state_paths(backend.root),
        "processes": {str(pid) for pid in marked_processes(f"{backend.mark(livelesson)}/")},
    }


def leases(backend: LocalBackend, plan: Plan) -> dict[str, list[str]]:
    """host-local's allocations per network: one file per address, named by the address."""
    out = {}
    for n in plan.networks:
        folder = backend.ipam_dir / n.cni_name
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        out[n.nad] = [f for f in files if f.count(".") == 3]
    return out


def assert_converged(backend: LocalBackend, plan: Plan) -> None:
    """Ready, every ping passes, and nothing stale: exact interfaces, one lease each, no orphan veths."""
    obs = ready(backend, plan)
    assert_all_pings_pass(backend, plan, obs)
    for pod in plan.pods:
        found = pod_addresses(pod.netns)
        assert sorted(found) == sorted(i.name for i in pod.attachments), pod.endpoint
        for itf in pod.attachments:
            assert len(found[itf.name]) == 1 and found[itf.name][0] in plan.network(itf.network).subnet, found
        assert [str(a) for a in found["eth0"]] == [pod.main_address]
    assert all(len(v) == 2 for v in leases(backend, plan).values()), leases(backend, plan)
    node_links = ip_json("-d", "link", ns=backend.node_netns)
    assert plan.main is not None
    bridges = {n.bridge for n in plan.networks} | {plan.main.bridge}
    ports = [link for link in node_links if link.get("master") in bridges]
    assert len(ports) == sum(len(p.attachments) for p in plan.pods), ports
    orphans = [link["ifname"] for link in node_links if link["ifname"].startswith("veth") and not link.get("master")]
    assert not orphans


SCAFFOLD = {"ipam", "lessons", "locks", "node.lock"}  # the instance's own folders, not a live lesson's


def assert_nothing_left(backend: LocalBackend, plan: Plan, before: dict[str, set[str]]) -> None:
    """Compared with ``before`` (taken before the live lesson was applied), nothing of it remains."""
    after = snapshot(backend, plan.livelesson)
    assert after["netns"] == set()
    assert after["processes"] == set()
    assert after["node links"] - {"lo"} == before["node links"] - {"lo"}  # lo: the node namespace stays
    assert after["state"] - before["state"] <= SCAFFOLD
    owned = [plan.livelesson, *(n.cni_name for n in plan.networks)]
    assert not [path for path in after["state"] if any(o in path for o in owned)]


# --- the seed triangle -----------------------------------------------------------------------------------

EXPECTED_SUBNETS = {  # the seed's 12-net, 23-net and 31-net, in interface order
    "bb1": {"net1": "10.10.12.0/24", "net2": "10.10.31.0/24"},
    "bb2": {"net1": "10.10.12.0/24", "net2": "10.10.23.0/24"},
    "bb3": {"net1": "10.10.23.0/24", "net2": "10.10.31.0/24"},
}


def test_triangle_comes_up(backend: LocalBackend) -> None:
    plan = backend_plan(backend)
    obs = up(backend, plan)

    for pod in plan.pods:
        found = pod_addresses(pod.netns)  # inside the pod's namespace, besides lo
        assert sorted(found) == ["eth0", "net1", "net2"], (pod.endpoint, found)
        assert [str(a) for a in found["eth0"]] == [pod.main_address]  # the seed's main network
        assert obs.address(pod.endpoint, "eth0") == pod.main_address
        for ifname, subnet in EXPECTED_SUBNETS[pod.endpoint].items():
            assert len(found[ifname]) == 1
            assert found[ifname][0].network == ipaddress.IPv4Network(subnet), (pod.endpoint, ifname, found)
            assert obs.address(pod.endpoint, ifname) == str(found[ifname][0])  # observe reports what is there
        assert all(link["operstate"] in ("UP", "UNKNOWN") for link in ip_json("link", ns=pod.netns))

    # one bridge per link in the node namespace, up, carrying this live lesson's mark
    node_links = {link["ifname"]: link for link in ip_json("-d", "link", ns=backend.node_netns)}
    for n in plan.networks:
        bridge = node_links[n.bridge]
        assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
        assert bridge["ifalias"] == f"{backend.mark(plan.livelesson)}/{n.index}"
        assert len([link for link in node_links.values() if link.get("master") == n.bridge]) == 2
    # and the live lesson's main bridge, every pod's eth0 on it
    assert plan.main is not None
    assert node_links[plan.main.bridge]["ifalias"] == f"{backend.mark(plan.livelesson)}/main"
    assert len([link for link in node_links.values() if link.get("master") == plan.main.bridge]) == 3

    results = ping_all(backend, plan, obs)
    assert len(results) == 12  # each direction of each link by address, and each linked pair by name
    assert {(c.source, c.target) for c in results} == {
        ("bb1", "bb2"), ("bb2", "bb1"), ("bb2", "bb3"), ("bb3", "bb2"), ("bb3", "bb1"), ("bb1", "bb3"),
    }  # fmt: skip
    assert all(r.ok and r.rtt_avg_ms is not None for r in results.values()), results

    # bb1 is on 12-net and 31-net only: no route to 23-net, so bb3's 23-net address is unreachable
    bb1 = plan.pod("bb1").netns
    assert not [r for r in ip_json("route", ns=bb1) if r["dst"].startswith("10.10.23.")]
    assert not [r for r in ip_json("route", ns=bb1) if r["dst"] == "default"]
    route = subprocess.run(["ip", "-n", bb1, "route", "get", "10.10.23.2"], capture_output=True, text=True)
    assert route.returncode != 0 and "unreachable" in route.stderr.lower(), route
    bb3_on_23 = obs.address("bb3", "net1")
    assert bb3_on_23 is not None and bb3_on_23.startswith("10.10.23.")
    assert not ping(backend, plan, "bb1", bb3_on_23.split("/")[0])


def test_pod_processes_listen_on_declared_ports(backend: LocalBackend) -> None:
    plan = backend_plan(backend)
    up(backend, plan)
    for pod in plan.pods:
        listening = subprocess.run(["ip", "netns", "exec", pod.netns, "ss", "-Htln"], capture_output=True, text=True)
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.stdout.splitlines()}
        assert ports == {22, 830}, pod.endpoint
        pids = subprocess.run(["ip", "netns", "pids", pod.netns], capture_output=True, text=True).stdout.split()
        assert len(pids) == 1  # one long-running process per pod, inside its namespace
        cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert f"{backend.mark(plan.livelesson)}/{pod.endpoint}".encode() in cmdline


# --- isolation -------------------------------------------------------------------------------------------


def test_two_live_lessons_with_the_same_subnets_cannot_reach_each_other(backend: LocalBackend) -> None:
    a, b = backend_plan(backend), backend_plan(backend)
    obs = {a.livelesson: up(backend, a), b.livelesson: up(backend, b)}
    assert_all_pings_pass(backend, a, obs[a.livelesson])
    assert_all_pings_pass(backend, b, obs[b.livelesson])
    assert {n.bridge for n in a.networks}.isdisjoint(n.bridge for n in b.networks)

    # Both lessons hold the very same addresses, so a plain ping proves nothing either way. Give each
    # lesson's far end of every link an extra address of its own (same subnet), then ping it from the near
    # end: the owner's ping must pass (the address is live), the other lesson's must fail (isolated).
    # The same for the main network (eth0): bb2's eth0, pinged from bb1.
    cases: list[tuple[Plan, Plan, str, str]] = []  # (pinging lesson, owning lesson, near endpoint, address)
    for owner, other, host in ((a, b, 200), (b, a, 201)):
        assert owner.main is not None
        for n in (*owner.networks, dataclasses.replace(owner.main, a="bb1", b="bb2")):
            address = str(n.subnet.network_address + host)
            ifname = next(i.name for i in owner.pod(n.b).attachments if i.network == n.nad)
            argv = ["ip", "addr", "add", f"{address}/{n.subnet.prefixlen}", "dev", ifname]
            done = backend.exec(owner, n.b, argv, timeout=5)
            assert done.returncode == 0, done.stderr
            cases += [(owner, owner, n.a, address), (other, owner, n.a, address)]

    outcomes = concurrently(lambda case: ping(backend, case[0], case[2], case[3], count=3), cases)
    for (source, owner, near, address), reached in zip(cases, outcomes, strict=True):
        whose = "its own" if source is owner else "the other lesson's"
        assert reached == (source is owner), f"{near} of {source.livelesson} -> {address} ({whose})"


# --- teardown --------------------------------------------------------------------------------------------


def test_teardown_leaves_nothing_and_touches_only_its_own(backend: LocalBackend) -> None:
    neighbour = backend_plan(backend)
    up(backend, neighbour)  # another live lesson of the same instance must survive the teardown
    plan = backend_plan(backend)

    before = snapshot(backend, plan.livelesson)
    assert before["netns"] == set() and before["processes"] == set()

    up(backend, plan)
    during = snapshot(backend, plan.livelesson)
    assert during["netns"] == {p.netns for p in plan.pods}
    assert len(during["processes"]) >= 3
    new_links = during["node links"] - before["node links"]
    assert plan.main is not None
    bridges = {n.bridge for n in plan.networks} | {plan.main.bridge}
    assert bridges <= new_links and len(new_links - bridges) == 9  # four bridges and nine host veths
    new_state = during["state"] - before["state"]
    assert f"lessons/{plan.livelesson}/owner.json" in new_state
    assert {f"ipam/{n.cni_name}" for n in plan.networks} <= new_state

    backend.destroy(plan.livelesson)
    assert_nothing_left(backend, plan, before)
    assert snapshot(backend, plan.livelesson)["state"] == before["state"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert plan.livelesson not in listed
    backend.destroy(plan.livelesson)  # idempotent
    assert_nothing_left(backend, plan, before)

    assert_all_pings_pass(backend, neighbour)  # untouched
    backend.destroy(neighbour.livelesson)
    assert backend.prune()
    assert not [n for n in netns.names() if n.startswith(f"{backend.instance}-")]
    assert not marked_processes(naming.instance_mark(backend.instance))
    assert backend.list() == []
    assert not list((backend.root / "lessons").iterdir())
    assert not list(backend.ipam_dir.iterdir())


def test_destroy_never_touches_a_bridge_without_its_mark(backend: LocalBackend) -> None:
    plan = backend_plan(backend)
    up(backend, plan)
    node = backend.node_netns
    # strangers in the node namespace: no mark at all, and the mark of a live lesson whose id extends ours
    strangers = {"lsbstranger01": "", "lsbstranger02": f"{naming.mark(backend.instance, plan.livelesson)}x/0"}
    for name, alias in strangers.items():
        netns.ip("link", "add", name, "type", "bridge", netns=node)
        if alias:
            netns.ip("link", "set", name, "alias", alias, netns=node)
    backend.destroy(plan.livelesson)
    assert set(strangers) <= set(netns.bridges(node))
    assert not {n.bridge for n in plan.networks} & set(netns.bridges(node))
    for name in strangers:
        netns.ip("link", "del", name, netns=node)


# --- crash recovery and idempotency ----------------------------------------------------------------------

SLOW_NET2 = """\
# ADD of net2 is done for real, then the plugin "hangs" before it answers: a worker killed now has
# made the attachment but never saved its result
if [ "$CNI_COMMAND" = ADD ] && [ "$CNI_IFNAME" = net2 ]; then
  out=$(/usr/lib/cni/bridge); rc=$?
  touch "@DIR@/added-$CNI_CONTAINERID"
  sleep 60
  printf '%s' "$out"; exit $rc
fi
exec /usr/lib/cni/bridge
"""


def kill_mid_apply(backend: LocalBackend, plan: Plan, tmp_path: Path) -> None:
    """A real worker process running the apply, SIGKILLed (with its plugins) halfway through."""
    plugins = fake_cni(tmp_path / "slow-cni", SLOW_NET2)
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from scheduler.services.catalog import load_paths
from scheduler.core.plan import make_plan
from workers.backends.local import LocalBackend
lesson = load_paths([{str(TRIANGLE)!r}]).get("busybox-triangle")
plan = make_plan(lesson, {plan.livelesson!r}, {plan.session!r}, instance={plan.instance!r})
backend = LocalBackend(
    instance={backend.instance!r}, state_dir=Path({str(backend.root.parent)!r}), cni_path=Path({str(plugins)!r}),
    pods="emulated",
)
backend.apply_networks(plan)
backend.apply_pods(plan)
"""
    worker = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    results = backend.root / "lessons" / plan.livelesson / "results"
    deadline = time.monotonic() + 30
    saved: set[str] = set()
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            saved = {p.name for p in results.glob("*.json")} if results.is_dir() else set()
            added = list(plugins.glob("added-*"))
            if len(saved) == 6 and len(added) == 3:
                break
            time.sleep(0.01)
        assert worker.poll() is None, "the apply finished or failed instead of hanging halfway"
        assert saved == {f"bb{k}.{i}.json" for k in (1, 2, 3) for i in ("eth0", "net1")}  # eth0 comes first
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker's own process group: it and its plugins
        worker.wait()


def crash_after_cni_add(backend: LocalBackend, plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker dies between a CNI ADD and saving its result (for bb2's attachments)."""
    real = attach.write_json

    def dying(path: Path, doc: object) -> None:
        if path.parent.name == "results" and path.name.startswith("bb2."):
            raise RuntimeError("worker died")
        real(path, doc)

    monkeypatch.setattr(attach, "write_json", dying)
    backend.apply_networks(plan)
    with pytest.raises(RuntimeError, match="worker died"):
        backend.apply_pods(plan)
    monkeypatch.setattr(attach, "write_json", real)


def partial(kind: str) -> Callable[..., None]:
    def run(backend: LocalBackend, plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        if kind == "networks only":
            backend.apply_networks(plan)
        elif kind == "subset of pods":
            backend.apply_networks(plan)
            backend.apply_pods(dataclasses.replace(plan, pods=plan.pods[:1]))
        elif kind == "killed mid-apply":
            kill_mid_apply(backend, plan, tmp_path)
        elif kind == "crash after CNI ADD":
            crash_after_cni_add(backend, plan, monkeypatch)
        else:
            raise AssertionError(kind)

    return run


PARTIAL = ["networks only", "subset of pods", "killed mid-apply", "crash after CNI ADD"]


@pytest.mark.parametrize("kind", PARTIAL)
def test_interrupted_apply_then_applied_again_converges(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    plan = backend_plan(backend)
    before = snapshot(backend, plan.livelesson)
    partial(kind)(backend, plan, tmp_path, monkeypatch)
    assert not backend.observe(plan).ready
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    assert_converged(backend, plan)
    backend.destroy(plan.livelesson)
    assert_nothing_left(backend, plan, before)


@pytest.mark.parametrize("kind", PARTIAL)
def test_destroy_after_a_partial_apply_is_clean(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    plan = backend_plan(backend)
    before = snapshot(backend, plan.livelesson)
    partial(kind)(backend, plan, tmp_path, monkeypatch)
    backend.destroy(plan.livelesson)
    assert_nothing_left(backend, plan, before)
    assert backend.prune()
    assert not [n for n in netns.names() if n.startswith(f"{backend.instance}-")]


def _delete_result_file(backend: LocalBackend, plan: Plan) -> None:
    (backend.root / "lessons" / plan.livelesson / "results" / "bb2.net1.json").unlink()


def _delete_pod_veth(backend: LocalBackend, plan: Plan) -> None:
    netns.ip("link", "del", "net2", netns=plan.pod("bb1").netns)


def _delete_host_veth(backend: LocalBackend, plan: Plan) -> None:
    bridge = plan.network("bb2-bb3").bridge
    port = next(link["ifname"] for link in ip_json("link", ns=backend.node_netns) if link.get("master") == bridge)
    netns.ip("link", "del", port, netns=backend.node_netns)


def _delete_bridge(backend: LocalBackend, plan: Plan) -> None:
    netns.ip("link", "del", plan.network("bb1-bb2").bridge, netns=backend.node_netns)


def _kill_pod_process(backend: LocalBackend, plan: Plan) -> None:
    pid = int((backend.root / "lessons" / plan.livelesson / "pods" / "bb3.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid in marked_processes(backend.mark(plan.livelesson)) and time.monotonic() < deadline:
        time.sleep(0.01)


def _delete_pod_netns(backend: LocalBackend, plan: Plan) -> None:
    subprocess.run(["ip", "netns", "del", plan.pod("bb2").netns], check=True)


def _delete_node_netns(backend: LocalBackend, plan: Plan) -> None:
    subprocess.run(["ip", "netns", "del", backend.node_netns], check=True)


DAMAGE = {
    "result file deleted": _delete_result_file,
    "veth deleted in the pod": _delete_pod_veth,
    "host veth deleted in the node": _delete_host_veth,
    "bridge deleted": _delete_bridge,
    "pod process killed": _kill_pod_process,
    "pod namespace deleted": _delete_pod_netns,
    "node namespace deleted": _delete_node_netns,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_after_ready_is_repaired_by_applying_again(backend: LocalBackend, damage: str) -> None:
    plan = backend_plan(backend)
    up(backend, plan)
    DAMAGE[damage](backend, plan)
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    assert_converged(backend, plan)
    backend.destroy(plan.livelesson)
    assert snapshot(backend, plan.livelesson)["netns"] == set()
    assert not marked_processes(naming.instance_mark(backend.instance))


def test_applying_twice_is_harmless(backend: LocalBackend) -> None:
    plan = backend_plan(backend)
    up(backend, plan)
    first = snapshot(backend, plan.livelesson)
    addresses = {p.netns: pod_addresses(p.netns) for p in plan.pods}
    results = {p: p.read_text() for p in (backend.root / "lessons" / plan.livelesson / "results").iterdir()}

    backend.apply_networks(plan)
    backend.apply_pods(plan)
    backend.apply_networks(plan)
    backend.apply_pods(plan)

    second = snapshot(backend, plan.livelesson)
    assert second["processes"] == first["processes"]  # the same pod processes, none restarted
    assert second["node links"] == first["node links"]  # the same bridges and veths
    assert second["state"] == first["state"]
    assert {p.netns: pod_addresses(p.netns) for p in plan.pods} == addresses
    assert {p: p.read_text() for p in results} == results
    assert_converged(backend, plan)


def test_concurrent_duplicate_applies_converge(backend: LocalBackend) -> None:
    """A redelivered task running next to the original one."""
    plan = backend_plan(backend)
    errors: list[BaseException] = []

    def apply() -> None:
        try:
            backend.apply_networks(plan)
            backend.apply_pods(plan)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_converged(backend, plan)


# --- the NRE Labs curriculum -----------------------------------------------------------------------------


def curriculum() -> list[ResolvedLesson]:
    if not CURRICULUM.is_dir():
        return []
    return sorted((lesson for lesson in load_paths([CURRICULUM]) if lesson.connections), key=lambda x: x.slug)


def test_curriculum_has_six_lessons_with_connections() -> None:
    needs(CURRICULUM.is_dir(), f"needs the NRE Labs curriculum at {CURRICULUM}")
    assert [lesson.slug for lesson in curriculum()] == [
        "ansible-network-automation",
        "jet-extending-junos",
        "jsnapy-network-testing",
        "openconfig-vendor-neutral",
        "pyez-junos-automation",
        "salt-network-automation",
    ]


@pytest.mark.parametrize("lesson", curriculum(), ids=lambda x: x.slug)
def test_curriculum_lesson_comes_up_with_all_pings_passing(backend: LocalBackend, lesson: ResolvedLesson) -> None:
    plan = backend_plan(backend, lesson)
    before = snapshot(backend, plan.livelesson)
    obs = up(backend, plan)
    assert_all_pings_pass(backend, plan, obs)
    for pod in plan.pods:
        found = pod_addresses(pod.netns)
        assert sorted(found) == sorted(i.name for i in pod.attachments)
        for itf in pod.attachments:
            assert found[itf.name][0] in plan.network(itf.network).subnet
        forwarding = backend.exec(plan, pod.endpoint, ["cat", "/proc/sys/net/ipv4/ip_forward"], timeout=5).stdout
        assert forwarding.strip() == ("1" if pod.forwarding else "0"), pod.endpoint
    backend.destroy(plan.livelesson)
    assert_nothing_left(backend, plan, before)


# --- prerequisites and transient faults ------------------------------------------------------------------


def test_missing_cni_plugins_name_the_plugin_and_the_package(instance: str, tmp_path: Path) -> None:
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    backend = LocalBackend(instance=instance, state_dir=tmp_path / "state", cni_path=empty, pods="emulated")
    plan = backend_plan(backend)
    with pytest.raises(PrerequisiteMissing) as caught:
        backend.apply_networks(plan)
    message = str(caught.value)
    assert "'bridge'" in message and "apt-get install containernetworking-plugins" in message
    assert not caught.value.transient
    assert not [n for n in netns.names() if n.startswith(f"{instance}-")]  # nothing made before the check

    (empty / "bridge").symlink_to(REAL_CNI / "bridge")
    backend = LocalBackend(instance=instance, state_dir=tmp_path / "state", cni_path=empty, pods="emulated")
    with pytest.raises(PrerequisiteMissing, match=r"'host-local'.*apt-get install containernetworking-plugins"):
        backend.apply_pods(plan)


def test_missing_privileges_name_the_capabilities(tmp_path: Path) -> None:
    needs(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    code = (
        "from pathlib import Path\n"
        "from workers.backends.local import LocalBackend\n"
        "from scheduler.core.errors import PrerequisiteMissing\n"
        f"b = LocalBackend(instance='nocaps', state_dir=Path({str(tmp_path)!r}))\n"
        "try:\n"
        "    b.apply_networks(None)\n"
        "except PrerequisiteMissing as e:\n"
        "    print(e)\n"
    )
    drop = ["setpriv", "--bounding-set", "-net_admin,-sys_admin", "--inh-caps", "-net_admin,-sys_admin"]
    out = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert "CAP_NET_ADMIN and CAP_SYS_ADMIN" in out.stdout, out
    assert "run as root" in out.stdout


RACE_ONCE = """\
echo "$CNI_COMMAND $CNI_IFNAME $CNI_CONTAINERID" >> "@DIR@/calls"
# the first ADD fails the way a concurrent ADD creating the same bridge makes it fail
if [ "$CNI_COMMAND" = ADD ] && mkdir "@DIR@/failed-once" 2>/dev/null; then
  cat >/dev/null
  printf '{"cniVersion":"0.4.0","code":999,"msg":"failed to create bridge: could not add \\\\"%s\\\\": file exists"}' x
  exit 1
fi
exec /usr/lib/cni/bridge
"""


def test_transient_cni_race_is_retried_in_place(instance: str, tmp_path: Path) -> None:
    plugins = fake_cni(tmp_path / "racy-cni", RACE_ONCE)
    backend = LocalBackend(instance=instance, state_dir=tmp_path / "state", cni_path=plugins, pods="emulated")
    plan = backend_plan(backend)
    backend.apply_networks(plan)
    backend.apply_pods(plan)  # no error: the race was retried inside the call
    assert (plugins / "failed-once").is_dir()
    adds = [line for line in (plugins / "calls").read_text().splitlines() if line.startswith("ADD")]
    assert len(adds) == 10  # nine attachments (three eth0, six links), one of them twice
    assert_converged(backend, plan)
