"""runc and what it is handed: each container's bundle, its overlay mount, its cgroup.

What a kubelet does with containerd on the seed's worker node, done with runc alone: the image (unpacked
once by :mod:`workers.backends.local.image_store`) is the read-only lower layer of an overlay mount whose
upper layer belongs to the container; the OCI runtime config is umoci's (from the image's config) with the
pod's part set here: the command, the network namespace the CNI plugins attached (joined, not made), its own
PID, mount, UTS (hostname = endpoint) and IPC namespaces, a cgroup under the live lesson's with the pod's
limits, and the security context the render gives Kubernetes (privileged for trusted pods, a few
capabilities otherwise). :mod:`workers.backends.local.runtime.containers` decides when each runs.

Per container, inside the live lesson's folder (removed by destroy)::

    containers/<endpoint>/config.json   the runtime config
    containers/<endpoint>/rootfs/       the overlay mount (lower: the unpacked image)
    containers/<endpoint>/upper/, work/ the container's own layer
    containers/<endpoint>/output.log    its stdout and stderr
    containers/<endpoint>/runc.log      runc's own errors, of its last start

runc's state lives under ``<state>/<instance>/runc``. A container is ours when runc's record of it has its
bundle in our live lesson's folder; nothing else is ever killed or deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import POD_LIMITS, POD_PIDS_LIMIT, UNTRUSTED_CAPABILITIES, Plan, Pod
from workers.backends.local.image_store import Unpacked, tool_message
from workers.backends.local.net.netns import NETNS_DIR

__all__ = [
    "ALL_CAPABILITIES",
    "ContainerState",
    "Runc",
    "cgroup_dirs",
    "mounts_under",
    "output_tail",
    "privileged_capabilities",
    "remove_cgroup",
    "runtime_config",
    "unmount_all",
]

log = structlog.get_logger(__name__)

RUNC_TIMEOUT = 30.0
CPU_PERIOD_US = 100_000
OUTPUT_TAIL = 400
# Linux's capabilities by number (CAP_CHOWN is 0): a privileged container gets those of our bounding set
ALL_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
]
CGROUP_ROOT = Path("/sys/fs/cgroup")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 0x2


@dataclass(frozen=True)
class ContainerState:
    id: str
    status: str  # created | running | paused | stopped
    pid: int
    bundle: Path


def cgroup_dirs(relative: str) -> list[Path]:
    """``relative`` (a cgroupsPath) in every hierarchy: the unified one on cgroup v2, each controller's on v1."""
    rel = relative.lstrip("/")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / rel]
    return sorted(
        d / rel for d in CGROUP_ROOT.iterdir() if d.is_dir() and not d.is_symlink() and (d / "cgroup.procs").exists()
    )


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder`` in this process's mount namespace, deepest first."""
    prefix = str(folder).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split(" ")[4].encode().decode("unicode_escape")  # mountinfo escapes as \\040
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


class Runc:
    def __init__(self, root: Path) -> None:
        self.root = root  # runc --root: its state of every container of this instance

    def _runc(self, *argv: str, timeout: float = RUNC_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["runc", "--root", str(self.root), *argv],
                text=True, timeout=timeout, check=False, **{"capture_output": True, **kwargs},
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise TemporaryError(f"runc {argv[0]} did not finish within {timeout:.0f} s") from exc

    # --- reading -----------------------------------------------------------------------------------------

    def states(self) -> dict[str, ContainerState]:
        """Every container runc knows under our root, by id (one runc process for all)."""
        if not self.root.is_dir():
            return {}
        proc = self._runc("list", "--format", "json")
        if proc.returncode != 0:
            raise TemporaryError(f"runc list failed: {proc.stderr.strip()}")
        found = {}
        for entry in json.loads(proc.stdout or "null") or []:
            found[entry["id"]] = ContainerState(entry["id"], entry["status"], int(entry["pid"]), Path(entry["bundle"]))
        return found

    # --- running -----------------------------------------------------------------------------------------

    def start(self, plan: Plan, pod: Pod, image: Unpacked, bundle: Path, hosts: Path | None = None) -> None:
        """Create and start the pod's container from ``image`` in ``bundle``; returns once its process runs.
        ``hosts`` is bind-mounted read-only as its /etc/hosts (the live lesson's names).

        The bundle may hold a crashed attempt's leftovers (a mount, a config): they are reused or replaced."""
        bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
        rootfs = bundle / "rootfs"
        if rootfs not in mounts_under(bundle):
            for folder in ("upper", "work", "rootfs"):
                (bundle / folder).mkdir(exist_ok=True)
            options = f"lowerdir={image.rootfs},upperdir={bundle / 'upper'},workdir={bundle / 'work'}"
            if _libc.mount(b"overlay", str(rootfs).encode(), b"overlay", 0, options.encode()) != 0:
                err = ctypes.get_errno()
                raise PermanentError(f"overlay mount for {pod.endpoint} failed: {os.strerror(err)}")
        config = runtime_config(plan, pod, image, rootfs, hosts)
        (bundle / "config.json").write_text(json.dumps(config))
        runc_log = bundle / "runc.log"
        runc_log.unlink(missing_ok=True)
        with open(bundle / "output.log", "ab") as output:
            # detached: runc returns once the container's process runs. The container inherits runc's stdio,
            # so both go to the output file (a pipe would stay open for the container's life); runc's own
            # errors go to --log
            proc = self._runc(
                "--log", str(runc_log), "run", "--detach", "--bundle", str(bundle), pod.container,
                stdin=subprocess.DEVNULL, stdout=output, stderr=output, capture_output=False,
            )  # fmt: skip
        if proc.returncode != 0:
            error = _runc_error(runc_log.read_text() if runc_log.exists() else "")
            if "already exists" in error:
                return  # a concurrent apply started it first
            if "executable file not found" in error or "no such file or directory" in error:
                raise PermanentError(f"container {pod.endpoint} cannot start: {error}")
            raise TemporaryError(f"container {pod.endpoint} did not start: {error}")
        log.info("container started", livelesson=plan.livelesson, endpoint=pod.endpoint, image=image.reference)

    def remove(self, container: str) -> None:
        """Kill and delete one container (runc removes its cgroup); gone already counts as removed."""
        proc = self._runc("delete", "--force", container)
        if proc.returncode != 0 and "does not exist" not in proc.stderr and "not exist" not in proc.stderr:
            raise TemporaryError(f"runc delete {container} failed: {_runc_error(proc.stderr)}")

    def exec(self, container: str, argv: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        """``argv`` in the container, output captured; a timeout kills runc exec and what it started."""
        full = ["runc", "--root", str(self.root), "exec", container, *argv]
        return subprocess.run(full, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)

    def attach(self, container: str, argv: Sequence[str], *, tty: bool) -> int:
        """``argv`` in the container on this process's stdin/stdout/stderr (``-t``: a terminal); its status."""
        full = ["runc", "--root", str(self.root), "exec", *(["-t"] if tty else []), container, *argv]
        # the terminal's Ctrl-C belongs to the process in the container, not to us
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.run(full, check=False).returncode
        finally:
            signal.signal(signal.SIGINT, previous)


def runtime_config(plan: Plan, pod: Pod, image: Unpacked, rootfs: Path, hosts: Path | None = None) -> dict[str, Any]:
    """umoci's config for the image, with the pod's command, namespaces, cgroup, limits and privileges, and
    ``hosts`` as its /etc/hosts (as a kubelet mounts the one it writes)."""
    config = image.runtime_config()
    image_config = image.image_config()
    process = config["process"]
    process["terminal"] = False
    process["args"] = _argv(pod, image_config, process.get("args") or [])
    env = [e for e in process.get("env", []) if not e.startswith(("HOSTNAME=", "TERM="))]
    process["env"] = [*env, f"HOSTNAME={pod.endpoint}"]
    caps = privileged_capabilities() if pod.flavor == "trusted" else list(UNTRUSTED_CAPABILITIES)
    process["capabilities"] = {k: [f"CAP_{c}" for c in caps] for k in ("bounding", "effective", "permitted")}
    process["noNewPrivileges"] = pod.flavor != "trusted"
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["hostname"] = pod.endpoint
    if hosts is not None:
        mounts = [m for m in config.get("mounts", []) if m.get("destination") != "/etc/hosts"]
        config["mounts"] = [
            *mounts,
            {
                "destination": "/etc/hosts",
                "type": "bind",
                "source": str(hosts),
                "options": ["bind", "ro", "nosuid", "nodev"],
            },
        ]
    linux = config.setdefault("linux", {})
    linux["namespaces"] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "network", "path": str(NETNS_DIR / pod.netns)},
    ]
    linux["cgroupsPath"] = f"{plan.cgroup}/{pod.endpoint}"
    resources = linux.setdefault("resources", {})
    resources["memory"] = {"limit": POD_LIMITS.memory_bytes}
    resources["cpu"] = {"quota": POD_LIMITS.cpu_millicores * CPU_PERIOD_US // 1000, "period": CPU_PERIOD_US}
    resources["pids"] = {"limit": POD_PIDS_LIMIT}
    if pod.forwarding:
        linux["sysctl"] = {"net.ipv4.ip_forward": "1"}  # in the pod's network namespace, by runc
    if pod.flavor == "trusted":
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
        resources["devices"] = [{"allow": True, "access": "rwm"}]
    config["annotations"] = {
        **(config.get("annotations") or {}),
        "lessons.io/livelesson": plan.livelesson,
        "lessons.io/endpoint": pod.endpoint,
        "lessons.io/image": image.reference,
    }
    return config


def privileged_capabilities() -> list[str]:
    """A privileged container's capabilities: every one in our own bounding set, as Docker gives (asking
    for one we lack, or one this kernel does not know, makes runc fail with EPERM)."""
    with open("/proc/self/status") as handle:
        bounding = int(next(line for line in handle if line.startswith("CapBnd:")).split()[1], 16)
    return [name for bit, name in enumerate(ALL_CAPABILITIES) if bounding >> bit & 1]


def _argv(pod: Pod, image_config: Mapping[str, Any], image_argv: list[str]) -> list[str]:
    """Kubernetes' rule: ``command`` replaces the image's entrypoint, ``args`` its cmd."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(image_config.get("Cmd") or [])
    if pod.command:
        return [*pod.command, *(pod.args or ())]
    if pod.args:
        return [*entrypoint, *pod.args]
    argv = [*entrypoint, *cmd] or image_argv
    if not argv:
        raise PermanentError(
            f"image {pod.image} of {pod.endpoint} has no entrypoint or cmd; the lesson must give a command"
        )
    return argv


def output_tail(bundle: Path) -> str:
    """The end of a container's output, one line, for a reason shown to people."""
    try:
        with open(bundle / "output.log", "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - OUTPUT_TAIL))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-3:] if line.strip())


def _runc_error(stderr: str) -> str:
    return tool_message(stderr) or "no message"


def unmount_all(folder: Path) -> None:
    """Detach every mount at or below ``folder`` (a container's overlay), deepest first."""
    for point in mounts_under(folder):
        if _libc.umount2(str(point).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):  # EINVAL: not a mount (any more); ENOENT: gone
                raise TemporaryError(f"unmounting {point} failed: {os.strerror(err)}")


def remove_cgroup(relative: str) -> None:
    """Remove a cgroup subtree in every hierarchy, SIGKILLing whatever still runs in it (a container
    whose runc record was lost); deepest first, as the kernel requires."""
    for top in cgroup_dirs(relative):
        if not top.is_dir():
            continue
        folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for folder in [*folders, top]:
            for _attempt in range(50):
                try:
                    pids = [int(x) for x in (folder / "cgroup.procs").read_text().split()]
                except FileNotFoundError:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the killed processes exit
                    time.sleep(0.02)
            else:
                raise TemporaryError(f"cgroup {folder} is still busy")
