"""The local backend: the seed's worker node on one Linux host, with no cluster.

A "node" network namespace per instance holds the Linux bridges; each pod is its own network namespace
with ``lo`` up and a long-running process listening on its declared ports; each attachment is made by
running the plan's CNI configuration through the real bridge and host-local plugins, as Multus would.
Nothing is created in the host's root namespace.

Ownership (containerlab's idea): before creating anything, the backend writes
``<state>/<instance>/lessons/<id>/owner.json`` naming every namespace, bridge and attachment it will make.
Bridges carry the mark in their alias and pod processes in their argv. Destroy reads that record and
touches only objects that carry the same mark.

State directory layout::

    <state_dir>/<instance>/
        node.lock                 serialises creating/pruning the node namespace
        ipam/<cni network>/       host-local's allocations (per instance, not /var/lib/cni)
        lessons/<id>/owner.json   what this live lesson owns
        lessons/<id>/results/     CNI ADD results, so addresses survive a worker restart
        lessons/<id>/pods/        pid files, written by each pod process once it listens
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog

from scheduler.errors import PermanentError, TemporaryError
from scheduler.plan import Plan, Pod
from workers.backends import cni, netns
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus

__all__ = ["LocalBackend"]

log = structlog.get_logger(__name__)

PODPROC = Path(__file__).with_name("podproc.py")
MANAGED_BY = "lesson-scheduler"
T = TypeVar("T")


def _write_json(path: Path, doc: Any) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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


class LocalBackend(Backend):
    name = "local"

    def __init__(self, *, instance: str, state_dir: Path, cni_path: Path = Path("/usr/lib/cni")) -> None:
        self.instance = instance
        self.root = state_dir / instance
        self.ipam_dir = self.root / "ipam"
        self.cni_path = cni_path
        self.node_netns = f"{instance}-node"
        self._checked = False

    # --- marks and paths ---------------------------------------------------------------------------

    def mark(self, livelesson: str) -> str:
        return f"{MANAGED_BY}/{self.instance}/{livelesson}"

    def _dir(self, livelesson: str) -> Path:
        return self.root / "lessons" / livelesson

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
        self._record_owner(plan)
        mark = self.mark(plan.livelesson)
        with self._node_lock(exclusive=False):
            netns.add(self.node_netns, loopback=False)
            existing = netns.bridges(self.node_netns)
            commands = []
            for n in plan.networks:
                alias = existing.get(n.bridge)
                if alias is None:
                    commands += [
                        f"link add name {n.bridge} type bridge",
                        f"link set dev {n.bridge} alias {mark}/{n.index}",
                        f"link set dev {n.bridge} up",
                    ]
                elif alias.rsplit("/", 1)[0] != mark:
                    raise PermanentError(f"bridge {n.bridge} exists but is not ours (mark {alias!r}); refusing to use it")
            if commands:
                # every token is a plan-decided name ([a-z0-9-/]), and ip reads it as argv, not a shell
                netns.ip("-batch", "-", netns=self.node_netns, stdin="\n".join(commands) + "\n")

    def apply_pods(self, plan: Plan) -> None:
        self._prerequisites()
        self._record_owner(plan)
        if not netns.exists(self.node_netns):
            raise TemporaryError("the node namespace is missing; networks must be applied first")
        _parallel(lambda p: netns.add(p.netns), plan.pods)
        work: list[tuple[Callable[[], None]]] = [(lambda p=p: self._ensure_process(plan, p),) for p in plan.pods]
        for pod in plan.pods:
            present = netns.addresses(pod.netns)
            for itf in pod.interfaces:
                work.append((lambda p=pod, i=itf.name, n=itf.network, a=present: self._ensure_attached(plan, p, i, n, a),))
        _parallel(lambda f: f(), work)

    def _ensure_attached(self, plan: Plan, pod: Pod, ifname: str, nad: str, present: dict[str, list[str]]) -> None:
        path = self._result_file(plan.livelesson, pod.endpoint, ifname)
        saved = _read_json(path)
        have = present.get(ifname)
        if saved is not None and have and set(saved["addresses"]) <= set(have):
            return
        config = plan.network(nad).cni_config(str(self.ipam_dir))
        args = {"container_id": pod.netns, "netns": netns.NETNS_DIR / pod.netns, "ifname": ifname}
        if have is not None:  # attached by a run that crashed before saving the result: start over
            cni.delete(config, node_netns=self.node_netns, plugin_dir=self.cni_path, **args)  # type: ignore[arg-type]
        result = cni.add(config, node_netns=self.node_netns, plugin_dir=self.cni_path, **args)  # type: ignore[arg-type]
        _write_json(path, {"addresses": result.addresses, "mac": result.mac, "raw": result.raw})

    def _process_alive(self, livelesson: str, endpoint: str) -> int | None:
        """The pod process's pid, if it is running and carries our mark."""
        try:
            pid = int(self._pidfile(livelesson, endpoint).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
            return None
        mark = f"{self.mark(livelesson)}/{endpoint}".encode()
        return pid if mark in cmdline and state != "Z" else None

    def _ensure_process(self, plan: Plan, pod: Pod) -> None:
        if self._process_alive(plan.livelesson, pod.endpoint):
            return
        pidfile = self._pidfile(plan.livelesson, pod.endpoint)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-I", "-S", str(PODPROC),
            "--netns", pod.netns,
            "--pidfile", str(pidfile),
            "--ports", ",".join(str(p) for p in pod.ports),
            "--mark", f"{self.mark(plan.livelesson)}/{pod.endpoint}",
        ]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise TemporaryError(f"pod {pod.endpoint} did not start: {proc.stderr.strip() or proc.returncode}")

    # --- observe and exec --------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Pod) -> PodStatus:
        def not_ready(reason: str, interfaces: tuple[InterfaceStatus, ...] = ()) -> PodStatus:
            return PodStatus(pod.endpoint, pod.netns, False, interfaces, self.node_netns, reason)

        if not netns.exists(pod.netns):
            return not_ready("network namespace missing")
        present = netns.addresses(pod.netns)
        interfaces = []
        for itf in pod.interfaces:
            saved = _read_json(self._result_file(plan.livelesson, pod.endpoint, itf.name)) or {}
            address = next((a for a in saved.get("addresses", []) if a in present.get(itf.name, [])), None)
            interfaces.append(InterfaceStatus(itf.name, itf.network, address))
        statuses = tuple(interfaces)
        missing = [i.name for i in statuses if i.address is None]
        if missing:
            return not_ready(f"no address yet on {', '.join(missing)}", statuses)
        if not self._process_alive(plan.livelesson, pod.endpoint):
            return not_ready("pod process not running", statuses)
        if pod.ports:
            open_ports = netns.in_netns(pod.netns, lambda: netns.tcp_open(pod.ports))
            closed = sorted(set(pod.ports) - set(open_ports))
            if closed:
                return not_ready(f"ports not accepting connections: {closed}", statuses)
        return PodStatus(pod.endpoint, pod.netns, True, statuses, self.node_netns)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            pods = _parallel(lambda p: self._status(plan, p), plan.pods)
            observation = Observation({p.endpoint: p for p in pods})
            if observation.ready or time.monotonic() >= deadline:
                return observation
            time.sleep(0.05)

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        pod = plan.pod(endpoint)
        if not netns.exists(pod.netns):
            raise PermanentError(f"pod {endpoint} does not exist (no namespace {pod.netns})")
        full = ["nsenter", f"--net={netns.NETNS_DIR / pod.netns}", "--", *argv]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"`{' '.join(argv)}` in {endpoint} timed out after {timeout}s") from None
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    # --- destroy and list --------------------------------------------------------------------------

    def list(self) -> list[str]:
        folder = self.root / "lessons"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def destroy(self, livelesson: str) -> None:
        folder = self._dir(livelesson)
        owner = _read_json(folder / "owner.json")
        if owner is None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was created before the record
            return
        mark = self.mark(livelesson)
        if owner.get("mark") != mark:
            raise PermanentError(f"{folder} is marked {owner.get('mark')!r}, not {mark!r}; refusing to destroy")
        networks: dict[str, Any] = owner["networks"]
        pods: dict[str, str] = owner["pods"]

        def release(att: dict[str, str]) -> None:
            netns_name = pods[att["endpoint"]]
            # DEL releases the IPAM lease even when the namespace is already gone
            cni.delete(
                networks[att["network"]]["cni"],
                container_id=netns_name,
                netns=netns.NETNS_DIR / netns_name,
                ifname=att["ifname"],
                node_netns=self.node_netns,
                plugin_dir=self.cni_path,
            )

        # without the node namespace the bridges and host veths are gone already, and the IPAM folder is
        # removed below; running DEL from the root namespace instead would break "nothing in the root ns"
        if netns.exists(self.node_netns) and self.cni_path.is_dir():
            _parallel(release, owner["attachments"])
        _parallel(lambda e: self._stop_process(livelesson, e), list(pods))
        _parallel(netns.delete, list(pods.values()))
        if netns.exists(self.node_netns):
            ours = [b for b, alias in netns.bridges(self.node_netns).items() if alias.rsplit("/", 1)[0] == mark]
            for bridge in ours:
                netns.ip("link", "del", bridge, netns=self.node_netns, check=False)
        for net in networks.values():
            shutil.rmtree(self.ipam_dir / net["cni"]["name"], ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("local backend destroyed", livelesson=livelesson, pods=len(pods), networks=len(networks))

    def _stop_process(self, livelesson: str, endpoint: str) -> None:
        pid = self._process_alive(livelesson, endpoint)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while self._process_alive(livelesson, endpoint) and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._process_alive(livelesson, endpoint):
            os.kill(pid, signal.SIGKILL)

    def prune(self) -> bool:
        """Remove the node namespace once no live lesson of this instance is left. True if removed."""
        with self._node_lock(exclusive=True):
            if self.list() or not netns.exists(self.node_netns):
                return False
            if any(alias.startswith(f"{MANAGED_BY}/{self.instance}/") for alias in netns.bridges(self.node_netns).values()):
                return False
            netns.delete(self.node_netns)
            return True
