"""Lessons split over several nodes of the local backend, for real: node namespaces joined by an underlay
bridge, VXLAN devices for the crossing links, real pings both ways, and isolation shown with real packets
(raw sockets in the other lesson's pods count what reaches them).

Needs root (fails under CI=true without it). Everything carries the test's unique instance prefix and is
removed after each test, pass or fail. What is checked is read back with iproute2, independently of the
code under test.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scheduler.core import naming
from scheduler.core.errors import PermanentError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.placement import Placement, place_lesson, spread
from scheduler.core.plan import Plan, make_plan
from tests.support import netns_tools as netns
from tests.support.ids import new_id
from tests.support.lessons import ring
from tests.support.local_lessons import ping_all, up
from workers.backends.base import Observation
from workers.backends.local import LocalBackend
from workers.backends.local.net.nodes import UPLINK, VXLAN_PORT

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root")]

PATTERN = "6c7331385f69736f"  # "ls18_iso": what one lesson's pings carry, looked for in the other's pods


def make_backend(instance: str, tmp_path: Path, nodes: int, max_pods: int) -> LocalBackend:
    return LocalBackend(
        instance=instance, state_dir=tmp_path / "state", pods="emulated", nodes=nodes, node_max_pods=max_pods
    )


def placed(backend: LocalBackend, lesson: ResolvedLesson) -> tuple[Plan, Placement]:
    rooms = backend.rooms()
    assert rooms is not None
    placement = place_lesson(lesson, rooms)
    return make_plan(lesson, new_id(), "s", instance=backend.instance, placement=placement.nodes), placement


def failing_checks(backend: LocalBackend, plan: Plan, obs: Observation) -> dict[str, Any]:
    results = ping_all(backend, plan, obs, budget=10)
    return {f"{c.source}->{c.target} over {c.network}": r for c, r in results.items() if not r.ok}


def vxlans(node: str) -> dict[str, dict[str, Any]]:
    """The VXLAN devices on a node, as iproute2 reports them."""
    return {link["ifname"]: link for link in netns.links(node, "type", "vxlan")}


def flood_list(node: str, device: str) -> set[str]:
    """The remote addresses a VXLAN device floods to (its all-zero FDB entries), from `bridge fdb`."""
    proc = subprocess.run(
        ["ip", "netns", "exec", node, "bridge", "fdb", "show", "dev", device],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    flooding = [line for line in proc.stdout.splitlines() if line.startswith("00:00:00:00:00:00")]
    return {line.split(" dst ")[1].split()[0] for line in flooding}


def test_a_ring_of_40_on_nodes_of_16_crosses_the_fewest_links_and_every_ping_passes(
    instance: str, tmp_path: Path
) -> None:
    backend = make_backend(instance, tmp_path, nodes=3, max_pods=16)
    lesson = ring(40)
    plan, placement = placed(backend, lesson)
    # the minimum: a ring cut into 3 arcs loses exactly 3 links, and no split loses fewer (the bound)
    assert len(placement.crossing) == placement.bound == 3 and placement.proven_minimal
    links = [(x.a.name, x.b.name) for x in lesson.links]
    rooms = backend.rooms()
    assert rooms is not None
    assert len(spread([e.name for e in lesson.endpoints], links, rooms).crossing) == 40  # link-blind: all
    obs = up(backend, plan, wait=30)
    assert {e: p.node for e, p in obs.pods.items()} == dict(placement.nodes)
    assert all(sum(p.node == node for p in plan.pods) <= 16 for node in plan.nodes)

    # read back: each crossing link has a VXLAN device on both of its nodes, with the plan's VNI, a port of
    # that link's bridge, flooding to the other node's underlay address; nothing else is tunnelled
    addresses = {node: netns.addresses(node)[UPLINK][0].split("/")[0] for node in plan.nodes}
    for node in plan.nodes:
        devices = vxlans(node)
        expected = {n.tunnel.device: n for n in plan.tunnels if n.tunnel is not None and node in n.tunnel.nodes}
        assert set(devices) == set(expected), node
        for name, network in expected.items():
            assert network.tunnel is not None
            info = devices[name]["linkinfo"]["info_data"]
            wanted = (network.tunnel.vni, VXLAN_PORT, network.bridge)
            assert (info["id"], info["port"], devices[name]["master"]) == wanted
            others = {addresses[other] for other in network.tunnel.nodes if other != node}
            assert flood_list(node, name) == others
    assert len([n for n in plan.tunnels if n.nad != "main"]) == 3

    failing = failing_checks(backend, plan, obs)
    assert not failing, failing
    assert sum(c.crosses for c in plan.checks if not c.by_name) == 6  # three links, both ways

    backend.destroy(plan.livelesson)
    assert backend.remains(plan.livelesson) == []
    assert all(vxlans(node) == {} for node in plan.nodes)
    assert backend.prune()
    assert not [n for n in netns.names() if n.startswith(f"{instance}-")]


def _sniff(ns: str, seconds: float, needle: bytes) -> int:
    """Frames that reach any interface of namespace ``ns`` carrying ``needle``, over ``seconds``."""

    def body() -> int:
        seen = 0
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
            sock.settimeout(0.1)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    frame, address = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                if address[2] != socket.PACKET_OUTGOING and needle in frame:
                    seen += 1
        return seen

    return netns.in_netns(ns, body, timeout=seconds + 10)


def test_two_split_lessons_with_the_same_addresses_never_see_each_others_packets(instance: str, tmp_path: Path) -> None:
    backend = make_backend(instance, tmp_path, nodes=2, max_pods=0)
    # two rings of 4, each split 2 + 2 over the same two nodes, so both have tunnels between them, and
    # both got the same link subnets and main addresses (one pool, each plan its own)
    split = {"h1": backend.nodes.names[0], "h2": backend.nodes.names[0]}
    split |= {"h3": backend.nodes.names[1], "h4": backend.nodes.names[1]}
    plan_a = make_plan(ring(4), new_id(), "s", instance=instance, placement=split)
    obs_a = up(backend, plan_a, wait=30)
    plan_b = make_plan(ring(4), new_id(), "s", instance=instance, placement=split)
    obs_b = up(backend, plan_b, wait=30)
    assert plan_a.nodes == plan_b.nodes and len(plan_a.nodes) == 2
    assert [n.subnet for n in plan_a.networks] == [n.subnet for n in plan_b.networks]
    assert {n.tunnel.vni for n in plan_a.tunnels if n.tunnel}.isdisjoint(
        {n.tunnel.vni for n in plan_b.tunnels if n.tunnel}
    )

    needle = bytes.fromhex(PATTERN)
    crossing = [c for c in plan_a.checks if c.crosses and not c.by_name]
    assert crossing

    def traffic() -> None:
        time.sleep(0.5)  # the sniffers are listening
        for check in crossing:
            address = obs_a.address(check.target, check.interface)
            assert address is not None
            network = plan_a.network(check.network)
            for target in (address.split("/")[0], str(network.subnet.broadcast_address)):
                argv = ["ping", "-n", "-q", "-b", "-c", "5", "-i", "0.05", "-W", "1", "-p", PATTERN, target]
                backend.exec(plan_a, check.source, argv, timeout=10)
        assert plan_a.main is not None
        for source in ("h1", "h3"):  # the main network: by the other pods' names, and its broadcast
            for target in ("h2", "h4", str(plan_a.main.subnet.broadcast_address)):
                argv = ["ping", "-n", "-q", "-b", "-c", "5", "-i", "0.05", "-W", "1", "-p", PATTERN, target]
                backend.exec(plan_a, source, argv, timeout=10)

    watched: list[tuple[str, Callable[[], int]]] = [
        (f"{lesson}:{pod.endpoint}", functools.partial(_sniff, pod.netns, 6.0, needle))
        for lesson, plan in (("a", plan_a), ("b", plan_b))
        for pod in plan.pods
    ]
    with ThreadPoolExecutor(max_workers=len(watched) + 1) as pool:
        counts = [pool.submit(fn) for _, fn in watched]
        pool.submit(traffic).result()
        seen = {name: f.result() for (name, _), f in zip(watched, counts, strict=True)}
    assert all(seen[f"a:{check.target}"] > 0 for check in crossing), seen  # the sniffers see what arrives
    assert {name: n for name, n in seen.items() if name.startswith("b:") and n} == {}, seen
    assert not failing_checks(backend, plan_b, obs_b)


def test_a_vni_already_used_on_a_node_is_refused_not_joined(instance: str, tmp_path: Path) -> None:
    backend = make_backend(instance, tmp_path, nodes=2, max_pods=2)
    plan, _ = placed(backend, ring(4))
    backend.nodes.ensure_joined(plan.nodes)
    network = plan.tunnels[-1]
    assert network.tunnel is not None
    node = network.tunnel.nodes[0]
    local = netns.addresses(node)[UPLINK][0].split("/")[0]
    squatter = "squat0"  # not ours: no mark
    netns.ip(
        "link", "add", squatter, "type", "vxlan", "id", str(network.tunnel.vni), "local", local,
        "dstport", str(VXLAN_PORT), "dev", UPLINK, netns=node,
    )  # fmt: skip
    with pytest.raises(PermanentError, match=f"VNI {network.tunnel.vni}"):
        backend.apply_networks(plan)
    assert squatter in vxlans(node)  # left alone
    backend.destroy(plan.livelesson)
    assert backend.remains(plan.livelesson) == []
    assert squatter in vxlans(node)


def test_a_tunnel_removed_under_a_live_lesson_comes_back_on_the_next_apply(instance: str, tmp_path: Path) -> None:
    backend = make_backend(instance, tmp_path, nodes=2, max_pods=3)
    plan, _ = placed(backend, ring(5))
    obs = up(backend, plan, wait=30)
    network = next(n for n in plan.networks if n.tunnel is not None)
    assert network.tunnel is not None
    netns.ip("link", "del", network.tunnel.device, netns=network.tunnel.nodes[1])
    backend.apply_networks(plan)  # a step run twice, after an outside change
    assert network.tunnel.device in vxlans(network.tunnel.nodes[1])
    assert not failing_checks(backend, plan, obs)


def test_rooms_count_live_lessons_and_a_node_the_backend_lacks_is_refused(instance: str, tmp_path: Path) -> None:
    backend = make_backend(instance, tmp_path, nodes=2, max_pods=16)
    plan, placement = placed(backend, ring(10))
    assert placement.crossing == () and len(plan.nodes) == 1  # fits on one node: stays on one (affinity)
    backend.apply_networks(plan)
    rooms = {r.name: r.pods for r in backend.rooms() or []}
    other = next(n for n in backend.nodes.names if n != plan.nodes[0])
    assert rooms == {plan.nodes[0]: 6, other: 16}
    second, _ = placed(backend, ring(10))
    assert second.nodes != plan.nodes  # the first node has 6 left

    stray = naming.node_netns(instance, 7)  # a node of a larger configuration
    bad = make_plan(ring(3), new_id(), "s", instance=instance, placement=dict.fromkeys(("h1", "h2", "h3"), stray))
    with pytest.raises(PermanentError, match="LESSON_LOCAL_NODES"):
        backend.apply_networks(bad)
    assert not netns.exists(stray)


def test_a_node_namespace_deleted_while_being_read_reads_as_gone(instance: str) -> None:
    """Deleting a namespace unmounts it, then unlinks its file: in between, /run/netns/<name> is a plain file,
    and setns on it fails with EINVAL. A reader racing a GC pass that prunes an empty node (CI's sentinel test
    did) must see "gone", not an error."""
    from workers.backends.local.net import rtnetlink
    from workers.backends.local.net.netns import NETNS_DIR, NamespaceGone, in_netns

    node = naming.node_netns(instance, 1)
    half_deleted = NETNS_DIR / node
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    half_deleted.touch()  # the state between the unmount and the unlink
    try:
        with pytest.raises(NamespaceGone, match="does not exist"):
            in_netns(node, lambda: None)
        assert rtnetlink.link_table(node) == {}
    finally:
        half_deleted.unlink(missing_ok=True)
