"""The local backend: the seed's worker node on one Linux host, with no cluster.

A "node" network namespace per instance holds the Linux bridges; each pod is its own network namespace
with ``lo`` up; each attachment is made by running the plan's CNI configuration through the real bridge
and host-local plugins, as Multus would. Nothing is created in the host's root network namespace.

What runs in a pod (``pods``, LESSON_LOCAL_PODS): ``container`` runs the endpoint's image and command with
runc in the pod's namespace, after its interfaces are attached, as a kubelet would (:mod:`.containers`,
images from :mod:`.images`); ``emulated`` runs a stand-in process that listens on the declared ports
(:mod:`.pods`), for hosts without a container runtime, and says so wherever pods are shown.

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
        locks/<id>.lock           serialises applies and destroy of one live lesson (removed by destroy)
        ipam/<cni network>/       host-local's allocations (per instance, not /var/lib/cni)
        lessons/<id>/owner.json   what this live lesson owns
        lessons/<id>/results/     CNI ADD results, so addresses survive a worker restart
        lessons/<id>/pods/        emulated: pid files, written by each pod process once it listens, and
                                  the lock each pod process holds for its life (one process per pod)
        lessons/<id>/containers/  container: one bundle per pod (config, overlay mount, output)
        runc/                     runc's state of this instance's containers
    <image_dir>/                  the image store (:mod:`.images`), shared by instances
    cgroups: /lesson-scheduler/<instance>/<id>/<endpoint> in each hierarchy

The rooms it is composed of: :mod:`.ownership` (owner records, paths, locks), :mod:`.pods` (pod
processes), :mod:`.attach` (CNI attachments), :mod:`.netns` (namespaces), :mod:`.rtnetlink` (links and
addresses), :mod:`.cni` (the plugin runner).

Speed: creating and deleting namespaces, ``lo``, link and address reads happen in-process (see
:mod:`.netns` and :mod:`.rtnetlink`); CNI plugins are started straight inside the node namespace (no
``nsenter``); every CNI call of an apply runs concurrently with the others and with one launcher that forks
all missing pod processes (one Python start per apply, not per pod).
"""

from __future__ import annotations

import contextlib
import contextvars
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from scheduler.core import naming
from scheduler.core.errors import PermanentError, PrerequisiteMissing, TemporaryError
from scheduler.core.placement import NodeRoom
from scheduler.core.plan import MAIN_NETWORK, Network, Plan, Pod
from scheduler.core.records import PodKind
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus
from workers.backends.local import cni, netns, rtnetlink
from workers.backends.local.attach import Attachments
from workers.backends.local.containers import (
    ContainerState,
    Runc,
    cgroup_dirs,
    mounts_under,
    output_tail,
    remove_cgroup,
    unmount_all,
)
from workers.backends.local.images import ImageStore, Unpacked, tool_message
from workers.backends.local.overlay import Nodes
from workers.backends.local.ownership import Ownership, read_json
from workers.backends.local.pods import PodProcesses, stop

__all__ = ["LocalBackend"]

log = structlog.get_logger(__package__)  # the local backend's events, under one logger name

T = TypeVar("T")


def _parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    """Run independent calls concurrently; the first error (in item order) is raised after all finish."""
    if len(items) <= 1:
        return [fn(*i) if isinstance(i, tuple) else fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        # each call in a copy of the caller's context: its log lines keep the task's bound context
        futures = [
            pool.submit(contextvars.copy_context().run, fn, *(i if isinstance(i, tuple) else (i,))) for i in items
        ]
    return [f.result() for f in futures]


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self,
        *,
        instance: str,
        state_dir: Path,
        cni_path: Path = Path("/usr/lib/cni"),
        deployment: str = "",
        pods: PodKind = "emulated",
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
        self._processes = PodProcesses(self._owned)
        self.images = ImageStore.configured(state_dir, image_dir, insecure_registries)
        self._runc = Runc(self.root / "runc")
        self._attachments = Attachments(self._owned, ipam_dir=self.ipam_dir, cni_path=cni_path)
        self.nodes = Nodes(instance, nodes, self.root)

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
            if self.pods == "container":
                _container_prerequisites()
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
        used: Counter[str] = Counter()
        for folder in self._owned.held():
            owner = read_json(folder / "owner.json")
            if isinstance(owner, dict):
                placed = owner.get("nodes") or dict.fromkeys(owner.get("pods") or {}, owner.get("node_netns"))
                if isinstance(placed, dict):
                    used.update(str(node) for node in placed.values())
        limit = self.node_max_pods or 1 << 30
        huge = 1 << 62
        return [NodeRoom(n, max(0, limit - used[n]), huge, huge) for n in self.nodes.names]

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
                _parallel(lambda node, n: self.nodes.ensure_tunnel(node, n, _alias(mark, n)), ends)

    def _ensure_bridges(self, plan: Plan) -> None:
        """Every bridge of the plan exists on each of its nodes, carries our mark and is up: one in-process
        rtnetlink batch per node."""
        networks = [*plan.networks, *([plan.main] if plan.main is not None else [])]
        _parallel(
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
        # images first, outside the lesson's lock (a pull may take a while): an image that cannot be had
        # fails the lesson before anything of its pods is made
        images = {}
        if self.pods == "container":
            images = {ref: self.images.unpacked(ref) for ref in sorted({p.image for p in plan.pods})}
        with self._owned.lesson_lock(plan.livelesson):
            self._apply_pods(plan, images)

    def _apply_pods(self, plan: Plan, images: dict[str, Unpacked]) -> None:
        self._record_owner(plan)
        missing_nodes = [node for node in plan.nodes if not netns.exists(node)]
        if missing_nodes:
            raise TemporaryError(f"node namespace {missing_nodes[0]} is missing; networks must be applied first")
        with self._owned.node_lock(exclusive=False):
            self._ensure_bridges(plan)  # cheap when present; without it the plugin would make unmarked ones
            node_links = {node: rtnetlink.link_table(node) for node in plan.nodes}
        # a namespace made just now is empty; only older ones are read back
        found = _parallel(lambda p: {} if netns.add(p.netns) else rtnetlink.addresses(p.netns), plan.pods)
        present = {p.endpoint: a for p, a in zip(plan.pods, found, strict=True)}
        emulated = self.pods == "emulated"
        missing = [p for p in plan.pods if emulated and not self._processes.process_ok(plan.livelesson, p)]

        def attach(pod: Pod) -> Callable[[], None]:
            def body() -> None:
                # one pod's attachments in order, as Multus adds them: eth0, net1, net2, ... (so they are
                # listed in that order inside the pod, as on the seed's node)
                for itf in pod.attachments:
                    self._attachments.ensure(plan, pod, itf, present[pod.endpoint], node_links[pod.node])

            return body

        # the launcher and every pod's CNI ADDs at once: they touch different objects
        work = [attach(pod) for pod in plan.pods]
        if missing:
            work.insert(0, lambda: self._processes.launch(plan, missing))
        _parallel(lambda f: f(), work)
        hosts = self._write_hosts(plan)
        if not emulated:
            # after the attachments, as a kubelet starts containers after the sandbox's CNI ADD: what runs in
            # the pod finds its interfaces there from its first instruction
            states = self._runc.states()
            starting = [p for p in plan.pods if not self._container_ok(states.get(p.container), p)]
            _parallel(
                lambda p: self._start_container(plan, p, images[p.image], states.get(p.container), hosts), starting
            )

    def _bundle(self, livelesson: str, endpoint: str) -> Path:
        return self._owned.folder(livelesson) / "containers" / endpoint

    def _hosts(self, livelesson: str) -> Path:
        return self._owned.folder(livelesson) / "hosts"

    def _write_hosts(self, plan: Plan) -> Path:
        """The live lesson's hosts file (the plan's names and eth0 addresses), which every pod sees as its
        /etc/hosts. Written in place, never replaced: a bind mount holds on to the file it was made with."""
        path = self._hosts(plan.livelesson)
        text = plan.hosts()
        if not path.exists() or path.read_text() != text:
            with open(path, "w") as handle:
                handle.write(text)
        return path

    def _container_ok(self, state: ContainerState | None, pod: Pod) -> bool:
        """Running, and in the pod's current network namespace (not one deleted and made again)."""
        if state is None or state.status != "running":
            return False
        try:
            return Path(f"/proc/{state.pid}/ns/net").stat().st_ino == (netns.NETNS_DIR / pod.netns).stat().st_ino
        except FileNotFoundError:
            return False

    def _start_container(
        self, plan: Plan, pod: Pod, image: Unpacked, state: ContainerState | None, hosts: Path
    ) -> None:
        bundle = self._bundle(plan.livelesson, pod.endpoint)
        if state is not None:
            if state.bundle != bundle:
                raise PermanentError(f"container {pod.container} exists but is not ours (bundle {state.bundle})")
            # created by a crashed attempt, exited, or stranded in an old namespace: replaced, as a kubelet
            # restarts a pod's container
            self._runc.remove(pod.container)
        self._runc.start(plan, pod, image, bundle, hosts)

    # --- observe and exec --------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Pod, containers: dict[str, ContainerState]) -> PodStatus:
        def not_ready(reason: str, interfaces: tuple[InterfaceStatus, ...] = (), fatal: bool = False) -> PodStatus:
            return PodStatus(pod.endpoint, pod.netns, False, interfaces, pod.node, reason, fatal)

        if not netns.exists(pod.netns):
            return not_ready("network namespace missing")
        # emulated pods are ready once their stand-ins listen; a container is ready once it runs, as a
        # Kubernetes pod without a readiness probe is (what an image does on its ports is its own business)
        ports = pod.ports if self.pods == "emulated" else ()
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
        if self.pods == "container":
            state = containers.get(pod.container)
            if state is None or state.status == "created":
                return not_ready("container not started", statuses)
            if state.status == "stopped":
                tail = output_tail(self._bundle(plan.livelesson, pod.endpoint))
                said = f"; its last output: {tail}" if tail else " without output"
                return not_ready(f"container {pod.endpoint} exited{said}", statuses, fatal=True)
            if not self._container_ok(state, pod):
                return not_ready(f"container {state.status} or in an old network namespace", statuses)
        elif self._processes.process(plan.livelesson, pod.endpoint) is None:
            return not_ready("pod process not running", statuses)
        closed = sorted(set(ports) - set(open_ports))
        if closed:
            return not_ready(f"ports not accepting connections: {closed}", statuses)
        return PodStatus(pod.endpoint, pod.netns, True, statuses, pod.node)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            with self._owned.reading(plan.livelesson):
                containers = self._runc.states() if self.pods == "container" else {}
                pods = _parallel(self._status, [(plan, p, containers) for p in plan.pods])
            observation = Observation({p.endpoint: p for p in pods})
            if observation.ready or any(p.fatal for p in pods) or time.monotonic() >= deadline:
                return observation
            time.sleep(0.02)

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        try:
            if self.pods == "container":
                proc = self._runc.exec(pod.container, argv, timeout=timeout)
                _container_exec_error(proc.returncode, proc.stderr.decode(errors="replace"), endpoint, argv)
            else:
                proc = netns.run(self._emulated_argv(plan, argv), netns=pod.netns, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"`{' '.join(argv)}` in {endpoint} timed out after {timeout}s") from exc
        except FileNotFoundError as exc:
            raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {exc.strerror}") from exc
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        if self.pods == "container":
            if not self._container_ok(self._runc.states().get(pod.container), pod):
                raise PermanentError(f"the container of {endpoint} is not running")
            return self._runc.attach(pod.container, argv, tty=tty)
        # emulated: the host's own program, in the pod's network namespace only (said by the record)
        command = self._emulated_argv(plan, argv)
        try:
            return netns.in_netns(pod.netns, lambda: subprocess.run(command, check=False).returncode, timeout=1e9)
        except FileNotFoundError as exc:
            raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {exc.strerror}") from exc

    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """A socket made inside the pod's network namespace (a socket keeps the namespace it was made in),
        connected to its loopback: what a kubelet's port-forward does, without a process in the pod."""
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        try:
            return netns.in_netns(
                pod.netns, lambda: socket.create_connection(("127.0.0.1", port), timeout=timeout), timeout=timeout + 5
            )
        except OSError as exc:
            raise TemporaryError(f"nothing accepts on port {port} in {endpoint}: {exc.strerror or exc}") from exc

    def _emulated_argv(self, plan: Plan, argv: Sequence[str]) -> list[str]:
        """An emulated pod's command, in a mount namespace of its own where the live lesson's hosts file is
        /etc/hosts (the host's filesystem otherwise): names resolve there as in a container."""
        hosts = self._hosts(plan.livelesson)
        if not hosts.exists():
            return list(argv)
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *argv]

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
        networks: dict[str, Any] = owner["networks"]
        pods: dict[str, str] = owner["pods"]
        # without the node namespace the bridges and host veths are gone already, and the IPAM folder is
        # removed below; running DEL from the root namespace instead would break "nothing in the root ns"
        # containers first, as a kubelet stops them before the sandbox's CNI DEL; ours are those whose
        # bundle is in this live lesson's folder
        folder = self._owned.folder(livelesson)
        containers = [c for c in self._runc.states().values() if c.bundle.parent == folder / "containers"]
        _parallel(lambda c: self._runc.remove(c.id), containers)
        unmount_all(folder)
        remove_cgroup(naming.cgroup_parent(self.instance, livelesson))
        default_node = str(owner.get("node_netns") or self.node_netns)
        nodes = self.nodes.known([*map(str, (owner.get("nodes") or {}).values()), default_node])
        if self.cni_path.is_dir():
            releases = [(att, str(att.get("node") or default_node)) for att in owner["attachments"]]
            _parallel(
                lambda att, node: self._attachments.release(owner, att, node),
                [(att, node) for att, node in releases if node in nodes and netns.exists(node)],
            )
        _parallel(
            lambda pid: stop(pid, lambda: self._processes.is_marked(pid, livelesson)),
            self._processes.marked(livelesson),
        )
        _parallel(netns.delete, list(pods.values()))
        # bridges and tunnels, on every node the lesson had
        _parallel(lambda node: rtnetlink.delete_links(node, _marked(node, mark)), nodes)
        for net in networks.values():
            shutil.rmtree(self.ipam_dir / net["cni"]["name"], ignore_errors=True)
        shutil.rmtree(self._owned.folder(livelesson), ignore_errors=True)
        log.info("local backend destroyed", livelesson=livelesson, pods=len(pods), networks=len(networks))

    def remains(self, livelesson: str) -> Sequence[str]:
        """What of that live lesson is still on this host (for a check after destroy): namespaces, bridges,
        containers, mounts, cgroups, its folder."""
        prefix = naming.namespace(self.instance, livelesson)
        found = [f"netns {n}" for n in sorted(netns.names()) if n.startswith(f"{prefix}-")]
        for node in self.nodes.known(list(netns.names())):
            found += [f"{link.kind} {link.name} on {node}" for link in _links_marked(node, self.mark(livelesson))]
        folder = self._owned.folder(livelesson)
        found += [f"container {c.id}" for c in self._runc.states().values() if c.bundle.parent == folder / "containers"]
        found += [f"mount {m}" for m in mounts_under(folder)]
        found += [f"cgroup {d}" for d in cgroup_dirs(naming.cgroup_parent(self.instance, livelesson)) if d.exists()]
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
            remove_cgroup(naming.cgroup_instance(self.instance))
            for top in cgroup_dirs(naming.MANAGED_BY):  # shared by instances: only once it is empty
                with contextlib.suppress(OSError):
                    top.rmdir()
            return True


def _links_marked(node: str, mark: str) -> list[rtnetlink.Link]:
    """The live lesson's links on ``node`` (bridges and VXLAN devices): those carrying its mark."""
    return [link for link in rtnetlink.link_table(node).values() if link.alias.rsplit("/", 1)[0] == mark]


def _marked(node: str, mark: str) -> list[str]:
    return [link.name for link in _links_marked(node, mark)]


def _alias(mark: str, network: Network) -> str:
    """A bridge's mark: the live lesson's, then its link's index, or ``main`` for the eth0 bridge."""
    return f"{mark}/{MAIN_NETWORK}" if network.nad == MAIN_NETWORK else f"{mark}/{network.index}"


def _container_prerequisites() -> None:
    missing = [tool for tool in ("runc", "umoci", "skopeo") if shutil.which(tool) is None]
    if missing:
        raise PrerequisiteMissing(
            f"container pods need {', '.join(missing)}: apt-get install runc umoci skopeo "
            "(or set LESSON_LOCAL_PODS=emulated for stand-in processes instead of containers)"
        )
    with open("/proc/filesystems") as handle:
        if "overlay" not in handle.read().split():
            raise PrerequisiteMissing("container pods need the kernel's overlay filesystem (modprobe overlay)")


def _container_exec_error(returncode: int, stderr: str, endpoint: str, argv: Sequence[str]) -> None:
    """runc exec's own failures (exit 255 with its message) as errors; the command's exit is a result."""
    if returncode != 255:
        return
    message = tool_message(stderr)
    if "executable file not found" in message or "no such file or directory" in message:
        raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {message}")
    if "container does not exist" in message or "not running" in message or "cannot exec" in message:
        raise PermanentError(f"the container of {endpoint} is not running: {message}")
