"""The node agent's reading of the API (tunnels.py): which VXLAN ends a node needs, from NADs and Nodes that
anyone with NAD rights in some namespace, or node rights, may have written. Hostile input gives a Problem,
never a device, and never an exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core import naming
from scheduler.core.plan import make_plan
from scheduler.core.render import network_attachment_definitions
from tests.support.lessons import ring
from workers.node_agent import tunnels

A, B, C = "node-a", "node-b", "node-c"
WHERE = {A: "10.248.0.2", B: "10.248.0.3", C: "10.248.0.4"}


def split_nads() -> tuple[Any, list[dict[str, Any]]]:
    plan = make_plan(ring(4), "n" * 10, "s", instance="t18a", placement={"h1": A, "h2": A, "h3": B, "h4": B})
    return plan, network_attachment_definitions(plan)


def test_each_node_needs_the_ends_of_its_crossing_links_flooding_to_the_other_node() -> None:
    plan, nads = split_nads()
    for node, other in ((A, B), (B, A)):
        ends, problems = tunnels.ends(node, nads, WHERE)
        assert problems == []
        assert {e.device for e in ends} == {n.tunnel.device for n in plan.networks if n.tunnel is not None}
        for end in ends:
            network = next(n for n in plan.networks if n.tunnel is not None and n.tunnel.device == end.device)
            assert (end.vni, end.bridge, end.remotes) == (network.tunnel.vni, network.bridge, (WHERE[other],))
            assert end.mark == f"{naming.TUNNEL_MARK}{plan.namespace}/{network.nad}"
    assert tunnels.ends(C, nads, WHERE) == ([], [])  # not one of its nodes


def _tamper(nad: dict[str, Any], **tunnel: Any) -> dict[str, Any]:
    nad = json.loads(json.dumps(nad))
    value = json.loads(nad["metadata"]["annotations"][naming.ANNOTATION_TUNNEL])
    value.update(tunnel)
    nad["metadata"]["annotations"][naming.ANNOTATION_TUNNEL] = json.dumps(value)
    return nad


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"device": "eth0"}, "not a VXLAN device name"),
        ({"device": "lsx../../etc/x"}, "not a VXLAN device name"),
        ({"vni": 0}, "not in 1.."),
        ({"vni": 1 << 24}, "not in 1.."),
        ({"vni": True}, "not in 1.."),
        ({"vni": "7"}, "not in 1.."),
        ({"nodes": [A]}, "distinct node names"),
        ({"nodes": [A, A]}, "distinct node names"),
        ({"nodes": [A, "../b"]}, "distinct node names"),
        ({"nodes": "node-a"}, "distinct node names"),
    ],
)
def test_a_hostile_tunnel_annotation_is_a_problem_not_a_device(change: dict[str, Any], says: str) -> None:
    _, nads = split_nads()
    tunnelled = [n for n in nads if naming.ANNOTATION_TUNNEL in n["metadata"].get("annotations", {})]
    ends, problems = tunnels.ends(A, [_tamper(tunnelled[0], **change), tunnelled[1]], WHERE)
    assert len(ends) == 1 and len(problems) == 1 and says in problems[0].what, problems


def test_a_nad_not_ours_or_naming_a_foreign_bridge_or_an_unknown_node_makes_nothing() -> None:
    _, nads = split_nads()
    nad = next(n for n in nads if naming.ANNOTATION_TUNNEL in n["metadata"].get("annotations", {}))
    foreign = json.loads(json.dumps(nad))
    foreign["metadata"]["labels"] = {}
    assert tunnels.ends(A, [foreign], WHERE) == ([], [])
    host_bridge = json.loads(json.dumps(nad))
    host_bridge["spec"]["config"] = json.dumps({**json.loads(nad["spec"]["config"]), "bridge": "cni0"})
    ends, problems = tunnels.ends(A, [host_bridge], WHERE)
    assert ends == [] and "no bridge of ours" in problems[0].what
    ends, problems = tunnels.ends(A, [nad], {A: WHERE[A]})
    assert ends == [] and "without a lessons.io/tunnel-address" in problems[0].what


def test_two_nads_claiming_one_device_get_neither() -> None:
    _, nads = split_nads()
    first, second = (n for n in nads if naming.ANNOTATION_TUNNEL in n["metadata"].get("annotations", {}))
    device = json.loads(first["metadata"]["annotations"][naming.ANNOTATION_TUNNEL])["device"]
    ends, problems = tunnels.ends(A, [first, _tamper(second, device=device)], WHERE)
    assert ends == [] and len(problems) == 2


@pytest.mark.parametrize("label", ["127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.1.1", "::1", "10.0.0.1/24", "x"])
def test_a_node_address_that_is_no_underlay_is_refused(label: str) -> None:
    where, problems = tunnels.addresses([{"name": A, "labels": {naming.LABEL_TUNNEL_ADDRESS: label}}])
    assert where == {} and len(problems) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c),
        max_leaves=20,
    )
)
def test_any_json_in_the_annotation_or_config_never_raises(value: Any) -> None:
    _, nads = split_nads()
    nad = json.loads(json.dumps(next(n for n in nads if "annotations" in n["metadata"])))
    nad["metadata"]["annotations"][naming.ANNOTATION_TUNNEL] = json.dumps(value)
    nad["spec"]["config"] = json.dumps(value)
    ends, _ = tunnels.ends(A, [nad], WHERE)
    assert ends == []
