"""The plan of a lesson placed on several nodes: which networks span nodes, their tunnels, the checks that
cross, and a placement read back from the record (which anyone with Redis access can write) refused when
it is not one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core import naming
from scheduler.core.errors import PermanentError
from scheduler.core.placement import NodeRoom, place
from scheduler.core.plan import MAIN_NETWORK, make_plan
from tests.support.lessons import ring, triangle

INSTANCE = "t18"
N0, N1, N2 = (naming.node_netns(INSTANCE, k) for k in range(3))


def test_without_a_placement_every_pod_is_on_node_0_and_nothing_crosses() -> None:
    plan = make_plan(triangle(), "a" * 10, "s", instance=INSTANCE)
    assert {p.node for p in plan.pods} == {N0} == set(plan.nodes)
    assert plan.tunnels == ()
    assert plan.main is not None
    assert all(n.nodes == (N0,) for n in (*plan.networks, plan.main))
    assert not any(c.crosses for c in plan.checks)


def test_a_split_ring_tunnels_exactly_its_crossing_links_and_the_main_network() -> None:
    lesson = ring(6)
    placement = {f"h{k}": N0 if k <= 3 else N1 for k in range(1, 7)}  # h3-h4 and h6-h1 cross
    plan = make_plan(lesson, "b" * 10, "s", instance=INSTANCE, placement=placement)
    crossing = {n.nad for n in plan.networks if n.tunnel is not None}
    assert crossing == {"h3-h4", "h6-h1"}
    for n in plan.networks:
        assert n.nodes == tuple(sorted({placement[n.a], placement[n.b]}))
        if n.tunnel is not None:
            assert n.tunnel.nodes == (N0, N1)
            assert n.tunnel.device == naming.vxlan_name(INSTANCE, plan.livelesson, n.index)
            assert n.tunnel.vni == naming.vni(INSTANCE, plan.livelesson, n.index)
    assert plan.main is not None and plan.main.tunnel is not None and plan.main.tunnel.nodes == (N0, N1)
    assert [n.nad for n in plan.tunnels] == [MAIN_NETWORK, "h3-h4", "h6-h1"]
    for check in plan.checks:
        assert check.crosses == (placement[check.source] != placement[check.target])
    assert sum(c.crosses for c in plan.checks if not c.by_name) == 4  # two links, both ways
    assert {p.endpoint: p.node for p in plan.pods} == placement


def test_the_placement_of_40_on_nodes_of_16_gives_a_plan_with_its_crossing_links_tunnelled() -> None:
    lesson = ring(40)
    rooms = [NodeRoom(naming.node_netns(INSTANCE, k), 16, 10**9, 10**12) for k in range(3)]
    placed = place([e.name for e in lesson.endpoints], [(x.a.name, x.b.name) for x in lesson.links], rooms)
    plan = make_plan(lesson, "c" * 10, "s", instance=INSTANCE, placement=placed.nodes)
    assert len([n for n in plan.networks if n.tunnel is not None]) == len(placed.crossing) == placed.bound == 3
    assert plan.main is not None and plan.main.tunnel is not None and len(plan.main.tunnel.nodes) == 3
    assert max(sum(p.node == node for p in plan.pods) for node in plan.nodes) <= 16


@settings(max_examples=200, deadline=None)
@given(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=10, max_size=10), st.integers(0, 10_000))
def test_vnis_are_24_bit_never_0_and_the_device_names_fit_linux(livelesson: str, index: int) -> None:
    vni = naming.vni(INSTANCE, livelesson, index)
    assert 1 <= vni <= 0xFFFFFE
    assert vni == naming.vni(INSTANCE, livelesson, index)
    name = naming.vxlan_name(INSTANCE, livelesson, index)
    assert len(name) <= 15 and name.startswith("lsx")
    # its own prefix: a tunnel's device is never a bridge's name
    assert name not in {naming.bridge_name(INSTANCE, livelesson, index), naming.main_bridge_name(INSTANCE, livelesson)}


def test_one_lessons_tunnels_have_distinct_vnis_and_devices() -> None:
    plan = make_plan(
        ring(40), "d" * 10, "s", instance=INSTANCE, placement={f"h{k}": (N0, N1)[k % 2] for k in range(1, 41)}
    )
    tunnels = [n.tunnel for n in plan.tunnels if n.tunnel is not None]
    assert len(tunnels) == 41  # every link of an alternating ring crosses, and the main network
    assert len({t.vni for t in tunnels}) == len({t.device for t in tunnels}) == 41


@pytest.mark.parametrize(
    ("placement", "says"),
    [
        ({"bb1": N0, "bb2": N0}, "the lesson has"),  # bb3 missing
        ({"bb1": N0, "bb2": N0, "bb3": N0, "h9": N0}, "the lesson has"),  # one too many
        ({"bb1": N0, "bb2": N0, "bb3": "../../etc"}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": "a/b"}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": ""}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": "X" * 70}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": "a" * 64}, "not node names"),  # a label is at most 63
        ({"bb1": N0, "bb2": N0, "bb3": "a..b"}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": "-a.b"}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": "a.b."}, "not node names"),
        ({"bb1": N0, "bb2": N0, "bb3": ".."}, "not node names"),
    ],
)
def test_a_placement_that_is_not_one_is_refused_naming_the_problem(placement: dict[str, str], says: str) -> None:
    with pytest.raises(PermanentError, match=says):
        make_plan(triangle(), "e" * 10, "s", instance=INSTANCE, placement=placement)


def test_node_0_keeps_the_single_nodes_name_and_others_are_numbered() -> None:
    assert naming.node_netns("lessons") == naming.node_netns("lessons", 0) == "lessons-node"
    assert naming.node_netns("lessons", 2) == "lessons-node2"
    assert naming.underlay_netns("lessons") == "lessons-underlay"
