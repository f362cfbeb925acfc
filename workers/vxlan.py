"""One end of a tunnel: a VXLAN device, a port of its network's bridge, flooding to the other nodes.

The ``ip`` and ``bridge`` batch lines that make it, written once for the two places that run them: the
local backend's nodes (``workers.backends.local.net.nodes``, inside a node namespace of ours) and the
Kubernetes node agent (``workers.node_agent``, on its own node). Pure: the callers run the lines.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TUNNEL_MTU", "VXLAN_PORT", "add", "collides", "flood", "join"]

TUNNEL_MTU = 1500  # the pods' own frames; the underlay carries 50 bytes more
VXLAN_PORT = 4789  # IANA's


def add(device: str, vni: int, local: str, *, uplink: str | None = None, mtu: int = TUNNEL_MTU) -> list[str]:
    """``ip -batch`` lines that create the device, sending from ``local`` (over ``uplink`` when given)."""
    via = f" dev {uplink}" if uplink else ""
    return [f"link add {device} mtu {mtu} type vxlan id {vni} local {local} dstport {VXLAN_PORT}{via}"]


def join(device: str, alias: str, bridge: str) -> list[str]:
    """``ip -batch`` lines that mark the device as ours and make it a port of ``bridge``, up."""
    return [f"link set {device} alias {alias} master {bridge} up"]


def flood(device: str, remotes: Sequence[str]) -> list[str]:
    """``bridge -batch`` lines: all-zero FDB entries to every other node (head-end replication). Appending
    an entry that exists is a no-op for the kernel, so these converge when run again."""
    return [f"fdb append 00:00:00:00:00:00 dev {device} dst {remote}" for remote in remotes]


def collides(error: str) -> bool:
    """Whether ``ip link add``'s error, for a device name that is free, means its VNI is taken."""
    return "VNI" in error or "exists" in error
