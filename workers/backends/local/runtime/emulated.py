"""Emulated pods (LESSON_LOCAL_PODS=emulated): a stand-in process per pod, for hosts without runc.

One launcher forks every missing pod process. Each (:mod:`workers.backends.local.runtime.podproc`, run as
a script) enters its pod's namespace, listens on the declared ports and writes
``lessons/<id>/pods/<endpoint>.pid`` once it does; its argv carries ``<mark>/<endpoint>``, so it is
recognised (and only then signalled) even without a pid file. What runs in such a pod (exec, attach) is
the host's own program, in the pod's network namespace and with the live lesson's hosts file as
/etc/hosts; records say the pods are emulated wherever pods are shown.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import Plan, Pod
from scheduler.core.records import PodKind
from workers.backends.local.net import netns
from workers.backends.local.ownership import Ownership
from workers.backends.local.parallel import parallel
from workers.backends.local.runtime.pod_runtime import NotReady

__all__ = ["PODPROC", "EmulatedRuntime", "PodProcesses", "stop"]

PODPROC = Path(__file__).with_name("podproc.py")


def stop(pid: int, still_ours: Callable[[], bool]) -> None:
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


class PodProcesses:
    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership

    def pidfile(self, livelesson: str, endpoint: str) -> Path:
        return self.ownership.folder(livelesson) / "pods" / f"{endpoint}.pid"

    def process(self, livelesson: str, endpoint: str) -> int | None:
        """The pod process's pid, if it is running and carries our mark."""
        try:
            pid = int(self.pidfile(livelesson, endpoint).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
            return None
        mark = f"{self.ownership.mark(livelesson)}/{endpoint}".encode()
        return pid if mark in cmdline and state != "Z" else None

    def process_ok(self, livelesson: str, pod: Pod) -> bool:
        """Running, ours, and inside the pod's current namespace (not one deleted and made again)."""
        pid = self.process(livelesson, pod.endpoint)
        if pid is None:
            return False
        if netns.holds(pod.netns, pid):
            return True
        self.stop_process(livelesson, pod.endpoint)  # stranded in a namespace that is gone
        return False

    def launch(self, plan: Plan, pods: Sequence[Pod]) -> None:
        """One launcher forks every missing pod process; it returns once all listen."""
        argv = [sys.executable, "-I", "-S", str(PODPROC)]
        for pod in pods:
            pidfile = self.pidfile(plan.livelesson, pod.endpoint)
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            argv += [
                "--pod",
                f"{self.ownership.mark(plan.livelesson)}/{pod.endpoint}",
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
        while waiting := [p for p in waiting if not self.process_ok(plan.livelesson, p)]:
            if time.monotonic() > deadline:
                raise TemporaryError(f"pods did not start: {', '.join(p.endpoint for p in waiting)}")
            time.sleep(0.01)

    def stop_process(self, livelesson: str, endpoint: str) -> None:
        pid = self.process(livelesson, endpoint)
        if pid is not None:
            stop(pid, lambda: self.process(livelesson, endpoint) == pid)

    def marked(self, livelesson: str) -> Sequence[int]:
        """Every process whose argv carries this live lesson's mark (pid files or not: a launcher that
        crashed may have left a pod process that no pid file names)."""
        prefix = f"{self.ownership.mark(livelesson)}/".encode()
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

    def is_marked(self, pid: int, livelesson: str) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        prefix = f"{self.ownership.mark(livelesson)}/".encode()
        return any(arg.startswith(prefix) for arg in argv)


class EmulatedRuntime:
    """Stand-in pods: ready once they listen on their declared ports."""

    kind: PodKind = "emulated"
    probes_ports = True

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership
        self.processes = PodProcesses(ownership)

    def prerequisites(self) -> None:
        """None beyond the backend's: a pod process is this host's Python."""

    def prepare(self, plan: Plan) -> None:
        """Nothing: a stand-in needs no image."""

    def start(self, plan: Plan, attach: Callable[[], None]) -> None:
        missing = [p for p in plan.pods if not self.processes.process_ok(plan.livelesson, p)]
        if not missing:
            attach()
            return
        # the launcher and the pods' CNI ADDs at once: they touch different objects
        parallel(lambda work: work(), [lambda: self.processes.launch(plan, missing), attach])

    def readiness(self, plan: Plan) -> Callable[[Pod], NotReady | None]:
        def check(pod: Pod) -> NotReady | None:
            if self.processes.process(plan.livelesson, pod.endpoint) is None:
                return NotReady("pod process not running")
            return None

        return check

    def exec(self, plan: Plan, pod: Pod, argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        return netns.run(self._argv(plan, argv), netns=pod.netns, timeout=timeout)

    def attach(self, plan: Plan, pod: Pod, argv: Sequence[str], *, tty: bool) -> int:
        command = self._argv(plan, argv)
        try:
            return netns.in_netns(pod.netns, lambda: subprocess.run(command, check=False).returncode, timeout=1e9)
        except FileNotFoundError as exc:
            raise PermanentError(f"`{argv[0]}` cannot run in {pod.endpoint}: {exc.strerror}") from exc

    def _argv(self, plan: Plan, argv: Sequence[str]) -> list[str]:
        """The command in a mount namespace of its own where the live lesson's hosts file is /etc/hosts (the
        host's filesystem otherwise): names resolve there as in a container."""
        hosts = self.ownership.hosts_file(plan.livelesson)
        if not hosts.exists():
            return list(argv)
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *argv]

    def remove(self, livelesson: str) -> None:
        """Every process carrying the live lesson's mark, pid file or not."""
        parallel(
            lambda pid: stop(pid, lambda: self.processes.is_marked(pid, livelesson)),
            self.processes.marked(livelesson),
        )

    def remains(self, livelesson: str) -> list[str]:
        return [f"pod process {pid}" for pid in self.processes.marked(livelesson)]

    def prune(self) -> None:
        """Nothing: pod processes belong to their live lessons."""
