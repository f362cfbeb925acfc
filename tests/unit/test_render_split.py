"""The Kubernetes objects of a placed plan: the seed's pod affinity while a lesson is on one node, each pod
pinned to its node, a split link's tunnel in its NAD's annotation and its ends' addresses decided by the
plan, and the namespace's placement annotation (what KubernetesBackend.rooms reads back)."""

from __future__ import annotations

import ipaddress
import json

from scheduler.core import naming
from scheduler.core.plan import make_plan
from scheduler.core.render import NETWORKS_ANNOTATION, namespace, network_attachment_definitions, pods
from tests.support.lessons import ring

INSTANCE = "t18k"
A, B = "node-a", "node-b.example.org"  # Kubernetes node names are DNS subdomains


def by_name(objects: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {o["metadata"]["name"]: o for o in objects}


def test_without_a_placement_the_objects_are_the_seeds() -> None:
    plan = make_plan(ring(4), "a" * 10, "s", instance=INSTANCE)
    assert "annotations" not in namespace(plan)["metadata"]
    for pod in pods(plan):
        assert set(pod["spec"]["affinity"]) == {"podAffinity"}
    for nad in network_attachment_definitions(plan):
        assert "annotations" not in nad["metadata"]
        assert json.loads(nad["spec"]["config"])["ipam"]["type"] == "host-local"


def test_a_lesson_on_one_node_keeps_pod_affinity_and_is_pinned_there() -> None:
    plan = make_plan(ring(4), "b" * 10, "s", instance=INSTANCE, placement={f"h{k}": A for k in range(1, 5)})
    for pod in pods(plan):
        affinity = pod["spec"]["affinity"]
        assert "podAffinity" in affinity
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [A]}]}]
    assert all("annotations" not in n["metadata"] for n in network_attachment_definitions(plan))
    annotation = namespace(plan)["metadata"]["annotations"][naming.ANNOTATION_PLACEMENT]
    assert json.loads(annotation) == {f"h{k}": A for k in range(1, 5)}


def test_a_split_lesson_pins_each_pod_and_tunnels_exactly_its_crossing_links() -> None:
    placement = {"h1": A, "h2": A, "h3": B, "h4": B}  # h2-h3 and h4-h1 cross
    plan = make_plan(ring(4), "c" * 10, "s", instance=INSTANCE, placement=placement)
    for pod in pods(plan):
        affinity = pod["spec"]["affinity"]
        assert "podAffinity" not in affinity  # it would keep the lesson on one node
        term = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchFields"][0]["values"] == [placement[pod["metadata"]["name"]]]
    nads = by_name(network_attachment_definitions(plan))
    tunnelled = {
        name for name, nad in nads.items() if naming.ANNOTATION_TUNNEL in nad["metadata"].get("annotations", {})
    }
    assert tunnelled == {"h2-h3", "h4-h1"}
    for name in tunnelled:
        network = plan.network(name)
        assert network.tunnel is not None
        tunnel = json.loads(nads[name]["metadata"]["annotations"][naming.ANNOTATION_TUNNEL])
        assert tunnel == {"device": network.tunnel.device, "vni": network.tunnel.vni, "nodes": sorted([A, B])}
        config = json.loads(nads[name]["spec"]["config"])
        assert config["ipam"] == {"type": "static"} and config["capabilities"] == {"ips": True}
    # each end of a crossing link gets its address from the pod's network selection, distinct, in the subnet
    seen: dict[str, list[str]] = {}
    for pod in pods(plan):
        for selection in json.loads(pod["metadata"]["annotations"][NETWORKS_ANNOTATION]):
            if selection["name"] in tunnelled:
                seen.setdefault(selection["name"], []).extend(selection["ips"])
            else:
                assert "ips" not in selection
    for name, addresses in seen.items():
        subnet = plan.network(name).subnet
        assert len(set(addresses)) == 2
        assert all(ipaddress.IPv4Interface(a).network == subnet for a in addresses)
