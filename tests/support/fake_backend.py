"""An in-memory backend: the whole :class:`~workers.backends.base.Backend` interface without a kernel, a
cluster or root, so the pipeline's decisions can be tested in milliseconds.

It keeps what a runtime keeps, and no more: objects by name (the lesson's namespace, its networks, its
pods), each carrying its owner's mark (instance, deployment, live lesson) as Kubernetes labels do, in a
:class:`FakeWorld` that several backends share as processes share a host or a cluster. From that state it
answers as the contract says (tests/contract runs it too): applies create what is missing and refuse a
name held without their mark; ``observe`` reports a pod ready on its ``ready_after``-th look; ``exec`` and
``attach`` run a few programs (``ping`` from the pods' addresses, ``cat``, ``echo``, ``sleep``, ``true``,
``false``); ``destroy`` removes only what carries its mark.

Faults, for the decisions the pipeline makes on them:

- ``fail(member, error, times=N, after=False)``: the next N calls of ``member`` raise ``error``; ``after``:
  once its work is done, as an answer lost on the way back;
- ``never_ready(endpoint)``: that pod keeps starting; ``fatal(endpoint, reason)``: it cannot start;
- ``calls`` counts every member called, ``made`` lists every object created, ``applied`` every plan the
  applies were given and ``execs`` every exec's (endpoint, argv), in order.

Scripted answers, for a caller's handling of what a command prints: ``script_exec(*answers)`` has exec
answer them in turn, the last one every call after, in place of the pod's programs and before looking at
the plan or the pod; a string is the stdout of a command that exited 0, an exception is raised.

Time is virtual: one look of ``observe`` stands for :data:`LOOK_SECONDS`, and nothing ever sleeps.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from scheduler.core import naming
from scheduler.core.checks import check_id
from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.placement import NodeRoom
from scheduler.core.plan import MAIN_NETWORK, Plan, Pod
from scheduler.core.records import PodKind
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus

__all__ = ["LOOK_SECONDS", "FakeBackend", "FakeWorld", "Mark", "Run", "Thing"]

LOOK_SECONDS = 0.5  # the virtual time one look of observe stands for: a wait of w seconds is 1 + w/0.5 looks
ROOMY = 1 << 62  # CPU and memory: the fake limits pods only
STARTING = "ContainerCreating"


@dataclass(frozen=True)
class Mark:
    """Whose an object is, as the kubernetes backend's labels and the local backend's aliases say."""

    instance: str
    deployment: str
    livelesson: str


@dataclass
class Thing:
    """One object of the runtime: ``kind`` is namespace, network or pod; ``mark`` None for a stranger's."""

    kind: str
    name: str
    mark: Mark | None
    node: str = ""
    looks: int = 0  # pods: how often observe has looked at it


@dataclass
class FakeWorld:
    """What every fake backend on one "host" sees: the objects by (kind, name), and each instance's nodes
    (made by an apply, removed by a prune)."""

    objects: dict[tuple[str, str], Thing] = field(default_factory=dict)
    nodes: dict[str, set[str]] = field(default_factory=dict)

    def squat(self, kind: str, name: str, mark: Mark | None = None) -> Thing:
        """Plant an object under ``name`` that is not the lesson's (no mark, or another's)."""
        thing = Thing(kind, name, mark)
        self.objects[(kind, name)] = thing
        return thing

    def of(self, livelesson: str) -> list[Thing]:
        """Every object carrying that live lesson's mark, whoever made it."""
        return [t for t in self.objects.values() if t.mark is not None and t.mark.livelesson == livelesson]


@dataclass(frozen=True)
class Run:
    """One command in a pod, as a program of the fake sees it."""

    backend: FakeBackend
    plan: Plan
    pod: Pod
    argv: tuple[str, ...]
    timeout: float | None  # None: attached, no timeout
    stdin: Callable[[], bytes]  # read on demand: only a program that reads its input waits for it


Program = Callable[[Run], ExecResult]


@dataclass(frozen=True)
class _Fault:
    error: Exception
    after: bool


def _network_names(plan: Plan) -> list[tuple[str, str]]:
    return [("namespace", plan.namespace), *(("network", f"{plan.namespace}/{n.nad}") for n in plan.networks)]


def _pod_name(plan: Plan, pod: Pod) -> tuple[str, str]:
    return ("pod", f"{plan.namespace}/{pod.name}")


def _address(plan: Plan, pod: Pod, network: str) -> str:
    """eth0's is the plan's; a link's side a gets the subnet's .2 and side b .3, as host-local hands them."""
    if network == MAIN_NETWORK:
        return pod.main_address
    net = plan.network(network)
    host = net.subnet.network_address + (2 if pod.endpoint == net.a else 3)
    return f"{host}/{net.subnet.prefixlen}"


class FakeBackend(Backend):
    name = "fake"

    def __init__(
        self,
        world: FakeWorld | None = None,
        *,
        instance: str = "lessons",
        deployment: str = "",
        pods: PodKind = "emulated",
        ready_after: int = 2,
        nodes: Sequence[str] = (),
        node_max_pods: int = 0,
    ) -> None:
        """``nodes``: the scheduler places lessons on them (at most ``node_max_pods`` pods each, 0: no
        limit); none: every plan's own node is taken, as the seed's affinity keeps a lesson on one node."""
        self.world = world if world is not None else FakeWorld()
        self.instance = instance
        self.deployment = deployment
        self.pods = pods
        self.ready_after = ready_after
        self.nodes = tuple(nodes)
        self.node_max_pods = node_max_pods
        self.programs: dict[str, Program] = dict(PROGRAMS)
        self.calls: Counter[str] = Counter()
        self.made: list[tuple[str, str]] = []
        self.applied: list[Plan] = []
        self.execs: list[tuple[str, tuple[str, ...]]] = []
        self._script: list[ExecResult | Exception] = []
        self.closed = False
        self._faults: dict[str, list[_Fault]] = {}
        self._fatal: dict[str, str] = {}
        self._never_ready: set[str] = set()
        self._lock = threading.Lock()  # the pipeline pings from several threads

    # --- faults ----------------------------------------------------------------------------------------

    def fail(self, member: str, error: Exception, *, times: int = 1, after: bool = False) -> None:
        """The next ``times`` calls of ``member`` raise ``error``: before doing anything, or with ``after``
        once their work is done (the caller never hears it was)."""
        if not callable(getattr(Backend, member, None)):
            raise ValueError(f"the backend interface has no method {member!r}")
        self._faults.setdefault(member, []).extend([_Fault(error, after)] * times)

    def script_exec(self, *answers: str | ExecResult | Exception) -> None:
        """exec answers ``answers`` in turn, the last one every call after; none: the programs again."""
        with self._lock:
            self._script = [ExecResult(0, a, "") if isinstance(a, str) else a for a in answers]

    def _scripted(self) -> ExecResult | None:
        with self._lock:
            if not self._script:
                return None
            answer = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def never_ready(self, endpoint: str) -> None:
        self._never_ready.add(endpoint)

    def fatal(self, endpoint: str, reason: str) -> None:
        self._fatal[endpoint] = reason

    @contextmanager
    def _call(self, member: str) -> Iterator[None]:
        with self._lock:
            if self.closed:
                raise RuntimeError(f"{member} called on a closed backend")
            self.calls[member] += 1
            queue = self._faults.get(member)
            fault = queue.pop(0) if queue else None
        if fault is not None and not fault.after:
            raise fault.error
        yield
        if fault is not None:
            raise fault.error

    # --- ownership ---------------------------------------------------------------------------------------

    def _mark(self, livelesson: str) -> Mark:
        return Mark(self.instance, self.deployment, livelesson)

    def _check_plan(self, plan: Plan) -> None:
        if plan.instance != self.instance or plan.deployment != self.deployment:
            raise PermanentError(
                f"plan for instance {plan.instance!r}, deployment {plan.deployment!r} given to the backend of "
                f"instance {self.instance!r}, deployment {self.deployment!r}"
            )
        unknown = sorted(set(plan.nodes) - set(self.nodes)) if self.places else []
        if unknown:
            raise PermanentError(f"the plan names nodes this backend does not have: {unknown}")

    def _ensure(self, key: tuple[str, str], plan: Plan, node: str = "") -> None:
        """Create-or-get: an object already there counts as made once its mark shows it is ours."""
        mark = self._mark(plan.livelesson)
        existing = self.world.objects.get(key)
        if existing is None:
            self.world.objects[key] = Thing(*key, mark, node)
            self.made.append(key)
        elif existing.mark != mark:
            raise PermanentError(f"{key[0]} {key[1]} exists but is not this live lesson's; refusing to use it")

    def _ours(self, key: tuple[str, str], livelesson: str) -> Thing | None:
        thing = self.world.objects.get(key)
        return thing if thing is not None and thing.mark == self._mark(livelesson) else None

    # --- Provisioner -------------------------------------------------------------------------------------

    def check(self) -> None:
        with self._call("check"):
            pass

    def apply_networks(self, plan: Plan) -> None:
        self.applied.append(plan)
        with self._call("apply_networks"):
            self._check_plan(plan)
            for key in _network_names(plan):
                self._ensure(key, plan)
            self.world.nodes.setdefault(self.instance, set()).update(plan.nodes)

    def apply_pods(self, plan: Plan) -> None:
        self.applied.append(plan)
        with self._call("apply_pods"):
            self._check_plan(plan)
            if self._ours(("namespace", plan.namespace), plan.livelesson) is None:
                raise TemporaryError(f"namespace {plan.namespace} is missing; networks must be applied first")
            for pod in plan.pods:
                self._ensure(_pod_name(plan, pod), plan, pod.node)

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        with self._call("observe"):
            looks = 1 + int(max(0.0, wait) / LOOK_SECONDS)
            while True:
                observation = Observation({p.endpoint: self.status(plan, p, look=True) for p in plan.pods})
                looks -= 1
                if observation.ready or any(p.fatal for p in observation.pods.values()) or looks == 0:
                    return observation

    def status(self, plan: Plan, pod: Pod, *, look: bool = False) -> PodStatus:
        """``pod`` as the runtime has it now; ``look`` counts as one of observe's looks."""
        thing = self._ours(_pod_name(plan, pod), plan.livelesson)
        if thing is None:
            return PodStatus(pod.endpoint, pod.name, False, node=pod.node, reason="no pod yet")
        if look:
            thing.looks += 1
        if pod.endpoint in self._fatal:
            return PodStatus(pod.endpoint, pod.name, False, node=pod.node, reason=self._fatal[pod.endpoint], fatal=True)
        if pod.endpoint in self._never_ready or thing.looks < self.ready_after:
            return PodStatus(pod.endpoint, pod.name, False, node=pod.node, reason=STARTING)
        interfaces = tuple(InterfaceStatus(i.name, i.network, _address(plan, pod, i.network)) for i in pod.attachments)
        return PodStatus(pod.endpoint, pod.name, True, interfaces, pod.node)

    def destroy(self, livelesson: str) -> None:
        with self._call("destroy"):
            check_id(livelesson)
            namespace = naming.namespace(self.instance, livelesson)
            holder = self.world.objects.get(("namespace", namespace))
            if holder is not None and holder.mark != self._mark(livelesson):
                raise PermanentError(
                    f"namespace {namespace} does not carry this instance's and deployment's mark; refusing to delete it"
                )
            mark = self._mark(livelesson)
            for key in [k for k, t in self.world.objects.items() if t.mark == mark]:
                del self.world.objects[key]

    def list(self) -> list[str]:
        with self._call("list"):
            return sorted(
                {
                    t.mark.livelesson
                    for t in self.world.objects.values()
                    if t.mark is not None and (t.mark.instance, t.mark.deployment) == (self.instance, self.deployment)
                }
            )

    # --- Access ------------------------------------------------------------------------------------------

    def _pod(self, plan: Plan, endpoint: str) -> Pod:
        pod = plan.pod(endpoint)
        if self._ours(_pod_name(plan, pod), plan.livelesson) is None:
            raise PermanentError(f"pod {endpoint} does not exist")
        return pod

    def _program(self, endpoint: str, argv: Sequence[str]) -> Program:
        program = self.programs.get(argv[0]) if argv else None
        if program is None:
            raise PermanentError(f"`{' '.join(argv)}` cannot run in {endpoint}: not found")
        return program

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        self.execs.append((endpoint, tuple(argv)))
        with self._call("exec"):
            if (answer := self._scripted()) is not None:
                return answer
            pod = self._pod(plan, endpoint)
            return self._program(endpoint, argv)(Run(self, plan, pod, tuple(argv), timeout, lambda: b""))

    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        """The program on this process's file descriptors 0, 1 and 2."""
        with self._call("attach"):
            if tty and not os.isatty(0):
                raise PermanentError("a terminal in the pod needs stdin to be a terminal")
            pod = self._pod(plan, endpoint)
            result = self._program(endpoint, argv)(Run(self, plan, pod, tuple(argv), None, _read_stdin))
            os.write(1, result.stdout.encode())
            os.write(2, result.stderr.encode())
            return result.returncode

    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """A declared port accepts and closes at once, as an emulated pod's stand-in does; any other port
        accepts nothing."""
        with self._call("connect"):
            pod = self._pod(plan, endpoint)
            if port not in pod.ports:
                raise TemporaryError(f"nothing accepts on port {port} in {endpoint}")
            ours, theirs = socket.socketpair()
            theirs.close()
            ours.settimeout(timeout)
            return ours

    # --- Capacity and Housekeeping ------------------------------------------------------------------------

    @property
    def places(self) -> bool:
        return bool(self.nodes)

    def rooms(self) -> Sequence[NodeRoom] | None:
        """Each node's pods left: ``node_max_pods`` less the pods this instance's lessons hold there."""
        with self._call("rooms"):
            if not self.places:
                return None
            used = Counter(
                t.node
                for t in self.world.objects.values()
                if t.kind == "pod" and t.mark is not None and t.mark.instance == self.instance
            )
            limit = self.node_max_pods or ROOMY
            return [NodeRoom(n, max(0, limit - used[n]), ROOMY, ROOMY) for n in self.nodes]

    def prune(self) -> bool:
        """Forget this instance's nodes once none of its lessons holds anything."""
        with self._call("prune"):
            held = any(t.mark is not None and t.mark.instance == self.instance for t in self.world.objects.values())
            if held or not self.world.nodes.get(self.instance):
                return False
            del self.world.nodes[self.instance]
            return True

    def close(self) -> None:
        """Idempotent; every other call after it is an error (a test's mistake, not the lesson's)."""
        self.calls["close"] += 1
        self.closed = True


def _read_stdin() -> bytes:
    chunks = []
    while chunk := os.read(0, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- the programs a fake pod has -------------------------------------------------------------------------


def _ping(run: Run) -> ExecResult:
    """busybox's ping: one reply per packet when the address belongs to a ready pod of the live lesson on a
    network the source is on too (eth0's is everyone's; a link's only its two ends')."""
    argv = list(run.argv)
    count = int(argv[argv.index("-c") + 1]) if "-c" in argv else 1
    host = argv[-1]
    by_name = {p.endpoint: p.main_address.split("/")[0] for p in run.plan.pods}
    try:
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        if host not in by_name:
            return ExecResult(1, "", f"ping: bad address '{host}'\n")
        address = by_name[host]
    statuses = [run.backend.status(run.plan, p) for p in run.plan.pods]
    reachable = {
        i.address.split("/")[0]
        for status in statuses
        if status.ready
        for i in status.interfaces
        if i.address and i.network in {a.network for a in run.pod.attachments}
    }
    replies = run.backend.status(run.plan, run.pod).ready and address in reachable
    received = count if replies else 0
    lines = [
        f"PING {host} ({address}): 56 data bytes",
        "",
        f"--- {host} ping statistics ---",
        f"{count} packets transmitted, {received} packets received, {100 - 100 * received // count}% packet loss",
    ]
    if received:
        lines.append("round-trip min/avg/max = 0.041/0.052/0.063 ms")
    return ExecResult(0 if received else 1, "\n".join(lines) + "\n", "")


def _cat(run: Run) -> ExecResult:
    if len(run.argv) > 1:  # a fake pod has no files
        missing = "".join(f"cat: can't open '{path}': No such file or directory\n" for path in run.argv[1:])
        return ExecResult(1, "", missing)
    return ExecResult(0, run.stdin().decode(errors="replace"), "")


def _sleep(run: Run) -> ExecResult:
    seconds = float(run.argv[1]) if len(run.argv) > 1 else 0.0
    if run.timeout is not None and seconds > run.timeout:
        raise TemporaryError(f"`{' '.join(run.argv)}` in {run.pod.endpoint} timed out after {run.timeout}s")
    return ExecResult(0, "", "")


PROGRAMS: dict[str, Program] = {
    "true": lambda run: ExecResult(0, "", ""),
    "false": lambda run: ExecResult(1, "", ""),
    "echo": lambda run: ExecResult(0, " ".join(run.argv[1:]) + "\n", ""),
    "cat": _cat,
    "sleep": _sleep,
    "ping": _ping,
}
