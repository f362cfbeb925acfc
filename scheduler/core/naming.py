"""Every name and mark this project gives what it creates, written once. Isolation depends on them: two
live lessons (or two deployments) must never share a namespace, bridge, CNI network or mark, and cleanup
finds exactly its own objects by them. The plan, the store and the backends ask here; none composes a
name itself. Pure.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "ANNOTATION_PLACEMENT",
    "ANNOTATION_TUNNEL",
    "BRIDGE_NAME",
    "LABEL_DEPLOYMENT",
    "LABEL_ENDPOINT",
    "LABEL_INSTANCE",
    "LABEL_LESSON",
    "LABEL_LIVELESSON",
    "LABEL_MANAGED_BY",
    "LABEL_SESSION",
    "LABEL_TUNNEL_ADDRESS",
    "MANAGED_BY",
    "TUNNEL_MARK",
    "VXLAN_NAME",
    "bridge_name",
    "cgroup_instance",
    "cgroup_parent",
    "container_id",
    "instance_mark",
    "main_bridge_name",
    "main_network_name",
    "mark",
    "namespace",
    "network_name",
    "node_netns",
    "pod_netns",
    "service_host",
    "underlay_netns",
    "vni",
    "vxlan_name",
]

MANAGED_BY = "lesson-scheduler"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "lessons.io/instance"
LABEL_LIVELESSON = "lessons.io/livelesson"
LABEL_LESSON = "lessons.io/lesson"
LABEL_SESSION = "lessons.io/session"
LABEL_ENDPOINT = "lessons.io/endpoint"
# which deployment made it: two deployments sharing an instance name never collect each other's objects
LABEL_DEPLOYMENT = "lessons.io/deployment"

# Kubernetes, lessons split over nodes. A node's label: the address its VXLAN devices send from (its
# underlay); nodes carrying it are the ones lessons are placed on (LESSON_K8S_PLACEMENT=nodes), and the node
# agent reads the others' to flood to them.
LABEL_TUNNEL_ADDRESS = "lessons.io/tunnel-address"
# a NetworkAttachmentDefinition's annotation: the tunnel its link needs ({"device", "vni", "nodes"})
ANNOTATION_TUNNEL = "lessons.io/tunnel"
# a lesson namespace's annotation: endpoint -> node, so the room left on each node is read from the API
ANNOTATION_PLACEMENT = "lessons.io/placement"
# the alias (IFLA_IFALIAS) the node agent marks its VXLAN devices and their bridges with, before
# "<namespace>/<nad>" (no space: `ip -batch` splits on it)
TUNNEL_MARK = "lessons.io/tunnel="

# What the names below look like, for whoever reads one back from a hostile place (a Kubernetes object)
BRIDGE_NAME = re.compile(r"lsb[0-9a-f]{12}")
VXLAN_NAME = re.compile(r"lsx[0-9a-f]{12}")


def namespace(instance: str, livelesson: str) -> str:
    """The live lesson's Kubernetes namespace, and the local backend's prefix for its pods."""
    return f"{instance}-{livelesson}"


def pod_netns(instance: str, livelesson: str, endpoint: str) -> str:
    """The local backend's network namespace of one pod."""
    return f"{namespace(instance, livelesson)}-{endpoint}"


def node_netns(instance: str, index: int = 0) -> str:
    """The local backend's node ``index``: the network namespace that holds the bridges of the pods placed
    on it. Node 0 keeps the name of the single node it was before there were several."""
    return f"{instance}-node" if index == 0 else f"{instance}-node{index}"


def underlay_netns(instance: str) -> str:
    """The local backend's underlay: the namespace whose bridge joins its nodes, as a switch joins hosts."""
    return f"{instance}-underlay"


def container_id(instance: str, livelesson: str, endpoint: str) -> str:
    """The local backend's container of one pod (runc's id): the pod's namespace name, unique on the host."""
    return pod_netns(instance, livelesson, endpoint)


def cgroup_instance(instance: str) -> str:
    """The cgroup (relative to each hierarchy's root) of an instance's local containers."""
    return f"/{MANAGED_BY}/{instance}"


def cgroup_parent(instance: str, livelesson: str) -> str:
    """The cgroup that holds one live lesson's containers, one child each."""
    return f"{cgroup_instance(instance)}/{livelesson}"


def instance_mark(instance: str) -> str:
    """What every mark of an instance starts with (bridge aliases, pod process argv)."""
    return f"{MANAGED_BY}/{instance}/"


def mark(instance: str, livelesson: str) -> str:
    """The ownership mark of one live lesson's local objects; a bridge adds ``/<link>``, a pod ``/<endpoint>``."""
    return f"{instance_mark(instance)}{livelesson}"


def _digest(instance: str, livelesson: str, index: int | str) -> str:
    return hashlib.sha256(f"{instance}/{livelesson}/{index}".encode()).hexdigest()


def bridge_name(instance: str, livelesson: str, index: int) -> str:
    """Linux allows 15 characters; 48 bits of hash keep two live lessons off one bridge."""
    return "lsb" + _digest(instance, livelesson, index)[:12]


def network_name(instance: str, livelesson: str, index: int) -> str:
    """host-local keys its allocations on this name, so it must be as unique as the bridge."""
    return "lsn" + _digest(instance, livelesson, index)[:12]


def main_bridge_name(instance: str, livelesson: str) -> str:
    """The local backend's management bridge of one live lesson (its pods' eth0): hashed like a link's, with
    its own prefix, so it can never be a link's bridge."""
    return "lsm" + _digest(instance, livelesson, "main")[:12]


def main_network_name(instance: str, livelesson: str) -> str:
    """The CNI network name of that management network."""
    return "lsq" + _digest(instance, livelesson, "main")[:12]


def vxlan_name(instance: str, livelesson: str, index: int | str) -> str:
    """The VXLAN device that carries link ``index`` (or ``"main"``) between nodes; the same on every node."""
    return "lsx" + _digest(instance, livelesson, index)[:12]


def vni(instance: str, livelesson: str, index: int | str) -> int:
    """The VXLAN network identifier of that link: 24 bits of the same hash (1..16777214; 0 and the top
    value are avoided). A kernel refuses a second device with one VNI, and the backend refuses a device it
    did not mark, so a collision fails the later lesson instead of joining two (docs/architecture.md)."""
    return int(_digest(instance, livelesson, index)[12:20], 16) % 0xFFFFFE + 1


def service_host(namespace: str, endpoint: str, domain: str = "cluster.local") -> str:
    """The DNS name of an endpoint's Service on Kubernetes (the Service is named after the endpoint)."""
    return f"{endpoint}.{namespace}.svc.{domain}"
