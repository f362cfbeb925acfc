"""Which tunnel ends a node needs, from the NetworkAttachmentDefinitions and Nodes the API gives. Pure.

Everything read here is a Kubernetes object anyone with NAD rights in some namespace could write, so it is
validated: a NAD counts only when it carries lesson-scheduler's mark, its tunnel annotation names a device
and a VNI of the shapes this project makes, nodes by valid names, and a bridge of our naming. Anything else
is a :class:`Problem` (logged by the agent), never a device.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.core import naming
from scheduler.core.checks import is_node_name

__all__ = ["End", "Problem", "addresses", "ends"]

VNI_MAX = 0xFFFFFE
MAX_NODES = 64


@dataclass(frozen=True)
class End:
    """This node's end of one link's tunnel."""

    device: str
    vni: int
    bridge: str
    remotes: tuple[str, ...]  # the other nodes' tunnel addresses, sorted
    mark: str  # naming.TUNNEL_MARK + "<namespace>/<nad>"


@dataclass(frozen=True)
class Problem:
    where: str  # "<namespace>/<nad>" or "node <name>"
    what: str


def _address(text: Any) -> str | None:
    """A unicast IPv4 address an underlay can carry, or None."""
    try:
        address = ipaddress.IPv4Address(text)
    except (ValueError, TypeError):
        return None
    if address.is_loopback or address.is_multicast or address.is_unspecified or address.is_link_local:
        return None
    return str(address)


def addresses(nodes: Iterable[Mapping[str, Any]]) -> tuple[dict[str, str], list[Problem]]:
    """Node name -> its tunnel address (the label), for the nodes that carry a valid one."""
    found: dict[str, str] = {}
    problems = []
    for node in nodes:
        name = node.get("name")
        label = (node.get("labels") or {}).get(naming.LABEL_TUNNEL_ADDRESS)
        if not isinstance(name, str) or label is None:
            continue
        address = _address(label)
        if address is None:
            problems.append(Problem(f"node {name}", f"{naming.LABEL_TUNNEL_ADDRESS}={label!r} is not a unicast IPv4"))
            continue
        found[name] = address
    return found, problems


def _tunnel(text: Any) -> tuple[str, int, tuple[str, ...]] | str:
    """(device, vni, nodes) from the annotation, or what is wrong with it."""
    try:
        tunnel = json.loads(text)
    except (ValueError, TypeError):
        return "the tunnel annotation is not JSON"
    if not isinstance(tunnel, dict):
        return "the tunnel annotation is not an object"
    device, vni, nodes = tunnel.get("device"), tunnel.get("vni"), tunnel.get("nodes")
    if not isinstance(device, str) or not naming.VXLAN_NAME.fullmatch(device):
        return f"device {device!r} is not a VXLAN device name of ours"
    if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= VNI_MAX:
        return f"vni {vni!r} is not in 1..{VNI_MAX}"
    if (
        not isinstance(nodes, list)
        or not 2 <= len(nodes) <= MAX_NODES
        or len(set(map(str, nodes))) != len(nodes)
        or not all(isinstance(n, str) and is_node_name(n) for n in nodes)
    ):
        return f"nodes {nodes!r} are not 2 to {MAX_NODES} distinct node names"
    return device, vni, tuple(nodes)


def _bridge(config: Any) -> str | None:
    try:
        bridge = json.loads(config).get("bridge")
    except (ValueError, TypeError, AttributeError):
        return None
    return bridge if isinstance(bridge, str) and naming.BRIDGE_NAME.fullmatch(bridge) else None


def ends(node: str, nads: Iterable[Mapping[str, Any]], where: Mapping[str, str]) -> tuple[list[End], list[Problem]]:
    """The tunnel ends ``node`` needs, one per device, from ``nads`` (as the API's JSON) and ``where`` (node ->
    tunnel address, from :func:`addresses`). A device or VNI that two NADs claim goes to neither."""
    found: list[End] = []
    problems: list[Problem] = []
    for nad in nads:
        metadata = nad.get("metadata") or {}
        name = f"{metadata.get('namespace')}/{metadata.get('name')}"
        labels = metadata.get("labels") or {}
        annotation = (metadata.get("annotations") or {}).get(naming.ANNOTATION_TUNNEL)
        if labels.get(naming.LABEL_MANAGED_BY) != naming.MANAGED_BY or annotation is None:
            continue  # not a split link of ours
        tunnel = _tunnel(annotation)
        if isinstance(tunnel, str):
            problems.append(Problem(name, tunnel))
            continue
        device, vni, nodes = tunnel
        if node not in nodes:
            continue
        bridge = _bridge((nad.get("spec") or {}).get("config"))
        if bridge is None:
            problems.append(Problem(name, "its CNI config names no bridge of ours"))
            continue
        missing = sorted(n for n in nodes if n not in where)
        if missing:  # flooding to some nodes only would split the link silently
            problems.append(Problem(name, f"nodes without a {naming.LABEL_TUNNEL_ADDRESS}: {', '.join(missing)}"))
            continue
        remotes = tuple(sorted(where[n] for n in nodes if n != node))
        found.append(End(device, vni, bridge, remotes, naming.TUNNEL_MARK + name))
    claimed: dict[str, int] = {}
    for end in found:
        for key in (end.device, f"vni {end.vni}", end.bridge):
            claimed[key] = claimed.get(key, 0) + 1
    unique = []
    for end in found:
        if max(claimed[end.device], claimed[f"vni {end.vni}"], claimed[end.bridge]) > 1:
            problems.append(Problem(end.mark[len(naming.TUNNEL_MARK) :], "its device, VNI or bridge is claimed twice"))
        else:
            unique.append(end)
    return sorted(unique, key=lambda e: e.device), problems
