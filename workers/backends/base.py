"""The one backend interface. Orchestration sees only this; each runtime lives in its own module.

Guarantees every implementation keeps:
- every ``apply_*`` is idempotent: after a crash anywhere, applying again converges;
- ``destroy`` accepts any id (typically one ``list`` returned); objects already gone count as destroyed,
  and only objects carrying this instance's and this live lesson's mark are touched;
- errors are :mod:`scheduler.errors` types, so callers read ``transient`` instead of guessing.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.plan import Plan
from scheduler.records import PodKind

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
    """Executes plans. Never invents a name: every name comes from the plan."""

    name: str
    # "container": a pod runs the endpoint's image; "emulated": a stand-in process (said wherever pods show)
    pods: PodKind

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`PrerequisiteMissing` naming what this backend needs and lacks (privileges, CNI
        plugins, a reachable API server and who we are on it); return when it could run a lesson. Cheap
        enough to call at start-up, so a missing prerequisite shows at once rather than in a lesson's
        first step."""

    @abc.abstractmethod
    def apply_networks(self, plan: Plan) -> None:
        """Create every network of the plan (bridges, NADs). Idempotent."""

    @abc.abstractmethod
    def apply_pods(self, plan: Plan) -> None:
        """Create every pod with its interfaces attached. Idempotent; does not wait for readiness."""

    @abc.abstractmethod
    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        """Report each pod's readiness and addresses, waiting at most ``wait`` seconds for all to be ready."""

    @abc.abstractmethod
    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        """Run ``argv`` (no shell) inside the endpoint's pod."""

    @abc.abstractmethod
    def destroy(self, livelesson: str) -> None:
        """Remove everything of that live lesson that carries this instance's mark. Idempotent."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Ids of the live lessons this instance holds objects for (GC's orphan search)."""

    def prune(self) -> bool:
        """Remove what outlives lessons once none is left (the local backend's node namespace, like a
        Kubernetes node it stays between lessons). True if something was removed. Default: nothing to do."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients and pools."""
