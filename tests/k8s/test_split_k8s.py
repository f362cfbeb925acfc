"""A lesson bigger than a node, on the real test cluster: with LESSON_K8S_PLACEMENT=nodes the worker splits
it over two real nodes (each a kubelet, containerd and Multus in a network namespace of ours, started by
`cluster.py nodes-up`), pins each pod to its node, and the product's node agent on each node makes the
VXLAN devices of the links that cross. Real Redis, a real Celery worker as the worker's ServiceAccount,
real containers; the pings go through the tunnels both ways."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.core import naming
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.k8s.conftest import run_cluster
from tests.support.k8s import Kubectl, backend, cluster
from tests.support.lessons import ring_lesson
from tests.support.waits import wait_for, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNT, MAX_PODS = 2, 4  # two nodes of 4 pods: a ring of 6 fits on neither
NODES = tuple(f"netns-node-{k}" for k in range(1, COUNT + 1))


def node_netns(node: str) -> str:
    return f"{cluster.NETNS_PREFIX}-node-{node.rsplit('-', 1)[1]}"


@pytest.fixture(scope="module")
def netns_nodes(k8s_kubeconfig: Path) -> Iterator[tuple[str, ...]]:
    """Two more real nodes for this module only; `nodes-down` fails the test if anything of them is left."""
    run_cluster("nodes-up", f"--count={COUNT}", f"--max-pods={MAX_PODS}")
    try:
        yield NODES
    finally:
        run_cluster("nodes-down")


def links(netns: str, kind: str) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        ["ip", "-n", netns, "-d", "-j", "link", "show", "type", kind], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def flooded_to(netns: str, device: str) -> set[str]:
    out = subprocess.run(
        ["bridge", "-n", netns, "-j", "fdb", "show", "dev", device], capture_output=True, text=True, check=True
    ).stdout
    return {e["dst"] for e in json.loads(out or "[]") if e.get("mac") == "00:00:00:00:00:00"}


def test_a_ring_bigger_than_a_node_is_split_over_two_real_nodes_joined_by_vxlan(
    netns_nodes: tuple[str, ...], settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess],
    worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str], tmp_path: Path,
) -> None:  # fmt: skip
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "ring6.yaml").write_text(ring_lesson(6, slug="ring6"))
    settings = settings_for(backend="kubernetes", kubeconfig=worker_kubeconfig, catalog=catalog, k8s_placement="nodes")
    start_worker(settings)
    store = Store.from_settings(settings)
    client = Client(settings)
    livelesson = client.request_lesson("ring6", "split").id
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=240)
    assert record.status == "ready", record.error

    # placed over both nodes, at most 4 pods each, with the fewest crossing links a ring allows (2)
    placement = record.placement
    assert placement is not None
    per_node = Counter(placement.values())
    assert set(per_node) == set(netns_nodes) and max(per_node.values()) <= MAX_PODS, placement
    ring = [(f"h{k}", f"h{k % 6 + 1}") for k in range(1, 7)]
    crossing = {f"{a}-{b}" for a, b in ring if placement[a] != placement[b]}
    assert len(crossing) == 2, placement
    # each pod runs where it was placed: the kube-scheduler followed the pin
    pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=record.namespace).stdout)["items"]
    assert {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods} == placement
    assert {name: ep.node for name, ep in record.endpoints.items()} == placement

    # every ping passed, and exactly the checks between nodes say they crossed (2 links, both ways)
    assert record.checks and all(c.ok for c in record.checks), [c for c in record.checks if not c.ok]
    for check in record.checks:
        assert check.crossed_nodes == (placement[check.source] != placement[check.target]), check
    assert sum(c.crossed_nodes and not c.by_name for c in record.checks) == 4

    # the NADs of the crossing links carry their tunnel; on each node the agent made exactly those devices
    nads = json.loads(
        k8s_kubectl("get", "network-attachment-definitions", "-o", "json", namespace=record.namespace).stdout
    )
    tunnels = {
        n["metadata"]["name"]: (
            json.loads(n["metadata"]["annotations"][naming.ANNOTATION_TUNNEL]),
            json.loads(n["spec"]["config"]),
        )
        for n in nads["items"]
        if naming.ANNOTATION_TUNNEL in n["metadata"].get("annotations", {})
    }
    assert set(tunnels) == crossing
    nodes = json.loads(k8s_kubectl("get", "nodes", "-o", "json").stdout)["items"]
    address = {n["metadata"]["name"]: n["metadata"]["labels"].get(naming.LABEL_TUNNEL_ADDRESS) for n in nodes}
    for node in netns_nodes:
        made = links(node_netns(node), "vxlan")
        assert set(made) == {t["device"] for t, _ in tunnels.values()}, made
        for tunnel, config in tunnels.values():
            device = made[tunnel["device"]]
            data = device["linkinfo"]["info_data"]
            assert (data["id"], data["port"], data["local"]) == (tunnel["vni"], 4789, address[node])
            assert device["master"] == config["bridge"]
            others = {address[n] for n in netns_nodes if n != node}
            assert flooded_to(node_netns(node), tunnel["device"]) == others

    # a tunnel device deleted under the live lesson is made again by the agent's next pass (level-triggered),
    # and the link carries pings again
    first = sorted(crossing)[0]
    a, b = first.split("-")
    device = tunnels[first][0]["device"]
    subprocess.run(["ip", "-n", node_netns(placement[a]), "link", "del", device], check=True)
    wait_until(f"{device} made again on {placement[a]}", lambda: device in links(node_netns(placement[a]), "vxlan"), 60)
    target = next(i.address for i in record.endpoints[b].interfaces if i.network == first)
    assert target is not None
    ping = ["exec", a, "--", "ping", "-c", "3", "-W", "2", target.split("/")[0]]
    wait_until(
        f"{a} pings {b} across nodes again",
        lambda: k8s_kubectl(*ping, namespace=record.namespace, check=False).returncode == 0,
        30,
    )

    # the room the worker reads back: 8 pods in all, 6 held by the ring (from the namespace's annotation)
    kb = backend(worker_kubeconfig, instance)
    kb.placement = "nodes"
    rooms = kb.rooms() or []
    assert {r.name: r.pods for r in rooms} == {n: MAX_PODS - per_node[n] for n in netns_nodes}
    kb.close()

    client.delete(livelesson)
    wait_for(store, livelesson, {"deleted"}, timeout=120)

    # the agents remove their devices and the bridges they marked once the pods are gone
    def marked(node: str) -> list[str]:
        found = {**links(node_netns(node), "vxlan"), **links(node_netns(node), "bridge")}
        return [name for name, link in found.items() if link.get("ifalias", "").startswith(naming.TUNNEL_MARK)]

    wait_until("the VXLAN devices and the marked bridges gone from both nodes", lambda: not any(map(marked, NODES)), 90)


def test_the_node_agent_refuses_a_hostile_nad_and_makes_nothing(
    netns_nodes: tuple[str, ...], k8s_kubectl: Kubectl, k8s_namespace: str
) -> None:
    """A NAD anyone with NAD rights could write: our label and a well-formed tunnel, but a bridge that is not
    a lesson's (the nodes' main bridge). The agent says why, by name, and makes no device."""
    device = "lsxdeadbeef0042"
    nad = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "hostile",
            "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
            "annotations": {
                naming.ANNOTATION_TUNNEL: json.dumps({"device": device, "vni": 4242, "nodes": list(netns_nodes)})
            },
        },
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "bridge", "bridge": "lsk8smain0"})},
    }
    k8s_kubectl("apply", "-f", "-", stdin=json.dumps(nad), namespace=k8s_namespace)
    for node in netns_nodes:
        agent_log = cluster.STATE / "logs" / f"lesson-agent-{node}.log"

        def refused(log: Path = agent_log) -> bool:
            return any(
                "tunnel not made" in line and f"{k8s_namespace}/hostile" in line and "no bridge of ours" in line
                for line in log.read_text(errors="replace").splitlines()
            )

        wait_until(f"{node}'s agent refusing {k8s_namespace}/hostile", refused, 45)
        assert device not in links(node_netns(node), "vxlan")


AGENT = "system:serviceaccount:lesson-scheduler:lesson-scheduler-node-agent"


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("list", "network-attachment-definitions.k8s.cni.cncf.io", True),
        ("watch", "network-attachment-definitions.k8s.cni.cncf.io", True),
        ("get", "nodes", True),
        ("list", "nodes", True),
        ("create", "network-attachment-definitions.k8s.cni.cncf.io", False),
        ("delete", "network-attachment-definitions.k8s.cni.cncf.io", False),
        ("patch", "nodes", False),
        ("list", "pods", False),
        ("get", "secrets", False),
        ("create", "pods/exec", False),
    ],
)
def test_the_node_agents_role_reads_nads_and_nodes_and_nothing_else(
    k8s_kubectl: Kubectl, verb: str, resource: str, allowed: bool
) -> None:
    """config/k8s/node-agent.yaml as the API server enforces it, for the agent's ServiceAccount."""
    proc = k8s_kubectl("auth", "can-i", verb, resource, "--all-namespaces", f"--as={AGENT}", check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, proc.stdout, proc.stderr)
