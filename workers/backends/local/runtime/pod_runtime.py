"""What runs in a local pod: the one interface both kinds meet, so the backend never asks which it has.

The backend makes each pod's network namespace and attachments; a pod runtime puts something in the
namespace and answers for it. LESSON_LOCAL_PODS picks one per backend:
:class:`~workers.backends.local.runtime.containers.ContainerRuntime` runs the endpoint's image with runc,
as a kubelet would; :class:`~workers.backends.local.runtime.emulated.EmulatedRuntime` runs a stand-in
process that listens on the declared ports, for hosts without a container runtime.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.core.plan import Plan, Pod
from scheduler.core.records import PodKind

__all__ = ["NotReady", "PodRuntime"]


@dataclass(frozen=True)
class NotReady:
    """Why a pod's own process is not ready; ``fatal`` when waiting will not change it (it exited)."""

    reason: str
    fatal: bool = False


class PodRuntime(Protocol):
    kind: PodKind
    # ready once the pod's declared ports accept connections (a stand-in), or once its process runs (a
    # container, as a Kubernetes pod without a readiness probe: what an image does on its ports is its own)
    probes_ports: bool

    def prerequisites(self) -> None:
        """Raise ``PrerequisiteMissing`` naming what this host lacks, and how to get it."""

    def prepare(self, plan: Plan) -> None:
        """What may take a while or fail for good, done before the lesson's lock and before anything of its
        pods is made (a container's image pulled and unpacked)."""

    def start(self, plan: Plan, attach: Callable[[], None]) -> None:
        """Make every pod of the plan run, once; ``attach`` makes their interfaces (their namespaces exist).
        Each runtime orders its own work around it. Idempotent: what runs and is current is left alone."""

    def readiness(self, plan: Plan) -> Callable[[Pod], NotReady | None]:
        """Read what runs once for one observation; the function returned says why a pod's process is not
        ready, or None when it is."""

    def exec(self, plan: Plan, pod: Pod, argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        """``argv`` in the pod, output captured. Raises ``PermanentError`` for the runtime's own refusals;
        the command's exit status is a result."""

    def attach(self, plan: Plan, pod: Pod, argv: Sequence[str], *, tty: bool) -> int:
        """``argv`` in the pod on this process's stdin, stdout and stderr; its exit status."""

    def remove(self, livelesson: str) -> None:
        """Stop and remove whatever of this kind runs for the live lesson (only what carries its mark)."""

    def remains(self, livelesson: str) -> list[str]:
        """What of this kind is still on the host for the live lesson, one line each."""

    def prune(self) -> None:
        """Remove what this kind keeps for the instance once it has no live lesson left."""
