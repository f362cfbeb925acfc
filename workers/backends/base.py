"""The backend interface, split by job. The pipeline, GC and the CLI hold the composite :class:`Backend`.

- :class:`Provisioner`: makes, watches and removes live lessons from plans;
- :class:`Access`: the ways into a running lesson's pods (the pipeline's pings, people's shells and ports);
- :class:`Capacity`: what the backend's nodes can still take, when the scheduler places lessons;
- :class:`Housekeeping`: what outlives lessons, and the clients a backend holds.

Guarantees every implementation keeps:
- it never invents a name: every name comes from the plan;
- every ``apply_*`` is idempotent: after a crash anywhere, applying again converges;
- it acts only on objects carrying its mark (this instance, this deployment, this live lesson): a name it
  needs that an object without that mark holds is refused, never adopted, and never removed;
- errors are :mod:`scheduler.core.errors` types, so callers read ``transient`` instead of guessing.

Each method's docstring is its contract. tests/contract states them as tests and runs them against every
backend and against the in-memory fake the pipeline's own tests use; a new backend is done when it passes.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.placement import NodeRoom
from scheduler.core.plan import Plan, Pod
from scheduler.core.records import PodKind

__all__ = [
    "Access",
    "Backend",
    "Capacity",
    "ExecResult",
    "Housekeeping",
    "InterfaceStatus",
    "Observation",
    "PodStatus",
    "Provisioner",
]


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


class Provisioner(abc.ABC):
    """Makes, watches and removes live lessons, each from its plan."""

    # "container": a pod runs the endpoint's image; "emulated": a stand-in process (said wherever pods show)
    pods: PodKind

    @abc.abstractmethod
    def check(self) -> None:
        """Return when this backend could run a lesson; otherwise raise :class:`PrerequisiteMissing`
        naming what it needs and lacks (privileges, CNI plugins, a reachable API server and who we are on
        it). Creates nothing, and is cheap: a missing prerequisite shows at start-up, not in a lesson."""

    @abc.abstractmethod
    def apply_networks(self, plan: Plan) -> None:
        """Create every network of the plan (bridges, NADs) and whatever holds the lesson's objects,
        marked with this instance, deployment and live lesson before or as they are made.

        Idempotent: applying again, after success or after a crash anywhere, converges and creates
        nothing twice. ``PermanentError`` when a name it needs is held by an object without this live
        lesson's mark (never adopted), and on kubernetes for a plan of another instance or deployment;
        ``TemporaryError`` for what may pass (an object still being deleted, the runtime briefly away)."""

    @abc.abstractmethod
    def apply_pods(self, plan: Plan) -> None:
        """Create every pod of the plan with its interfaces attached, after :meth:`apply_networks`.

        Idempotent like :meth:`apply_networks`, with the same errors. Does not wait for readiness:
        :meth:`observe` does."""

    @abc.abstractmethod
    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        """Each planned pod's readiness and its interfaces' addresses, after waiting at most ``wait``
        seconds (0: look once) for all to be ready or one to be ``fatal``. Changes nothing.

        Once the lesson's networks are applied (and until destroyed), "not ready" is reported, never raised:
        a pod missing, starting or without an address yet is ``ready=False`` with a ``reason``, and
        ``fatal`` when waiting cannot fix it (unschedulable, image pull, crash loop). A ready pod lists eth0
        (network ``main``), then every planned interface, each with an address. Raises only when the
        runtime itself fails (``TemporaryError`` while it may recover); before :meth:`apply_networks` or
        after :meth:`destroy` it may refuse (kubernetes: no grant in a namespace that is not there)."""

    @abc.abstractmethod
    def destroy(self, livelesson: str) -> None:
        """Remove everything of that live lesson, and return once it is gone.

        Any id is accepted, applied or not, half-made or whole (typically one :meth:`list` returned), and
        destroying twice is harmless: what is gone counts as destroyed. Only objects with this instance's,
        deployment's and live lesson's mark are removed: an object under the lesson's name without it is
        never removed (kubernetes: ``PermanentError``), and another deployment's lesson is left alone (a
        no-op on the local backend, ``PermanentError`` on kubernetes). ``TemporaryError`` when removal
        does not finish in bounded time."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Ids of the live lessons of this instance and this deployment that hold any object, half-made
        ones included (networks only, or a crash mid-apply), so GC finds its orphans; never another
        deployment's or instance's. Changes nothing."""


class Access(abc.ABC):
    """The ways into a live lesson's pods: commands, a person's session, a TCP port, the pods' own names."""

    @abc.abstractmethod
    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` (no shell) inside the endpoint's pod for at most ``timeout`` seconds.

        A command that runs and exits non-zero is a result (its ``returncode``), not an error.
        ``PermanentError`` for an endpoint the plan does not have or a pod that does not exist;
        ``TemporaryError`` when the command times out or the connection to the pod breaks."""

    @abc.abstractmethod
    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        """Run ``argv`` (no shell) inside the endpoint's pod on this process's stdin, stdout and stderr (a
        terminal in the pod when ``tty``, which needs stdin to be one) until it exits; its exit status.
        For people (``lessonctl exec``/``shell``), so no timeout.

        ``PermanentError`` for an endpoint the plan does not have or a pod that does not run;
        ``TemporaryError`` when the connection to the pod breaks."""

    @abc.abstractmethod
    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """A TCP connection to ``port`` on the loopback of the endpoint's pod, as ``kubectl port-forward``
        makes one (``lessonctl port-forward`` relays it from 127.0.0.1). The caller closes it.

        ``PermanentError`` for an endpoint the plan does not have or a pod that does not exist. When
        nothing accepts on that port: ``TemporaryError``, or (kubernetes, whose port-forward learns it only
        once the stream is open) a connection that ends at once without data. ``TemporaryError`` when
        the connection to the pod breaks."""

    def reach(self, plan: Plan, pod: Pod, port: int) -> str:
        """Where the lesson's pods reach ``port`` of ``pod``: ``host:port``, the host a name every pod of
        the live lesson resolves to that pod's eth0 address. Pure. Default: the endpoint's name."""
        return f"{pod.endpoint}:{port}"


class Capacity:
    """Room on the backend's nodes. Default: the backend keeps each lesson on one node itself."""

    @property
    def places(self) -> bool:
        """True when the scheduler places lessons on this backend's nodes (:meth:`rooms`); False: the
        backend keeps each lesson on one node itself (kubernetes: the seed's required pod affinity), and
        plans name no nodes. Cheap: no I/O."""
        return False

    def rooms(self) -> Sequence[NodeRoom] | None:
        """What each node can still take, for :func:`scheduler.core.placement.place`: a lesson whose plan
        then names those nodes (``Pod.node``) runs there, its networks spanning nodes through tunnels, and
        takes that room until destroyed. None exactly when not :attr:`places`; ``TemporaryError`` while no
        node takes pods. Changes nothing."""
        return None


class Housekeeping:
    """What outlives lessons, and what the backend holds. Default: nothing of either."""

    def prune(self) -> bool:
        """Remove what outlives lessons once none of this instance is left (the local backend's node
        namespace, which like a Kubernetes node stays between lessons); a later apply makes it again.
        True if something was removed; idempotent."""
        return False

    def close(self) -> None:
        """Release clients and pools; the backend is not used after it. Lessons are left as they are."""


class Backend(Provisioner, Access, Capacity, Housekeeping):
    """Executes plans; every job above, as the pipeline, GC and the CLI use it. Never invents a name."""

    name: str
