"""The plan: every name, subnet, interface and check of one live lesson, decided here and nowhere else.

Pure and deterministic: the same (lesson, live lesson id, session, instance, pool, image substitute) gives
the same plan. Backends execute a plan; they never invent names.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.core import naming
from scheduler.core.checks import is_node_name
from scheduler.core.errors import LessonError, PermanentError, Problem
from scheduler.core.lessons import Flavor, Presentation, ResolvedEndpoint, ResolvedLesson
from scheduler.core.naming import (
    LABEL_DEPLOYMENT,
    LABEL_ENDPOINT,
    LABEL_INSTANCE,
    LABEL_LESSON,
    LABEL_LIVELESSON,
    LABEL_MANAGED_BY,
    LABEL_SESSION,
    MANAGED_BY,
    bridge_name,
    main_bridge_name,
    main_network_name,
    network_name,
)

__all__ = [
    "CNI_VERSION",
    "MAIN_INTERFACE",
    "MAIN_NETWORK",
    "MAIN_POOL",
    "POD_LIMITS",
    "POD_PIDS_LIMIT",
    "POD_REQUESTS",
    "SUBNET_POOL",
    "SUBSTITUTE_COMMAND",
    "UNTRUSTED_CAPABILITIES",
    "Attachment",
    "Network",
    "Plan",
    "Pod",
    "Probe",
    "Resources",
    "Tunnel",
    "make_plan",
]

CNI_VERSION = "0.4.0"
# The seed's "main" network: every pod's eth0. On Kubernetes it is the cluster's default network; the local
# backend makes one per live lesson (a bridge of its own, static addresses from the plan).
MAIN_NETWORK = "main"
MAIN_INTERFACE = "eth0"
SUBNET_POOL = "10.10.0.0/16"  # LESSON_SUBNET_POOL's default
MAIN_POOL = "10.250.0.0/16"  # LESSON_MAIN_POOL's default
# what a substituted endpoint runs when its lesson gives no command: the substituted image's entrypoint
# means nothing for the substitute, and a busybox left to its default `sh` would exit at once
SUBSTITUTE_COMMAND = ("sleep", "infinity")


@dataclass(frozen=True)
class Resources:
    cpu_millicores: int
    memory_bytes: int


# Lab images are small Linux boxes or virtual routers; the limits keep one node from being starved by one
# lesson. Kubernetes gets them as the pod's resources, the local backend as each container's cgroup.
POD_REQUESTS = Resources(cpu_millicores=50, memory_bytes=64 << 20)
POD_LIMITS = Resources(cpu_millicores=1000, memory_bytes=1 << 30)
# what an untrusted pod may do beyond an unprivileged process (ping, low ports, dropping to a user); a
# trusted one (virtual routers, which need /dev/net/tun and sysctls) runs privileged, as Antidote ran them
UNTRUSTED_CAPABILITIES = ("NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "CHOWN")
# the local backend's cap on processes per container (a fork bomb in one lesson stays in it)
POD_PIDS_LIMIT = 1024


@dataclass(frozen=True)
class Tunnel:
    """A network's Layer 2 between nodes: on each node of ``nodes`` a VXLAN device ``device`` with ``vni``,
    a port of the network's bridge there, that floods to the other nodes (head-end replication, so the main
    network reaches any number of nodes; a link has two)."""

    device: str
    vni: int
    nodes: tuple[str, ...]  # sorted, at least two


@dataclass(frozen=True)
class Network:
    index: int
    nad: str  # NetworkAttachmentDefinition name, readable: "<a>-<b>"
    cni_name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    a: str
    b: str
    nodes: tuple[str, ...] = ()  # the nodes whose pods attach to it, sorted: its bridge exists on each
    tunnel: Tunnel | None = None  # when those are more than one

    def cni_config(self, ipam_data_dir: str | None = None, address: str | None = None) -> dict[str, Any]:
        """The CNI configuration, as Multus would pass it to the bridge plugin: host-local addresses, or
        with ``address`` (the main network's, decided by the plan) that one, through the static plugin."""
        ipam: dict[str, Any] = {"type": "host-local", "subnet": str(self.subnet)}
        if address is not None:  # "": the static plugin without an address (what a DEL needs)
            ipam = {"type": "static", "addresses": [{"address": address}] if address else []}
        elif ipam_data_dir is not None:
            ipam["dataDir"] = ipam_data_dir
        return {
            "cniVersion": CNI_VERSION,
            "name": self.cni_name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": False,
            "ipMasq": False,
            "hairpinMode": True,
            "forceAddress": False,
            "ipam": ipam,
        }

    def cni_json(self, ipam_data_dir: str | None = None) -> str:
        return json.dumps(self.cni_config(ipam_data_dir), sort_keys=True)

    def spanning_address(self, endpoint: str) -> str | None:
        """``endpoint``'s address (CIDR) on a link whose ends run on different nodes, else None. Each node's
        host-local keeps its own store, so two nodes would both hand out the first address: the plan decides
        instead (``a`` the subnet's first host, ``b`` its second)."""
        if self.tunnel is None or endpoint not in (self.a, self.b):
            return None
        host = self.subnet.network_address + (1 if endpoint == self.a else 2)
        return f"{host}/{self.subnet.prefixlen}"


@dataclass(frozen=True)
class Attachment:
    name: str  # net1, net2, ... in connection definition order
    network: str  # the Network's nad name
    peer: str


@dataclass(frozen=True)
class Pod:
    endpoint: str
    name: str  # the Kubernetes pod name
    netns: str  # the local backend's network namespace name
    image: str
    flavor: Flavor
    ports: tuple[int, ...]
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    forwarding: bool
    labels: Mapping[str, str]
    interfaces: tuple[Attachment, ...]
    # the image the lesson declared; differs from ``image`` when LESSON_IMAGE_SUBSTITUTE replaced it
    # (left empty, it is ``image``)
    declared_image: str = ""
    container: str = ""  # the local backend's container id (runc), from naming.container_id
    # eth0's address on the local backend's main network (CIDR); Kubernetes' default network gives its own
    main_address: str = ""
    presentations: tuple[Presentation, ...] = ()
    node: str = ""  # the local backend's node (namespace) the pod runs on, from the placement

    def __post_init__(self) -> None:
        if not self.declared_image:
            object.__setattr__(self, "declared_image", self.image)

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        """Every interface a local pod gets: eth0 on the main network, then the links' (``interfaces``)."""
        main = (Attachment(MAIN_INTERFACE, MAIN_NETWORK, ""),) if self.main_address else ()
        return main + self.interfaces

    @property
    def substituted(self) -> bool:
        """True when the pod runs LESSON_IMAGE_SUBSTITUTE instead of the image its lesson declared."""
        return self.image != self.declared_image


@dataclass(frozen=True)
class Probe:
    """Ping ``target`` from ``source`` over ``network``; the address is known only once pods are up."""

    source: str
    target: str
    network: str
    interface: str  # the target's interface on that network
    # ping the target by its name (resolved inside the source pod, which must give the target's eth0
    # address) rather than by an address: proves the names as well as the main network
    by_name: bool = False
    crosses: bool = False  # source and target run on different nodes: the packets cross a tunnel


@dataclass(frozen=True)
class Plan:
    livelesson: str
    lesson: str
    session: str
    instance: str
    namespace: str
    ready_delay: int
    labels: Mapping[str, str]
    networks: tuple[Network, ...]
    pods: tuple[Pod, ...]
    checks: tuple[Probe, ...]
    node_netns: str = field(default="")
    deployment: str = ""
    # LESSON_IMAGE_SUBSTITUTE: the image every pod runs instead of its own, or None (each runs its own)
    image_substitute: str | None = None
    cgroup: str = ""  # the local backend's cgroup parent of the lesson's containers
    main: Network | None = None  # the local backend's main network (eth0), one per live lesson
    # the pods' nodes come from a placement (Pod.node is where each must run), not from the backend's own
    # rule (the seed's affinity on Kubernetes)
    placed: bool = False

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes the plan's pods run on, sorted."""
        return tuple(sorted({p.node for p in self.pods}))

    @property
    def tunnels(self) -> tuple[Network, ...]:
        """The networks that span nodes (the main network first when it does)."""
        return tuple(n for n in (*([self.main] if self.main else []), *self.networks) if n.tunnel is not None)

    def network(self, nad: str) -> Network:
        if nad == MAIN_NETWORK and self.main is not None:
            return self.main
        return next(n for n in self.networks if n.nad == nad)

    def cni_config(self, pod: Pod, attachment: Attachment, ipam_data_dir: str | None = None) -> dict[str, Any]:
        """The CNI configuration of one of ``pod``'s attachments (the main network's carries its address)."""
        network = self.network(attachment.network)
        address = pod.main_address if attachment.network == MAIN_NETWORK else None
        return network.cni_config(ipam_data_dir, address)

    def hosts(self) -> str:
        """The hosts file every pod of a local live lesson sees as /etc/hosts: each endpoint's name and its
        eth0 address, as Kubernetes DNS names each endpoint's Service in the lesson's namespace. Nothing of
        another live lesson is in it."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{p.main_address.split('/')[0]}\t{p.endpoint}" for p in self.pods if p.main_address]
        return "\n".join(lines) + "\n"

    def pod(self, endpoint: str) -> Pod:
        """The pod of ``endpoint``; ``PermanentError`` naming the known ones if the lesson has none."""
        found = next((p for p in self.pods if p.endpoint == endpoint), None)
        if found is None:
            known = ", ".join(p.endpoint for p in self.pods)
            raise PermanentError(f"live lesson {self.livelesson} has no endpoint {endpoint!r} (known: {known})")
        return found


def make_plan(
    lesson: ResolvedLesson,
    livelesson: str,
    session: str,
    *,
    instance: str,
    subnet_pool: str = SUBNET_POOL,
    deployment: str = "",
    image_substitute: str | None = None,
    main_pool: str = MAIN_POOL,
    names: bool = True,
    placement: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of one live lesson.

    Every pod has eth0 on the main network: the local backend's is a /24 of ``main_pool`` (the first that
    none of the lesson's links uses), pod k of the lesson getting its address k+2. With ``names``
    (LESSON_CHECK_NAMES), each link direction has a second check that pings the peer by its name over eth0.

    With ``image_substitute`` (LESSON_IMAGE_SUBSTITUTE), every pod runs that image instead of the one its
    lesson declared (kept as ``Pod.declared_image``). A substituted pod whose lesson gives no ``command``
    runs ``sleep infinity`` without the lesson's ``args``, which were meant for the declared image's
    entrypoint. Names, subnets, labels, interfaces and checks do not depend on it.

    ``placement`` (endpoint -> node, from :func:`scheduler.core.placement.place`) puts pods on nodes; without
    it every pod is on the instance's node 0, as the seed's affinity keeps a lesson on one node. A network
    whose pods sit on several nodes gets a :class:`Tunnel`, and each check says whether it crosses nodes."""
    image_substitute = image_substitute or None
    scope = _Scope(instance, livelesson, _nodes(lesson, instance, placement))
    labels = _labels(lesson, scope, session, deployment)
    subnets = _subnets(lesson, subnet_pool)
    main = _main_network(scope, _main_subnet(lesson, subnets, main_pool))
    networks = _link_networks(lesson, scope, subnets)
    pods = _pods(lesson, scope, labels, networks, main, image_substitute)
    checks = _link_probes(pods, networks, scope) + (_name_probes(networks, scope) if names else ())
    return Plan(
        livelesson=livelesson,
        lesson=lesson.slug,
        session=session,
        instance=instance,
        namespace=naming.namespace(instance, livelesson),
        ready_delay=lesson.ready_delay,
        labels=labels,
        networks=networks,
        pods=pods,
        checks=checks,
        node_netns=naming.node_netns(instance),
        deployment=deployment,
        image_substitute=image_substitute,
        cgroup=naming.cgroup_parent(instance, livelesson),
        main=main,
        placed=placement is not None,
    )


@dataclass(frozen=True)
class _Scope:
    """The live lesson a plan is for (its instance and id, which every name hashes) and each endpoint's node."""

    instance: str
    livelesson: str
    nodes: Mapping[str, str]  # endpoint -> node

    def crosses(self, a: str, b: str) -> bool:
        return self.nodes[a] != self.nodes[b]


def _nodes(lesson: ResolvedLesson, instance: str, placement: Mapping[str, str] | None) -> dict[str, str]:
    """endpoint -> node; the placement must name every endpoint of the lesson, and nothing else."""
    endpoints = [ep.name for ep in lesson.endpoints]
    if placement is None:
        return dict.fromkeys(endpoints, naming.node_netns(instance))
    if set(placement) != set(endpoints):
        raise PermanentError(f"the placement names endpoints {sorted(placement)}, the lesson has {sorted(endpoints)}")
    bad = sorted(n for n in set(placement.values()) if not is_node_name(n))
    if bad:
        raise PermanentError(f"the placement names nodes that are not node names: {bad!r}")
    return {e: placement[e] for e in endpoints}


def _labels(lesson: ResolvedLesson, scope: _Scope, session: str, deployment: str) -> dict[str, str]:
    """The labels every object of the live lesson carries (a pod adds its endpoint's)."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: scope.instance,
        LABEL_DEPLOYMENT: deployment,
        LABEL_LIVELESSON: scope.livelesson,
        LABEL_LESSON: lesson.slug,
        LABEL_SESSION: session,
    }


def _subnets(lesson: ResolvedLesson, pool: str) -> list[ipaddress.IPv4Network]:
    """Each link's subnet: the one its connection gives, else the next /24 of ``pool`` that none gives."""
    explicit = [link.subnet for link in lesson.links]
    taken = [n for n in explicit if n is not None]
    free = (s for s in ipaddress.IPv4Network(pool).subnets(new_prefix=24) if not any(s.overlaps(t) for t in taken))
    out = []
    for i, net in enumerate(explicit):
        if net is None:
            net = next(free, None)
            if net is None:
                raise LessonError(
                    [Problem(lesson.source, f"connections[{i}].subnet", f"the subnet pool {pool} is exhausted")]
                )
        out.append(net)
    return out


def _main_subnet(lesson: ResolvedLesson, taken: list[ipaddress.IPv4Network], pool: str) -> ipaddress.IPv4Network:
    """The first /24 of ``pool`` that no link of the lesson uses, with room for every endpoint."""
    for net in ipaddress.IPv4Network(pool).subnets(new_prefix=max(24, ipaddress.IPv4Network(pool).prefixlen)):
        if not any(net.overlaps(t) for t in taken):
            if net.num_addresses - 3 < len(lesson.endpoints):  # network, .1 (kept for a gateway), broadcast
                break
            return net
    raise LessonError([Problem(lesson.source, "endpoints", f"the main network pool {pool} has no room for it")])


def _main_network(scope: _Scope, subnet: ipaddress.IPv4Network) -> Network:
    """The local backend's main network (every pod's eth0), on every node the lesson uses."""
    instance, livelesson = scope.instance, scope.livelesson
    main = Network(
        0, MAIN_NETWORK, main_network_name(instance, livelesson), main_bridge_name(instance, livelesson), subnet, "", ""
    )
    return _spanning(main, tuple(sorted(set(scope.nodes.values()))), scope, MAIN_NETWORK)


def _nad_names(lesson: ResolvedLesson) -> list[str]:
    """Each link's network name, "<a>-<b>": parallel links get -2, -3, ...; so does a name another pair
    already produced ("a-b" + "c" and "a" + "b-c" both give "a-b-c")."""
    used: list[str] = []
    for link in lesson.links:
        base = f"{link.a.name}-{link.b.name}"
        nad, k = base, 1
        while nad in used:
            k += 1
            nad = f"{base}-{k}"
        used.append(nad)
    return used


def _link_networks(lesson: ResolvedLesson, scope: _Scope, subnets: list[ipaddress.IPv4Network]) -> tuple[Network, ...]:
    """One network per link, in the file's order, on the nodes of its two ends."""
    instance, livelesson = scope.instance, scope.livelesson
    networks = []
    for link, subnet, nad in zip(lesson.links, subnets, _nad_names(lesson), strict=True):
        i, a, b = link.index, link.a.name, link.b.name
        bridge = bridge_name(instance, livelesson, i)
        network = Network(i, nad, network_name(instance, livelesson, i), bridge, subnet, a, b)
        networks.append(_spanning(network, tuple(sorted({scope.nodes[a], scope.nodes[b]})), scope, i))
    return tuple(networks)


def _spanning(network: Network, nodes: tuple[str, ...], scope: _Scope, index: int | str) -> Network:
    """The network on its nodes, with a tunnel between them when there are several."""
    tunnel = None
    if len(nodes) > 1:
        instance, livelesson = scope.instance, scope.livelesson
        tunnel = Tunnel(naming.vxlan_name(instance, livelesson, index), naming.vni(instance, livelesson, index), nodes)
    return dataclasses.replace(network, nodes=nodes, tunnel=tunnel)


def _runs(ep: ResolvedEndpoint, substitute: str | None) -> tuple[str, tuple[str, ...] | None, tuple[str, ...] | None]:
    """What the endpoint's pod runs: (image, command, args), the substitute's when there is one."""
    if substitute is None or substitute == ep.image:
        return ep.image, ep.command, ep.args
    if not ep.command:
        return substitute, SUBSTITUTE_COMMAND, None
    return substitute, ep.command, ep.args


def _interfaces(endpoint: str, networks: tuple[Network, ...]) -> tuple[Attachment, ...]:
    """The endpoint's link interfaces, net1, net2, ... in the order of its links in the file."""
    mine = [n for n in networks if endpoint in (n.a, n.b)]
    return tuple(Attachment(f"net{k}", n.nad, n.b if n.a == endpoint else n.a) for k, n in enumerate(mine, start=1))


def _pods(
    lesson: ResolvedLesson,
    scope: _Scope,
    labels: Mapping[str, str],
    networks: tuple[Network, ...],
    main: Network,
    substitute: str | None,
) -> tuple[Pod, ...]:
    """One pod per endpoint; pod k gets address k+2 of the main network."""
    instance, livelesson = scope.instance, scope.livelesson
    pods = []
    for k, ep in enumerate(lesson.endpoints):
        image, command, args = _runs(ep, substitute)
        pods.append(
            Pod(
                endpoint=ep.name,
                name=ep.name,
                netns=naming.pod_netns(instance, livelesson, ep.name),
                image=image,
                flavor=ep.flavor,
                ports=ep.ports,
                command=command,
                args=args,
                forwarding=ep.forwarding,
                labels={**labels, LABEL_ENDPOINT: ep.name},
                interfaces=_interfaces(ep.name, networks),
                declared_image=ep.image,
                container=naming.container_id(instance, livelesson, ep.name),
                main_address=f"{main.subnet.network_address + k + 2}/{main.subnet.prefixlen}",
                presentations=ep.presentations,
                node=scope.nodes[ep.name],
            )
        )
    return tuple(pods)


def _directions(networks: tuple[Network, ...]) -> list[tuple[Network, str, str]]:
    """Both directions of every link: (network, source, target)."""
    return [(n, src, dst) for n in networks for src, dst in ((n.a, n.b), (n.b, n.a))]


def _link_probes(pods: tuple[Pod, ...], networks: tuple[Network, ...], scope: _Scope) -> tuple[Probe, ...]:
    """A ping each way over every link, to the target's interface on it."""
    by_name = {p.endpoint: p for p in pods}
    probes = []
    for n, src, dst in _directions(networks):
        iface = next(i.name for i in by_name[dst].interfaces if i.network == n.nad)
        probes.append(Probe(src, dst, n.nad, iface, crosses=scope.crosses(src, dst)))
    return tuple(probes)


def _name_probes(networks: tuple[Network, ...], scope: _Scope) -> tuple[Probe, ...]:
    """A ping by name over eth0 for each linked (source, target) pair, once however many links join them."""
    pairs = dict.fromkeys((src, dst) for _, src, dst in _directions(networks))
    return tuple(
        Probe(src, dst, MAIN_NETWORK, MAIN_INTERFACE, by_name=True, crosses=scope.crosses(src, dst))
        for src, dst in pairs
    )
