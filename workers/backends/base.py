"""The one backend interface. Orchestration sees only this; each runtime lives in its own module.

Guarantees every implementation keeps:
- every ``apply_*`` is idempotent: after a crash anywhere, applying again converges;
- ``destroy`` accepts any id (typically one ``list`` returned); objects already gone count as destroyed,
  and only objects carrying this instance's, this deployment's and this live lesson's mark are touched;
- each method's docstring below is its contract; tests/contract runs it against every backend;
- errors are :mod:`scheduler.core.errors` types, so callers read ``transient`` instead of guessing.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.placement import NodeRoom
from scheduler.core.plan import Plan, Pod
from scheduler.core.records import PodKind

__all__ = ["Backend", "ExecResult", "InterfaceStatus", "Observation", "PodStatus"]


@dataclass(frozen=True)
class InterfaceStatus:
    name: str  # net1
    network: str  # the NAD name
    address: str | None  # CIDR, e.g. 10.10.12.2/24


@dataclass(frozen=True)
class PodStatus:
    endpoint: str
    pod: str
    ready: bool
    interfaces: tuple[InterfaceStatus, ...] = ()
    node: str | None = None
    # why it is not ready; ``fatal`` marks reasons that waiting cannot fix (ErrImagePull, Unschedulable)
    reason: str | None = None
    fatal: bool = False


@dataclass(frozen=True)
class Observation:
    pods: Mapping[str, PodStatus] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.pods) and all(p.ready for p in self.pods.values())

    def address(self, endpoint: str, interface: str) -> str | None:
        pod = self.pods.get(endpoint)
        itf = next((i for i in pod.interfaces if i.name == interface), None) if pod else None
        return itf.address if itf else None


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


class Backend(abc.ABC):
    """Executes plans. Never invents a name: every name comes from the plan.

    tests/contract/test_backend_contract.py states this contract as tests; a new backend is done when it
    passes them.
    """

    name: str
    # "container": a pod runs the endpoint's image; "emulated": a stand-in process (said wherever pods show)
    pods: PodKind

    @abc.abstractmethod
    def check(self) -> None:
        """Return when this backend could run a lesson; otherwise raise :class:`PrerequisiteMissing`
        naming what it needs and lacks (privileges, CNI plugins, a reachable API server and who we are on
        it). Creates nothing, so it may be called any number of times; cheap enough for start-up, so a
        missing prerequisite shows at once rather than in a lesson's first step."""

    @abc.abstractmethod
    def apply_networks(self, plan: Plan) -> None:
        """Create every network of the plan (bridges, NADs) and whatever holds the lesson's objects,
        marked with this instance, deployment and live lesson before or as they are made.

        Idempotent: applying again, after success or after a crash anywhere, converges and creates
        nothing twice. Raises ``PermanentError`` for a plan of another instance or deployment, or when a
        name it needs is taken by an object without this live lesson's mark (never adopted);
        ``TemporaryError`` for what may pass (an object still being deleted, the runtime briefly
        unavailable)."""

    @abc.abstractmethod
    def apply_pods(self, plan: Plan) -> None:
        """Create every pod of the plan with its interfaces attached, after :meth:`apply_networks`.

        Idempotent like :meth:`apply_networks`, with the same errors. Does not wait for readiness:
        :meth:`observe` does."""

    @abc.abstractmethod
    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        """Report each planned pod's readiness and its interfaces' addresses, waiting at most ``wait``
        seconds (0: look once) for all to be ready or one to be ``fatal``.

        For a lesson whose networks are applied (and not destroyed), never raises for "not ready": a pod
        that is missing, starting or without an address yet is reported ``ready=False`` with a
        ``reason``; ``fatal`` marks what waiting cannot fix (unschedulable, image pull or crash loop). A
        ready pod lists eth0 (network ``main``) and then every planned interface, each with an address.
        Raises only for the runtime itself failing (``TemporaryError`` while it may recover); before
        ``apply_networks`` or after ``destroy`` a backend may refuse (kubernetes: no grant in a namespace
        that is not there). Changes nothing."""

    @abc.abstractmethod
    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` (no shell) inside the endpoint's pod, at most ``timeout`` seconds.

        A command that runs and exits non-zero is a result (its ``returncode``), not an error. Raises
        ``PermanentError`` for an endpoint the plan does not have or a pod that does not exist;
        ``TemporaryError`` when the command times out or the connection to the pod breaks."""

    @abc.abstractmethod
    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        """Run ``argv`` (no shell) inside the endpoint's pod with this process's stdin, stdout and stderr
        (a terminal in the pod when ``tty``, which needs stdin to be one) until it exits; returns its exit
        status. For people (``lessonctl exec``/``shell``), so there is no timeout.

        Raises ``PermanentError`` for an endpoint the plan does not have or a pod that does not run;
        ``TemporaryError`` when the connection to the pod breaks."""

    @abc.abstractmethod
    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """A TCP connection to ``port`` on the loopback of the endpoint's pod, as ``kubectl port-forward``
        makes one (what ``lessonctl port-forward`` relays from 127.0.0.1). The caller closes it.

        Raises ``PermanentError`` for an endpoint the plan does not have or a pod that does not exist;
        ``TemporaryError`` when nothing accepts on that port or the connection to the pod breaks."""

    def reach(self, plan: Plan, pod: Pod, port: int) -> str:
        """Where the lesson's pods reach ``port`` of ``pod``: its name, which every pod of the live lesson
        resolves, and the port. Pure."""
        return f"{pod.endpoint}:{port}"

    @abc.abstractmethod
    def destroy(self, livelesson: str) -> None:
        """Remove everything of that live lesson, waiting until it is gone.

        Accepts any id, applied or not, half-made or whole (typically one :meth:`list` returned).
        Idempotent: objects already gone count as destroyed, and an id never applied is a no-op. Touches
        only objects that carry this instance's, this deployment's and this live lesson's mark: an object
        under the lesson's name without that mark is never removed (``PermanentError``; another
        deployment's lesson is left untouched, as a no-op on the local backend, with ``PermanentError`` on
        kubernetes). ``TemporaryError`` when removal does not finish in bounded time."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Ids of the live lessons this instance and this deployment hold any object for (GC's orphan
        search): half-made lessons included (after :meth:`apply_networks` only, or a crash mid-apply), so
        GC can destroy them; never another deployment's or another instance's. Changes nothing."""

    @property
    def places(self) -> bool:
        """True when lessons are placed on this backend's nodes by the scheduler (:meth:`rooms`); False
        (the default): the backend keeps each lesson on one node itself (Kubernetes: the seed's required
        pod affinity), and plans name no nodes. Cheap: no I/O."""
        return False

    def rooms(self) -> Sequence[NodeRoom] | None:
        """What each node can still take, for :func:`scheduler.core.placement.place`: a lesson whose plan
        then names those nodes (``Pod.node``) is run there, its networks spanning nodes through tunnels.
        None exactly when not :attr:`places`. Changes nothing."""
        return None

    def prune(self) -> bool:
        """Remove what outlives lessons once none is left (the local backend's node namespace, like a
        Kubernetes node it stays between lessons). True if something was removed; idempotent. Default:
        nothing to do."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients and pools. The backend is not used after it."""
