"""The local backend: the seed's worker node on one Linux host, with no cluster.

A "node" network namespace per instance holds the Linux bridges; each pod is its own network namespace
with ``lo`` up; each attachment is made by running the plan's CNI configuration through the real bridge
and host-local plugins, as Multus would. Nothing is created in the host's root network namespace.

What runs in a pod (``pods``, LESSON_LOCAL_PODS, chosen once: a :class:`~.runtime.pod_runtime.PodRuntime`):
``container`` runs the endpoint's image and command with runc in the pod's namespace, after its interfaces
are attached, as a kubelet would (:mod:`.runtime.containers`, images from :mod:`.image_store`); ``emulated``
runs a stand-in process that listens on the declared ports (:mod:`.runtime.emulated`), for hosts without a
container runtime, and says so wherever pods are shown.

Ownership (containerlab's idea): before creating anything, the backend writes
``<state>/<instance>/lessons/<id>/owner.json`` naming every namespace, bridge and attachment it will make,
and the deployment that made them. Bridges carry the mark in their alias and pod processes in their argv.
Destroy reads that record and touches only objects that carry the same mark, and only for its own
deployment; ``list`` reports only its own deployment's lessons, so two deployments that share an instance
name (and this host) never collect each other's lessons as orphans.

Ids arrive from the queue, where anyone with Redis access can write: every path built from one is checked
(a live-lesson id, and a folder that resolves inside the state root) before it is created or removed.

State directory layout::

    <state_dir>/<instance>/
        node.lock                 serialises creating/pruning the node namespace
        underlay.lock             serialises joining nodes to the underlay (several nodes only)
        locks/<id>.lock           serialises applies and destroy of one live lesson (removed by destroy)
        ipam/<cni network>/       host-local's allocations (per instance, not /var/lib/cni)
        lessons/<id>/owner.json   what this live lesson owns
        lessons/<id>/results/     CNI ADD results, so addresses survive a worker restart
        lessons/<id>/hosts        the live lesson's names, every pod's /etc/hosts
        lessons/<id>/pods/        emulated: pid files, written by each pod process once it listens, and
                                  the lock each pod process holds for its life (one process per pod)
        lessons/<id>/containers/  container: one bundle per pod (config, overlay mount, output)
        runc/                     runc's state of this instance's containers
    <image_dir>/                  the image store (:mod:`.image_store`), shared by instances
    cgroups: /lesson-scheduler/<instance>/<id>/<endpoint> in each hierarchy

The rooms it is composed of: :mod:`.ownership` (owner records, paths, locks); :mod:`.runtime` (what runs
in a pod: :mod:`~.runtime.containers` with :mod:`~.runtime.runc`, or :mod:`~.runtime.emulated`);
:mod:`.net` (:mod:`~.net.attachments` through :mod:`~.net.cni`, :mod:`~.net.nodes` and the underlay,
:mod:`~.net.netns` for namespaces, :mod:`~.net.rtnetlink` for links and addresses); :mod:`.image_store`.

Speed: creating and deleting namespaces, ``lo``, link and address reads happen in-process (see
:mod:`.net.netns` and :mod:`.net.rtnetlink`); CNI plugins are started straight inside the node namespace
(no ``nsenter``); every CNI call of an apply runs concurrently with the others and, for emulated pods, with
one launcher that forks all missing pod processes (one Python start per apply, not per pod).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from scheduler.core import naming
from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.placement import NodeRoom, pod_room
from scheduler.core.plan import MAIN_NETWORK, Network, Plan, Pod
from scheduler.core.records import PodKind
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus
from workers.backends.local.image_store import ImageStore
from workers.backends.local.net import cni, netns, rtnetlink
from workers.backends.local.net.attachments import Attachments
from workers.backends.local.net.nodes import Nodes
from workers.backends.local.ownership import Ownership
from workers.backends.local.parallel import parallel
from workers.backends.local.runtime.containers import ContainerRuntime
from workers.backends.local.runtime.emulated import EmulatedRuntime
from workers.backends.local.runtime.pod_runtime import NotReady, PodRuntime
from workers.backends.local.runtime.runc import Runc

__all__ = ["LocalBackend"]

log = structlog.get_logger(__package__)  # the local backend's events, under one logger name


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        *,
        instance: str,
        state_dir: Path,
        cni_path: Path = cni.PLUGIN_DIR,
        deployment: str = "",
        pods: PodKind = "container",
        image_dir: Path | None = None,
        insecure_registries: str = "",
        nodes: int = 1,
        node_max_pods: int = 0,
    ) -> None:
        self.pods = pods
        self.instance = instance
        self.deployment = deployment
        self.root = state_dir / instance
        self.ipam_dir = self.root / "ipam"
        self.cni_path = cni_path
        self.node_netns = naming.node_netns(instance)  # node 0: every pod's node while nothing is placed
        self.node_max_pods = node_max_pods
        self._checked = False
        self._owned = Ownership(instance=instance, root=self.root, deployment=deployment)
        self._attachments = Attachments(self._owned, ipam_dir=self.ipam_dir, cni_path=cni_path)
        self.nodes = Nodes(instance, nodes, self.root)
        images = ImageStore.configured(state_dir, image_dir, insecure_registries)
        runtimes: dict[PodKind, PodRuntime] = {
            "container": ContainerRuntime(self._owned, images=images, runc=Runc(self.root / "runc")),
            "emulated": EmulatedRuntime(self._owned),
        }
        self.runtime = runtimes[pods]  # what applies, observes and enters pods
        # destroy, remains and prune ask every kind: a live lesson may predate a change of LESSON_LOCAL_PODS
        self._runtimes = tuple(runtimes.values())

    def mark(self, livelesson: str) -> str:
        return self._owned.mark(livelesson)

    def check(self) -> None:
        self._checked = False
        self._prerequisites()

    def _prerequisites(self) -> None:
        if not self._checked:
            netns.check_privileges()
            for plugin in ("bridge", "host-local"):
                cni.plugin(self.cni_path, plugin)
            self.runtime.prerequisites()
            self._checked = True

    def _record_owner(self, plan: Plan) -> None:
        self._owned.record(plan, node_netns=self.node_netns, ipam_dir=self.ipam_dir)

    # --- apply -------------------------------------------------------------------------------------

    @property
    def places(self) -> bool:
        """With one node and no pod limit every lesson fits there, and nothing needs placing."""
        return len(self.nodes.names) > 1 or self.node_max_pods > 0

    def rooms(self) -> list[NodeRoom] | None:
        """Each node's free pods (LESSON_NODE_MAX_PODS less the pods every live lesson of this instance,
        whichever deployment, has on it; CPU and memory are not limited here). None when not placing."""
        if not self.places:
            return None
        used = self._owned.pods_per_node()
        huge = 1 << 62
        return [NodeRoom(n, pod_room(None, self.node_max_pods, used[n]), huge, huge) for n in self.nodes.names]

    def apply_networks(self, plan: Plan) -> None:
        self._prerequisites()
        for node in plan.nodes:
            self.nodes.address(node)  # a node this backend does not have is refused before anything is made
        with self._owned.lesson_lock(plan.livelesson):
            self._record_owner(plan)
            with self._owned.node_lock(exclusive=False):
                if plan.tunnels:
                    self.nodes.ensure_joined(plan.nodes)
                else:
                    for node in plan.nodes:
                        netns.add(node, loopback=False)
                self._ensure_bridges(plan)
                mark = self.mark(plan.livelesson)
                ends = [(node, n) for n in plan.tunnels for node in n.nodes]
                parallel(lambda node, n: self.nodes.ensure_tunnel(node, n, _alias(mark, n)), ends)

    def _ensure_bridges(self, plan: Plan) -> None:
        """Every bridge of the plan exists on each of its nodes, carries our mark and is up: one in-process
        rtnetlink batch per node."""
        networks = [*plan.networks, *([plan.main] if plan.main is not None else [])]
        parallel(
            lambda node: self._ensure_bridges_on(node, [n for n in networks if node in n.nodes], plan.livelesson),
            list(plan.nodes),
        )

    def _ensure_bridges_on(self, node: str, networks: list[Network], livelesson: str) -> None:
        mark = self.mark(livelesson)
        for attempt in range(3):
            existing = rtnetlink.bridges(node)
            create, aliases = [], {}
            for n in networks:
                alias = existing.get(n.bridge)
                if alias is None:
                    create.append(n.bridge)
                elif alias and alias.rsplit("/", 1)[0] != mark:
                    raise PermanentError(
                        f"bridge {n.bridge} on {node} exists but is not ours (mark {alias!r}); refusing to use it"
                    )
                if alias != _alias(mark, n):
                    # also claims a bridge the plugin made by itself (after a crash between the two applies):
                    # its name is a hash of this instance, live lesson and link, so nobody else can own it
                    aliases[n.bridge] = _alias(mark, n)
            if not create and not aliases:
                return
            if not rtnetlink.ensure_bridges(node, create, aliases) or attempt == 2:
                return
            # a concurrent apply of the same plan made one first: look again (its alias is checked above)

    def apply_pods(self, plan: Plan) -> None:
        self._prerequisites()
        # outside the lesson's lock (a pull may take a while): what cannot be had fails the lesson before
        # anything of its pods is made
        self.runtime.prepare(plan)
        with self._owned.lesson_lock(plan.livelesson):
            self._apply_pods(plan)

    def _apply_pods(self, plan: Plan) -> None:
        self._record_owner(plan)
        missing_nodes = [node for node in plan.nodes if not netns.exists(node)]
        if missing_nodes:
            raise TemporaryError(f"node namespace {missing_nodes[0]} is missing; networks must be applied first")
        with self._owned.node_lock(exclusive=False):
            self._ensure_bridges(plan)  # cheap when present; without it the plugin would make unmarked ones
            node_links = {node: rtnetlink.link_table(node) for node in plan.nodes}
        # a namespace made just now is empty; only older ones are read back
        found = parallel(lambda p: {} if netns.add(p.netns) else rtnetlink.addresses(p.netns), plan.pods)
        present = {p.endpoint: a for p, a in zip(plan.pods, found, strict=True)}
        self._write_hosts(plan)

        def attach_pod(pod: Pod) -> None:
            # one pod's attachments in order, as Multus adds them: eth0, net1, net2, ... (so they are listed
            # in that order inside the pod, as on the seed's node)
            for itf in pod.attachments:
                self._attachments.ensure(plan, pod, itf, present[pod.endpoint], node_links[pod.node])

        def attach() -> None:
            parallel(attach_pod, plan.pods)  # every pod's CNI ADDs at once: they touch different objects

        self.runtime.start(plan, attach)

    def _write_hosts(self, plan: Plan) -> None:
        """The live lesson's hosts file (the plan's names and eth0 addresses), which every pod sees as its
        /etc/hosts. Written in place, never replaced: a bind mount holds on to the file it was made with."""
        path = self._owned.hosts_file(plan.livelesson)
        text = plan.hosts()
        if not path.exists() or path.read_text() != text:
            with open(path, "w") as handle:
                handle.write(text)

    # --- observe and exec --------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Pod, running: Callable[[Pod], NotReady | None]) -> PodStatus:
        def not_ready(reason: str, interfaces: tuple[InterfaceStatus, ...] = (), fatal: bool = False) -> PodStatus:
            return PodStatus(pod.endpoint, pod.netns, False, interfaces, pod.node, reason, fatal)

        if not netns.exists(pod.netns):
            return not_ready("network namespace missing")
        ports = pod.ports if self.runtime.probes_ports else ()
        try:
            # one visit to the namespace reads the addresses and tries the ports
            present, open_ports = netns.in_netns(
                pod.netns, lambda: (rtnetlink.thread_addresses(), netns.tcp_open(ports) if ports else [])
            )
        except PermanentError:  # deleted between the two looks
            return not_ready("network namespace missing")
        interfaces = []
        for itf in pod.attachments:
            saved = self._attachments.saved(plan.livelesson, pod.endpoint, itf.name) or {}
            address = next((a for a in saved.get("addresses", []) if a in present.get(itf.name, [])), None)
            interfaces.append(InterfaceStatus(itf.name, itf.network, address))
        statuses = tuple(interfaces)
        missing = [i.name for i in statuses if i.address is None]
        if missing:
            return not_ready(f"no address yet on {', '.join(missing)}", statuses)
        stopped = running(pod)
        if stopped is not None:
            return not_ready(stopped.reason, statuses, fatal=stopped.fatal)
        closed = sorted(set(ports) - set(open_ports))
        if closed:
            return not_ready(f"ports not accepting connections: {closed}", statuses)
        return PodStatus(pod.endpoint, pod.netns, True, statuses, pod.node)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            with self._owned.reading(plan.livelesson):
                running = self.runtime.readiness(plan)
                pods = parallel(self._status, [(plan, p, running) for p in plan.pods])
            observation = Observation({p.endpoint: p for p in pods})
            if observation.ready or any(p.fatal for p in pods) or time.monotonic() >= deadline:
                return observation
            time.sleep(0.02)

    def _existing(self, plan: Plan, endpoint: str) -> Pod:
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        return pod

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        pod = self._existing(plan, endpoint)
        try:
            proc = self.runtime.exec(plan, pod, argv, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"`{' '.join(argv)}` in {endpoint} timed out after {timeout}s") from exc
        except FileNotFoundError as exc:
            raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {exc.strerror}") from exc
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        return self.runtime.attach(plan, self._existing(plan, endpoint), argv, tty=tty)

    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """A socket made inside the pod's network namespace (a socket keeps the namespace it was made in),
        connected to its loopback: what a kubelet's port-forward does, without a process in the pod."""
        pod = self._existing(plan, endpoint)
        try:
            return netns.in_netns(
                pod.netns, lambda: socket.create_connection(("127.0.0.1", port), timeout=timeout), timeout=timeout + 5
            )
        except OSError as exc:
            raise TemporaryError(f"nothing accepts on port {port} in {endpoint}: {exc.strerror or exc}") from exc

    # --- destroy and list --------------------------------------------------------------------------

    def list(self) -> list[str]:
        """This deployment's live lessons. A folder with no owner record (a crash before it was written)
        counts as ours once it is a minute old, so it is cleaned up rather than kept for ever."""
        return self._owned.ours()

    def destroy(self, livelesson: str) -> None:
        with self._owned.lesson_lock(livelesson, remove=True):
            self._destroy(livelesson)

    def _destroy(self, livelesson: str) -> None:
        owner = self._owned.claim(livelesson)
        if owner is None:
            return
        mark = self.mark(livelesson)
        # what runs in the pods first, as a kubelet stops it before the sandbox's CNI DEL
        for runtime in self._runtimes:
            runtime.remove(livelesson)
        nodes = self.nodes.known([*owner.pod_nodes().values(), owner.default_node])
        # without the node namespace the bridges and host veths are gone already, and the IPAM folder is
        # removed below; running DEL from the root namespace instead would break "nothing in the root ns"
        if self.cni_path.is_dir():
            releases = [(owner.networks[att.network], att, owner.node_of(att)) for att in owner.attachments]
            parallel(
                self._attachments.release,
                [(net, att, node) for net, att, node in releases if node in nodes and netns.exists(node)],
            )
        parallel(netns.delete, list(owner.pods.values()))
        # bridges and tunnels, on every node the lesson had
        parallel(lambda node: rtnetlink.delete_links(node, _marked(node, mark)), nodes)
        for net in owner.networks.values():
            shutil.rmtree(self.ipam_dir / net.cni["name"], ignore_errors=True)
        shutil.rmtree(self._owned.folder(livelesson), ignore_errors=True)
        log.info("local backend destroyed", livelesson=livelesson, pods=len(owner.pods), networks=len(owner.networks))

    def remains(self, livelesson: str) -> Sequence[str]:
        """What of that live lesson is still on this host (for a check after destroy): namespaces, bridges,
        what ran in its pods (containers, their mounts and cgroups, pod processes), its folder."""
        prefix = naming.namespace(self.instance, livelesson)
        found = [f"netns {n}" for n in sorted(netns.names()) if n.startswith(f"{prefix}-")]
        for node in self.nodes.known(list(netns.names())):
            found += [f"{link.kind} {link.name} on {node}" for link in _links_marked(node, self.mark(livelesson))]
        for runtime in self._runtimes:
            found += runtime.remains(livelesson)
        folder = self._owned.folder(livelesson)
        if folder.exists():
            found.append(f"folder {folder}")
        return found

    def prune(self) -> bool:
        """Remove the node namespace once no live lesson of this instance is left. True if removed."""
        with self._owned.node_lock(exclusive=True):
            nodes = self.nodes.known(list(netns.names()))
            if self._owned.held() or not (nodes or netns.exists(self.nodes.underlay)):
                return False
            prefix = naming.instance_mark(self.instance)
            if any(link.alias.startswith(prefix) for node in nodes for link in rtnetlink.link_table(node).values()):
                return False
            for node in nodes:
                netns.delete(node)
            self.nodes.remove_underlay()
            for runtime in self._runtimes:
                runtime.prune()
            return True


def _links_marked(node: str, mark: str) -> list[rtnetlink.Link]:
    """The live lesson's links on ``node`` (bridges and VXLAN devices): those carrying its mark."""
    return [link for link in rtnetlink.link_table(node).values() if link.alias.rsplit("/", 1)[0] == mark]


def _marked(node: str, mark: str) -> list[str]:
    return [link.name for link in _links_marked(node, mark)]


def _alias(mark: str, network: Network) -> str:
    """A bridge's mark: the live lesson's, then its link's index, or ``main`` for the eth0 bridge."""
    return f"{mark}/{MAIN_NETWORK}" if network.nad == MAIN_NETWORK else f"{mark}/{network.index}"
