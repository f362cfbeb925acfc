"""Container pods (LESSON_LOCAL_PODS=container): each pod runs the endpoint's image with runc, as a kubelet.

The image comes from the local image store (:mod:`workers.backends.local.image_store`), pulled and unpacked
before the lesson's lock; the container is started after the pod's interfaces are attached, in the pod's
network namespace (:mod:`workers.backends.local.runtime.runc` builds its bundle and runs it). A container is
ours when runc's record of it has its bundle in our live lesson's folder; nothing else is ever touched.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from scheduler.core import naming
from scheduler.core.errors import PermanentError, PrerequisiteMissing
from scheduler.core.plan import Plan, Pod
from scheduler.core.records import PodKind
from workers.backends.local.image_store import ImageStore, tool_message
from workers.backends.local.net import netns
from workers.backends.local.ownership import Ownership
from workers.backends.local.parallel import parallel
from workers.backends.local.runtime.pod_runtime import NotReady
from workers.backends.local.runtime.runc import (
    ContainerState,
    Runc,
    cgroup_dirs,
    mounts_under,
    output_tail,
    remove_cgroup,
    unmount_all,
)

__all__ = ["ContainerRuntime"]


class ContainerRuntime:
    """Container pods: ready once their process runs, as a Kubernetes pod without a readiness probe."""

    kind: PodKind = "container"
    probes_ports = False

    def __init__(self, ownership: Ownership, *, images: ImageStore, runc: Runc) -> None:
        self.ownership = ownership
        self.images = images
        self.runc = runc

    def prerequisites(self) -> None:
        missing = [tool for tool in ("runc", "umoci", "skopeo") if shutil.which(tool) is None]
        if missing:
            raise PrerequisiteMissing(
                f"container pods need {', '.join(missing)}: apt-get install runc umoci skopeo "
                "(or set LESSON_LOCAL_PODS=emulated for stand-in processes instead of containers)"
            )
        with open("/proc/filesystems") as handle:
            if "overlay" not in handle.read().split():
                raise PrerequisiteMissing("container pods need the kernel's overlay filesystem (modprobe overlay)")

    def prepare(self, plan: Plan) -> None:
        """Every image of the plan in the store and unpacked: one that cannot be had fails the lesson here."""
        for reference in sorted({p.image for p in plan.pods}):
            self.images.unpacked(reference)

    def start(self, plan: Plan, attach: Callable[[], None]) -> None:
        # the interfaces first, as a kubelet starts containers after the sandbox's CNI ADD: what runs in the
        # pod finds them there from its first instruction
        attach()
        states = self.runc.states()
        starting = [p for p in plan.pods if not _current(states.get(p.container), p)]
        # prepared before the lock: found again here, never pulled under it
        images = {ref: self.images.unpacked(ref, pull=False) for ref in sorted({p.image for p in starting})}
        hosts = self.ownership.hosts_file(plan.livelesson)

        def start(pod: Pod) -> None:
            bundle = self._bundle(plan.livelesson, pod.endpoint)
            state = states.get(pod.container)
            if state is not None:
                if state.bundle != bundle:
                    raise PermanentError(f"container {pod.container} exists but is not ours (bundle {state.bundle})")
                # created by a crashed attempt, exited, or stranded in an old namespace: replaced, as a kubelet
                # restarts a pod's container
                self.runc.remove(pod.container)
            self.runc.start(plan, pod, images[pod.image], bundle, hosts)

        parallel(start, starting)

    def readiness(self, plan: Plan) -> Callable[[Pod], NotReady | None]:
        states = self.runc.states()  # one runc process for every pod of the observation

        def check(pod: Pod) -> NotReady | None:
            state = states.get(pod.container)
            if state is None or state.status == "created":
                return NotReady("container not started")
            if state.status == "stopped":
                tail = output_tail(self._bundle(plan.livelesson, pod.endpoint))
                said = f"; its last output: {tail}" if tail else " without output"
                return NotReady(f"container {pod.endpoint} exited{said}", fatal=True)
            if not _current(state, pod):
                return NotReady(f"container {state.status} or in an old network namespace")
            return None

        return check

    def exec(self, plan: Plan, pod: Pod, argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        proc = self.runc.exec(pod.container, argv, timeout=timeout)
        _exec_error(proc.returncode, proc.stderr.decode(errors="replace"), pod.endpoint, argv)
        return proc

    def attach(self, plan: Plan, pod: Pod, argv: Sequence[str], *, tty: bool) -> int:
        if not _current(self.runc.states().get(pod.container), pod):
            raise PermanentError(f"the container of {pod.endpoint} is not running")
        return self.runc.attach(pod.container, argv, tty=tty)

    def remove(self, livelesson: str) -> None:
        """The live lesson's containers, their overlay mounts and its cgroup subtree."""
        folder = self.ownership.folder(livelesson)
        parallel(lambda c: self.runc.remove(c.id), self._containers(livelesson))
        unmount_all(folder)
        remove_cgroup(naming.cgroup_parent(self.ownership.instance, livelesson))

    def remains(self, livelesson: str) -> list[str]:
        found = [f"container {c.id}" for c in self._containers(livelesson)]
        found += [f"mount {m}" for m in mounts_under(self.ownership.folder(livelesson))]
        cgroup = naming.cgroup_parent(self.ownership.instance, livelesson)
        return found + [f"cgroup {d}" for d in cgroup_dirs(cgroup) if d.exists()]

    def prune(self) -> None:
        """The instance's cgroup subtree, and the one shared by instances once it is empty."""
        remove_cgroup(naming.cgroup_instance(self.ownership.instance))
        for top in cgroup_dirs(naming.MANAGED_BY):
            with contextlib.suppress(OSError):
                top.rmdir()

    def _bundle(self, livelesson: str, endpoint: str) -> Path:
        return self.ownership.folder(livelesson) / "containers" / endpoint

    def _containers(self, livelesson: str) -> list[ContainerState]:
        """The live lesson's containers: those whose bundle is in its folder."""
        folder = self.ownership.folder(livelesson) / "containers"
        return [c for c in self.runc.states().values() if c.bundle.parent == folder]


def _current(state: ContainerState | None, pod: Pod) -> bool:
    """Running, and in the pod's current network namespace (not one deleted and made again)."""
    return state is not None and state.status == "running" and netns.holds(pod.netns, state.pid)


def _exec_error(returncode: int, stderr: str, endpoint: str, argv: Sequence[str]) -> None:
    """runc exec's own failures (exit 255 with its message) as errors; the command's exit is a result."""
    if returncode != 255:
        return
    message = tool_message(stderr)
    if "executable file not found" in message or "no such file or directory" in message:
        raise PermanentError(f"`{argv[0]}` cannot run in {endpoint}: {message}")
    if "container does not exist" in message or "not running" in message or "cannot exec" in message:
        raise PermanentError(f"the container of {endpoint} is not running: {message}")
