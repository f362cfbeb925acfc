"""The local backend's nodes, the underlay that joins them, and the VXLAN tunnels a split lesson crosses.

Each node is a network namespace of ours (:func:`naming.node_netns`), like a host of a cluster. With more
than one, an underlay namespace of ours holds a bridge, the "switch" between the hosts; each node has an
uplink (a veth, ``underlay0``) on it with an address of :data:`UNDERLAY_SUBNET`. Every address involved
lives in namespaces this project made, so nothing touches the host's own network.

A network whose pods sit on several nodes gets one VXLAN device on each of them (the plan's
:class:`~scheduler.core.plan.Tunnel`): a port of the network's bridge, sending over the uplink, flooding to
the other nodes through all-zero FDB entries (head-end replication, as flannel and containerlab's vxlan
links do). On real hosts the same devices would ride the hosts' own network; only the underlay is
emulated here.

Devices carry the live lesson's mark in their alias, like its bridges; a device of that name or a VNI
already used by something else is refused, never joined (:class:`PermanentError`).
"""

from __future__ import annotations

import fcntl
import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from scheduler.core import naming
from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import Network
from workers import vxlan
from workers.backends.local.net import netns, rtnetlink

__all__ = ["UNDERLAY_SUBNET", "VXLAN_PORT", "Nodes"]

log = structlog.get_logger("workers.backends.local")  # the local backend's events, under one logger name

# only inside namespaces of ours (the underlay and the nodes' uplinks): no pod and no host route sees it
UNDERLAY_SUBNET = ipaddress.IPv4Network("10.249.0.0/24")
UNDERLAY_BRIDGE = "underlay"
UPLINK = "underlay0"  # each node's end of its veth to the underlay bridge
# VXLAN adds 50 bytes: an uplink this large lets a tunnel carry the pods' full 1500-byte frames
UPLINK_MTU = vxlan.TUNNEL_MTU + 50
VXLAN_PORT = vxlan.VXLAN_PORT
_CALL = 20.0


def _ip(node: str, lines: Sequence[str], *, tool: str = "ip", force: bool = False) -> str:
    """``ip -batch`` (or ``bridge -batch``) inside ``node``; the error output, or "" on success."""
    argv = [tool, *(["-force"] if force else []), "-batch", "-"]
    proc = netns.run(argv, netns=node, timeout=_CALL, input="\n".join(lines).encode() + b"\n")
    return proc.stderr.decode(errors="replace").strip() if proc.returncode else ""


class Nodes:
    """An instance's nodes: names, their underlay addresses, the underlay itself and the tunnels."""

    def __init__(self, instance: str, count: int, root: Path) -> None:
        self.instance = instance
        self.names = tuple(naming.node_netns(instance, k) for k in range(count))
        self.underlay = naming.underlay_netns(instance)
        self._lock = root / "underlay.lock"

    def address(self, node: str) -> str:
        """The node's uplink address; a node that is not this instance's is refused."""
        if node not in self.names:
            raise PermanentError(
                f"node {node!r} is not one of this backend's {len(self.names)} nodes (LESSON_LOCAL_NODES); "
                "was it placed when more were configured?"
            )
        return str(UNDERLAY_SUBNET.network_address + self.names.index(node) + 1)

    def known(self, names: Sequence[str]) -> list[str]:
        """Of this instance's possible node names, those among ``names`` (any node count ever configured)."""
        possible = {naming.node_netns(self.instance, k) for k in range(64)}
        return sorted(n for n in names if n in possible)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self._lock.parent.mkdir(parents=True, exist_ok=True)
        with self._lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # --- the underlay ----------------------------------------------------------------------------------

    def ensure_joined(self, nodes: Sequence[str]) -> None:
        """Every node of ``nodes`` exists and has its uplink on the underlay bridge, with its address and up.
        Idempotent, and repairs a half-made uplink (a crash between two of its steps)."""
        for node in nodes:
            self.address(node)  # refuses foreign names before anything is made
        with self._exclusive():
            netns.add(self.underlay, loopback=False)
            if UNDERLAY_BRIDGE not in rtnetlink.link_table(self.underlay):
                lines = [f"link add {UNDERLAY_BRIDGE} type bridge", f"link set {UNDERLAY_BRIDGE} up"]
                error = _ip(self.underlay, lines)
                if error:
                    raise TemporaryError(f"cannot make the underlay bridge in {self.underlay}: {error}")
            for node in nodes:
                netns.add(node, loopback=False)
                self._uplink(node)

    def _uplink(self, node: str) -> None:
        port = f"n{self.names.index(node)}"  # its end on the underlay bridge
        if UPLINK not in rtnetlink.link_table(node):
            # a leftover underlay end (its node deleted and made again) goes first
            _ip(self.underlay, [f"link del {port}"])
            error = _ip(
                self.underlay,
                [f"link add {port} mtu {UPLINK_MTU} type veth peer name {UPLINK} mtu {UPLINK_MTU} netns {node}"],
            )
            if error:
                raise TemporaryError(f"cannot join node {node} to the underlay: {error}")
        error = _ip(self.underlay, [f"link set {port} master {UNDERLAY_BRIDGE} up"])
        error = error or _ip(node, [f"address replace {self.address(node)}/24 dev {UPLINK}", f"link set {UPLINK} up"])
        if error:
            raise TemporaryError(f"cannot join node {node} to the underlay: {error}")

    def remove_underlay(self) -> None:
        """The underlay namespace goes (with it every uplink's far end, so the nodes' ends too)."""
        netns.delete(self.underlay)

    # --- tunnels -----------------------------------------------------------------------------------------

    def ensure_tunnel(self, node: str, network: Network, alias: str) -> None:
        """The network's VXLAN device on ``node``: a port of its bridge there, flooding to its other nodes.
        The bridge must exist. Idempotent; a device of that name or VNI that is not ours is refused."""
        tunnel = network.tunnel
        assert tunnel is not None and node in tunnel.nodes
        device = rtnetlink.link_table(node).get(tunnel.device)
        # unmarked: made by a crashed apply before its alias was set; its name is a hash of this live lesson
        if device is not None and device.alias not in ("", alias):
            raise PermanentError(f"VXLAN device {tunnel.device} on {node} is not ours (mark {device.alias!r})")
        if device is None:
            error = _ip(node, vxlan.add(tunnel.device, tunnel.vni, self.address(node), uplink=UPLINK))
            if error and tunnel.device not in rtnetlink.link_table(node):
                if vxlan.collides(error):  # the name is free, so the VNI is taken
                    raise PermanentError(
                        f"VNI {tunnel.vni} of network {network.nad} is already used on {node} by another live "
                        f"lesson's link (a hash collision); refused rather than joined: {error}"
                    )
                raise TemporaryError(f"cannot make VXLAN device {tunnel.device} on {node}: {error}")
        error = _ip(node, vxlan.join(tunnel.device, alias, network.bridge))
        if error:
            raise TemporaryError(f"cannot join VXLAN device {tunnel.device} to {network.bridge} on {node}: {error}")
        # appending an existing entry is a no-op for the kernel, so this converges after a crash
        remotes = [self.address(other) for other in tunnel.nodes if other != node]
        error = _ip(node, vxlan.flood(tunnel.device, remotes), tool="bridge")
        if error:
            raise TemporaryError(f"cannot point VXLAN device {tunnel.device} on {node} at its peers: {error}")
