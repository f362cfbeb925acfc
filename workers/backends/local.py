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

Speed: creating and deleting namespaces, ``lo``, link and address reads happen in-process (see
:mod:`netns`); CNI plugins are started straight inside the node namespace (no ``nsenter``); every CNI
call of an apply runs concurrently with the others and with one launcher that forks all missing pod
processes (one Python start per apply, not per pod).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog

from scheduler import naming
from scheduler.errors import PermanentError, SchedulerError, TemporaryError
from scheduler.plan import Interface, Plan, Pod
from scheduler.records import ID_PATTERN, check_id
from workers.backends import cni, netns
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus

__all__ = ["LocalBackend"]

log = structlog.get_logger(__name__)

PODPROC = Path(__file__).with_name("podproc.py")
T = TypeVar("T")


def _write_json(path: Path, doc: Any) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    """Run independent calls concurrently; the first error (in item order) is raised after all finish."""
    if len(items) <= 1:
        return [fn(*i) if isinstance(i, tuple) else fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(fn, *i) if isinstance(i, tuple) else pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]


def _stop(pid: int, still_ours: Callable[[], bool]) -> None:
    """SIGTERM, wait for the exit (a pidfd, no polling), SIGKILL after 2 s; only while ``still_ours()``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not still_ours():  # checked after the pidfd pinned the process: a reused pid is not signalled
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            signal.pidfd_send_signal(pidfd, sig)
            if select.select([pidfd], [], [], 2.0)[0]:
                return
    except ProcessLookupError:
        return
    finally:
        os.close(pidfd)


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

    # --- marks and paths ---------------------------------------------------------------------------

    def mark(self, livelesson: str) -> str:
        return naming.mark(self.instance, livelesson)

    def _dir(self, livelesson: str) -> Path:
        return self._inside("lessons", livelesson)

    def _inside(self, folder: str, livelesson: str, suffix: str = "") -> Path:
        """``<root>/<folder>/<id><suffix>``, for a valid id only, and only if it resolves inside that folder
        (a symlink planted there cannot lead a remove elsewhere)."""
        base = self.root / folder
        path = base / f"{check_id(livelesson)}{suffix}"
        if path.resolve().parent != base.resolve():
            raise PermanentError(f"{path} resolves outside {base}; refusing to use it")
        return path

    def _pidfile(self, livelesson: str, endpoint: str) -> Path:
        return self._dir(livelesson) / "pods" / f"{endpoint}.pid"

    def _result_file(self, livelesson: str, endpoint: str, ifname: str) -> Path:
        return self._dir(livelesson) / "results" / f"{endpoint}.{ifname}.json"

    @contextmanager
    def _node_lock(self, exclusive: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "node.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    @contextmanager
    def _reading(self, livelesson: str) -> Iterator[None]:
        """A shared hold on the lesson's lock: observe never sees an apply half done. No file, no lock
        (nothing was applied yet, or it was destroyed), and none is created, so nothing is left behind."""
        try:
            fd = os.open(self._inside("locks", livelesson, ".lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def _lesson_lock(self, livelesson: str, *, remove: bool = False) -> Iterator[None]:
        """Serialises applies and destroy of one live lesson (a redelivered task next to the original).

        ``remove`` unlinks the lock file before releasing it (destroy leaves nothing); a waiter that then
        wakes up on the unlinked file sees that and takes a fresh one.
        """
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        path = self._inside("locks", livelesson, ".lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.fstat(fd).st_ino == path.stat().st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue
                try:
                    yield
                finally:
                    if remove:
                        path.unlink(missing_ok=True)
                return
            finally:
                os.close(fd)

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
        """Written before anything is created, so even a crash mid-apply leaves a record to clean up by."""
        attachments = [
            {"endpoint": p.endpoint, "netns": p.netns, "ifname": i.name, "network": i.network}
            for p in plan.pods
            for i in p.interfaces
        ]
        doc = {
            "mark": self.mark(plan.livelesson),
            "instance": plan.instance,
            "deployment": self.deployment,
            "livelesson": plan.livelesson,
            "lesson": plan.lesson,
            "session": plan.session,
            "node_netns": self.node_netns,
            "pods": {p.endpoint: p.netns for p in plan.pods},
            "networks": {n.nad: {"bridge": n.bridge, "cni": n.cni_config(str(self.ipam_dir))} for n in plan.networks},
            "attachments": attachments,
        }
        path = self._dir(plan.livelesson) / "owner.json"
        if _read_json(path) != doc:
            _write_json(path, doc)

    # --- apply -------------------------------------------------------------------------------------

    def apply_networks(self, plan: Plan) -> None:
        self._prerequisites()
        with self._lesson_lock(plan.livelesson):
            self._record_owner(plan)
            with self._node_lock(exclusive=False):
                netns.add(self.node_netns, loopback=False)
                self._ensure_bridges(plan)

    def _ensure_bridges(self, plan: Plan) -> None:
        """Every bridge of the plan exists, carries our mark and is up: one in-process rtnetlink batch."""
        mark = self.mark(plan.livelesson)
        for attempt in range(3):
            existing = netns.bridges(self.node_netns)
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
            if not netns.ensure_bridges(self.node_netns, create, aliases) or attempt == 2:
                return
            # a concurrent apply of the same plan made one first: look again (its alias is checked above)

    def apply_pods(self, plan: Plan) -> None:
        self._prerequisites()
        with self._lesson_lock(plan.livelesson):
            self._apply_pods(plan)

    def _apply_pods(self, plan: Plan) -> None:
        self._record_owner(plan)
        if not netns.exists(self.node_netns):
            raise TemporaryError("the node namespace is missing; networks must be applied first")
        with self._node_lock(exclusive=False):
            self._ensure_bridges(plan)  # cheap when present; without it the plugin would make unmarked ones
            node_links = netns.link_table(self.node_netns)
        # a namespace made just now is empty; only older ones are read back
        found = _parallel(lambda p: {} if netns.add(p.netns) else netns.addresses(p.netns), plan.pods)
        present = {p.endpoint: a for p, a in zip(plan.pods, found, strict=True)}
        missing = [p for p in plan.pods if not self._process_ok(plan.livelesson, p)]

        def attach(pod: Pod, itf: Interface) -> Callable[[], None]:
            return lambda: self._ensure_attached(plan, pod, itf, present[pod.endpoint], node_links)

        # the launcher and every CNI ADD at once: they touch different objects
        work = [attach(pod, itf) for pod in plan.pods for itf in pod.interfaces]
        if missing:
            work.insert(0, lambda: self._launch(plan, missing))
        _parallel(lambda f: f(), work)

    def _leased(self, cni_name: str, container_id: str) -> bool:
        """host-local still holds an address for this container on that network (one file per address)."""
        try:
            files = list((self.ipam_dir / cni_name).iterdir())
        except FileNotFoundError:
            return False
        for file in files:
            try:
                if file.read_text().split()[0:1] == [container_id]:
                    return True
            except (OSError, UnicodeDecodeError):
                continue
        return False

    def _ensure_attached(
        self, plan: Plan, pod: Pod, itf: Interface, present: dict[str, list[str]], node_links: dict[str, netns.Link]
    ) -> None:
        ifname, network = itf.name, plan.network(itf.network)
        path = self._result_file(plan.livelesson, pod.endpoint, ifname)
        saved = _read_json(path)
        have = present.get(ifname)
        if saved is not None and have and set(saved.get("addresses") or ["-"]) <= set(have):
            # the pod side is right; so must the node side be: the host veth, still a port of our bridge
            hosts = [i.get("name") for i in saved.get("raw", {}).get("interfaces", []) if not i.get("sandbox")]
            if any(h in node_links and node_links[h].master == network.bridge for h in hosts):
                return
        config = network.cni_config(str(self.ipam_dir))
        args = {"container_id": pod.netns, "netns": netns.NETNS_DIR / pod.netns, "ifname": ifname}
        if saved is not None or have is not None or self._leased(config["name"], pod.netns):
            # half made by a run that crashed (interface without result, result without interface, a lease
            # left behind): start this attachment over, as host-local refuses a second lease for one id
            path.unlink(missing_ok=True)
            cni.delete(config, node_netns=self.node_netns, plugin_dir=self.cni_path, **args)  # type: ignore[arg-type]
        result = cni.add(config, node_netns=self.node_netns, plugin_dir=self.cni_path, **args)  # type: ignore[arg-type]
        _write_json(path, {"addresses": result.addresses, "mac": result.mac, "raw": result.raw})

    def _process(self, livelesson: str, endpoint: str) -> int | None:
        """The pod process's pid, if it is running and carries our mark."""
        try:
            pid = int(self._pidfile(livelesson, endpoint).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
            return None
        mark = f"{self.mark(livelesson)}/{endpoint}".encode()
        return pid if mark in cmdline and state != "Z" else None

    def _process_ok(self, livelesson: str, pod: Pod) -> bool:
        """Running, ours, and inside the pod's current namespace (not one deleted and made again)."""
        pid = self._process(livelesson, pod.endpoint)
        if pid is None:
            return False
        try:
            if Path(f"/proc/{pid}/ns/net").stat().st_ino == (netns.NETNS_DIR / pod.netns).stat().st_ino:
                return True
        except FileNotFoundError:
            return False
        self._stop_process(livelesson, pod.endpoint)  # stranded in a namespace that is gone
        return False

    def _launch(self, plan: Plan, pods: Sequence[Pod]) -> None:
        """One launcher forks every missing pod process; it returns once all listen."""
        argv = [sys.executable, "-I", "-S", str(PODPROC)]
        for pod in pods:
            pidfile = self._pidfile(plan.livelesson, pod.endpoint)
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            argv += [
                "--pod",
                f"{self.mark(plan.livelesson)}/{pod.endpoint}",
                pod.netns,
                str(pidfile),
                ",".join(str(p) for p in pod.ports) or "-",
                "1" if pod.forwarding else "0",
            ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise TemporaryError(f"pods did not start: {proc.stderr.strip() or proc.returncode}")
        # a pod whose lock was already held has a process that is still starting (left by a launcher that
        # crashed): it writes its pid file in a moment
        deadline = time.monotonic() + 2.0
        waiting = list(pods)
        while waiting := [p for p in waiting if not self._process_ok(plan.livelesson, p)]:
            if time.monotonic() > deadline:
                raise TemporaryError(f"pods did not start: {', '.join(p.endpoint for p in waiting)}")
            time.sleep(0.01)

    # --- observe and exec --------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Pod) -> PodStatus:
        def not_ready(reason: str, interfaces: tuple[InterfaceStatus, ...] = ()) -> PodStatus:
            return PodStatus(pod.endpoint, pod.netns, False, interfaces, self.node_netns, reason)

        if not netns.exists(pod.netns):
            return not_ready("network namespace missing")
        try:
            # one visit to the namespace reads the addresses and tries the ports
            present, open_ports = netns.in_netns(
                pod.netns, lambda: (netns.thread_addresses(), netns.tcp_open(pod.ports) if pod.ports else [])
            )
        except PermanentError:  # deleted between the two looks
            return not_ready("network namespace missing")
        interfaces = []
        for itf in pod.interfaces:
            saved = _read_json(self._result_file(plan.livelesson, pod.endpoint, itf.name)) or {}
            address = next((a for a in saved.get("addresses", []) if a in present.get(itf.name, [])), None)
            interfaces.append(InterfaceStatus(itf.name, itf.network, address))
        statuses = tuple(interfaces)
        missing = [i.name for i in statuses if i.address is None]
        if missing:
            return not_ready(f"no address yet on {', '.join(missing)}", statuses)
        if self._process(plan.livelesson, pod.endpoint) is None:
            return not_ready("pod process not running", statuses)
        closed = sorted(set(pod.ports) - set(open_ports))
        if closed:
            return not_ready(f"ports not accepting connections: {closed}", statuses)
        return PodStatus(pod.endpoint, pod.netns, True, statuses, self.node_netns)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            with self._reading(plan.livelesson):
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

    def _held(self) -> list[Path]:
        """Every live-lesson folder of this instance, whichever deployment made it."""
        folder = self.root / "lessons"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if ID_PATTERN.fullmatch(p.name) and p.is_dir() and not p.is_symlink())

    def list(self) -> list[str]:
        """This deployment's live lessons. A folder with no owner record (a crash before it was written)
        counts as ours once it is a minute old, so it is cleaned up rather than kept for ever."""
        ours = []
        for folder in self._held():
            owner = _read_json(folder / "owner.json")
            if owner is None:
                try:
                    stale = time.time() - folder.stat().st_mtime > 60
                except FileNotFoundError:
                    continue
                if stale:
                    ours.append(folder.name)
            elif isinstance(owner, dict) and owner.get("deployment", "") == self.deployment:
                ours.append(folder.name)
        return ours

    def destroy(self, livelesson: str) -> None:
        with self._lesson_lock(livelesson, remove=True):
            self._destroy(livelesson)

    def _destroy(self, livelesson: str) -> None:
        folder = self._dir(livelesson)
        owner = _read_json(folder / "owner.json")
        if owner is None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was created before the record
            return
        mark = self.mark(livelesson)
        if not isinstance(owner, dict) or owner.get("mark") != mark:
            raise PermanentError(f"{folder} is not marked {mark!r}; refusing to destroy")
        if owner.get("deployment", "") != self.deployment:
            # another deployment's lesson, on a shared host and instance name: not ours to touch
            log.warning("destroy refused: another deployment's live lesson", owner=owner.get("deployment"))
            return
        networks: dict[str, Any] = owner["networks"]
        pods: dict[str, str] = owner["pods"]

        def release(att: dict[str, str]) -> None:
            netns_name = pods[att["endpoint"]]
            # DEL releases the IPAM lease even when the namespace is already gone
            try:
                cni.delete(
                    networks[att["network"]]["cni"],
                    container_id=netns_name,
                    netns=netns.NETNS_DIR / netns_name,
                    ifname=att["ifname"],
                    node_netns=self.node_netns,
                    plugin_dir=self.cni_path,
                )
            except SchedulerError as exc:
                # what DEL leaves goes anyway: the veth with the pod's namespace, the lease with the IPAM folder
                log.warning("CNI DEL failed, cleaning up without it", ifname=att["ifname"], error=str(exc))

        # without the node namespace the bridges and host veths are gone already, and the IPAM folder is
        # removed below; running DEL from the root namespace instead would break "nothing in the root ns"
        if netns.exists(self.node_netns) and self.cni_path.is_dir():
            _parallel(release, owner["attachments"])
        _parallel(lambda pid: _stop(pid, lambda: self._is_marked(pid, livelesson)), self._marked_processes(livelesson))
        _parallel(netns.delete, list(pods.values()))
        ours = [b for b, alias in netns.bridges(self.node_netns).items() if alias.rsplit("/", 1)[0] == mark]
        netns.delete_links(self.node_netns, ours)
        for net in networks.values():
            shutil.rmtree(self.ipam_dir / net["cni"]["name"], ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("local backend destroyed", livelesson=livelesson, pods=len(pods), networks=len(networks))

    def _stop_process(self, livelesson: str, endpoint: str) -> None:
        pid = self._process(livelesson, endpoint)
        if pid is not None:
            _stop(pid, lambda: self._process(livelesson, endpoint) == pid)

    def _marked_processes(self, livelesson: str) -> Sequence[int]:
        """Every process whose argv carries this live lesson's mark (pid files or not: a launcher that
        crashed may have left a pod process that no pid file names)."""
        prefix = f"{self.mark(livelesson)}/".encode()
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        argv = handle.read().split(b"\0")
                except OSError:
                    continue
                if any(arg.startswith(prefix) for arg in argv):
                    found.append(int(entry.name))
        return found

    def _is_marked(self, pid: int, livelesson: str) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        prefix = f"{self.mark(livelesson)}/".encode()
        return any(arg.startswith(prefix) for arg in argv)

    def prune(self) -> bool:
        """Remove the node namespace once no live lesson of this instance is left. True if removed."""
        with self._node_lock(exclusive=True):
            if self._held() or not netns.exists(self.node_netns):
                return False
            prefix = naming.instance_mark(self.instance)
            if any(alias.startswith(prefix) for alias in netns.bridges(self.node_netns).values()):
                return False
            netns.delete(self.node_netns)
            return True
