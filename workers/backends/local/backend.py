"""The local backend: the seed's worker node on one Linux host, with no cluster.

A "node" network namespace per instance holds the Linux bridges; each pod is its own network namespace
with ``lo`` up and a long-running process listening on its declared ports; each attachment is made by
running the plan's CNI configuration through the real bridge and host-local plugins, as Multus would.
Nothing is created in the host's root namespace.

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
        lessons/<id>/pods/        pid files, written by each pod process once it listens, and the lock
                                  each pod process holds for its life (one process per pod)

The rooms it is composed of: :mod:`.ownership` (owner records, paths, locks), :mod:`.pods` (pod
processes), :mod:`.attach` (CNI attachments), :mod:`.netns` (namespaces), :mod:`.rtnetlink` (links and
addresses), :mod:`.cni` (the plugin runner).

Speed: creating and deleting namespaces, ``lo``, link and address reads happen in-process (see
:mod:`.netns` and :mod:`.rtnetlink`); CNI plugins are started straight inside the node namespace (no
``nsenter``); every CNI call of an apply runs concurrently with the others and with one launcher that forks
all missing pod processes (one Python start per apply, not per pod).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from scheduler.core import naming
from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import Attachment, Plan, Pod
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus
from workers.backends.local import cni, netns, rtnetlink
from workers.backends.local.attach import Attachments
from workers.backends.local.ownership import Ownership
from workers.backends.local.pods import PodProcesses, stop

__all__ = ["LocalBackend"]

log = structlog.get_logger(__package__)  # the local backend's events, under one logger name

T = TypeVar("T")


def _parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    """Run independent calls concurrently; the first error (in item order) is raised after all finish."""
    if len(items) <= 1:
        return [fn(*i) if isinstance(i, tuple) else fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(fn, *i) if isinstance(i, tuple) else pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]


class LocalBackend(Backend):
    name = "local"
    pods = "emulated"  # a stand-in process per pod: the image and command are not run (yet)

    def __init__(
        self, *, instance: str, state_dir: Path, cni_path: Path = Path("/usr/lib/cni"), deployment: str = ""
    ) -> None:
        self.instance = instance
        self.deployment = deployment
        self.root = state_dir / instance
        self.ipam_dir = self.root / "ipam"
        self.cni_path = cni_path
        self.node_netns = naming.node_netns(instance)
        self._checked = False
        self._owned = Ownership(instance=instance, root=self.root, deployment=deployment)
        self._processes = PodProcesses(self._owned)
        self._attachments = Attachments(
            self._owned, node_netns=self.node_netns, ipam_dir=self.ipam_dir, cni_path=cni_path
        )

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
            self._checked = True

    def _record_owner(self, plan: Plan) -> None:
        self._owned.record(plan, node_netns=self.node_netns, ipam_dir=self.ipam_dir)

    # --- apply -------------------------------------------------------------------------------------

    def apply_networks(self, plan: Plan) -> None:
        self._prerequisites()
        with self._owned.lesson_lock(plan.livelesson):
            self._record_owner(plan)
            with self._owned.node_lock(exclusive=False):
                netns.add(self.node_netns, loopback=False)
                self._ensure_bridges(plan)

    def _ensure_bridges(self, plan: Plan) -> None:
        """Every bridge of the plan exists, carries our mark and is up: one in-process rtnetlink batch."""
        mark = self.mark(plan.livelesson)
        for attempt in range(3):
            existing = rtnetlink.bridges(self.node_netns)
            create, aliases = [], {}
            for n in plan.networks:
                alias = existing.get(n.bridge)
                if alias is None:
                    create.append(n.bridge)
                elif alias and alias.rsplit("/", 1)[0] != mark:
                    raise PermanentError(
                        f"bridge {n.bridge} exists but is not ours (mark {alias!r}); refusing to use it"
                    )
                if alias != f"{mark}/{n.index}":
                    # also claims a bridge the plugin made by itself (after a crash between the two applies):
                    # its name is a hash of this instance, live lesson and link, so nobody else can own it
                    aliases[n.bridge] = f"{mark}/{n.index}"
            if not create and not aliases:
                return
            if not rtnetlink.ensure_bridges(self.node_netns, create, aliases) or attempt == 2:
                return
            # a concurrent apply of the same plan made one first: look again (its alias is checked above)

    def apply_pods(self, plan: Plan) -> None:
        self._prerequisites()
        with self._owned.lesson_lock(plan.livelesson):
            self._apply_pods(plan)

    def _apply_pods(self, plan: Plan) -> None:
        self._record_owner(plan)
        if not netns.exists(self.node_netns):
            raise TemporaryError("the node namespace is missing; networks must be applied first")
        with self._owned.node_lock(exclusive=False):
            self._ensure_bridges(plan)  # cheap when present; without it the plugin would make unmarked ones
            node_links = rtnetlink.link_table(self.node_netns)
        # a namespace made just now is empty; only older ones are read back
        found = _parallel(lambda p: {} if netns.add(p.netns) else rtnetlink.addresses(p.netns), plan.pods)
        present = {p.endpoint: a for p, a in zip(plan.pods, found, strict=True)}
        missing = [p for p in plan.pods if not self._processes.process_ok(plan.livelesson, p)]

        def attach(pod: Pod, itf: Attachment) -> Callable[[], None]:
            return lambda: self._attachments.ensure(plan, pod, itf, present[pod.endpoint], node_links)

        # the launcher and every CNI ADD at once: they touch different objects
        work = [attach(pod, itf) for pod in plan.pods for itf in pod.interfaces]
        if missing:
            work.insert(0, lambda: self._processes.launch(plan, missing))
        _parallel(lambda f: f(), work)

    # --- observe and exec --------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Pod) -> PodStatus:
        def not_ready(reason: str, interfaces: tuple[InterfaceStatus, ...] = ()) -> PodStatus:
            return PodStatus(pod.endpoint, pod.netns, False, interfaces, self.node_netns, reason)

        if not netns.exists(pod.netns):
            return not_ready("network namespace missing")
        try:
            # one visit to the namespace reads the addresses and tries the ports
            present, open_ports = netns.in_netns(
                pod.netns, lambda: (rtnetlink.thread_addresses(), netns.tcp_open(pod.ports) if pod.ports else [])
            )
        except PermanentError:  # deleted between the two looks
            return not_ready("network namespace missing")
        interfaces = []
        for itf in pod.interfaces:
            saved = self._attachments.saved(plan.livelesson, pod.endpoint, itf.name) or {}
            address = next((a for a in saved.get("addresses", []) if a in present.get(itf.name, [])), None)
            interfaces.append(InterfaceStatus(itf.name, itf.network, address))
        statuses = tuple(interfaces)
        missing = [i.name for i in statuses if i.address is None]
        if missing:
            return not_ready(f"no address yet on {', '.join(missing)}", statuses)
        if self._processes.process(plan.livelesson, pod.endpoint) is None:
            return not_ready("pod process not running", statuses)
        closed = sorted(set(pod.ports) - set(open_ports))
        if closed:
            return not_ready(f"ports not accepting connections: {closed}", statuses)
        return PodStatus(pod.endpoint, pod.netns, True, statuses, self.node_netns)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            with self._owned.reading(plan.livelesson):
                pods = _parallel(lambda p: self._status(plan, p), plan.pods)
            observation = Observation({p.endpoint: p for p in pods})
            if observation.ready or time.monotonic() >= deadline:
                return observation
            time.sleep(0.02)

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        try:
            proc = netns.run(argv, netns=pod.netns, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"`{' '.join(argv)}` in {endpoint} timed out after {timeout}s") from exc
        except FileNotFoundError as exc:
            raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {exc.strerror}") from exc
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

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
        if netns.exists(self.node_netns) and self.cni_path.is_dir():
            _parallel(lambda att: self._attachments.release(owner, att), owner["attachments"])
        _parallel(
            lambda pid: stop(pid, lambda: self._processes.is_marked(pid, livelesson)),
            self._processes.marked(livelesson),
        )
        _parallel(netns.delete, list(pods.values()))
        ours = [b for b, alias in rtnetlink.bridges(self.node_netns).items() if alias.rsplit("/", 1)[0] == mark]
        rtnetlink.delete_links(self.node_netns, ours)
        for net in networks.values():
            shutil.rmtree(self.ipam_dir / net["cni"]["name"], ignore_errors=True)
        shutil.rmtree(self._owned.folder(livelesson), ignore_errors=True)
        log.info("local backend destroyed", livelesson=livelesson, pods=len(pods), networks=len(networks))

    def prune(self) -> bool:
        """Remove the node namespace once no live lesson of this instance is left. True if removed."""
        with self._owned.node_lock(exclusive=True):
            if self._owned.held() or not netns.exists(self.node_netns):
                return False
            prefix = naming.instance_mark(self.instance)
            if any(alias.startswith(prefix) for alias in rtnetlink.bridges(self.node_netns).values()):
                return False
            netns.delete(self.node_netns)
            return True
