"""Network namespaces: create, delete and enter them in-process (``unshare``/``setns``/``mount`` through libc).

Creating, entering and deleting a namespace and bringing ``lo`` up are done in-process, because each would
otherwise cost a process start (``ip netns add`` is used once, for the host's first named namespace).

A thread that enters a namespace (``setns``/``unshare`` move only the calling thread) is always a fresh
thread that ends right after, so no pooled thread is ever left in a foreign namespace. Processes started
from such a thread are born in that namespace, which is how :func:`run` replaces ``nsenter``.

Links and addresses are read and changed by :mod:`workers.backends.local.net.rtnetlink`. Kept apart from the
local backend's class so the test cluster's node agent can share it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from scheduler.core.errors import PermanentError, PrerequisiteMissing, TemporaryError

__all__ = [
    "NETNS_DIR",
    "NamespaceGone",
    "add",
    "check_privileges",
    "delete",
    "exists",
    "holds",
    "in_netns",
    "names",
    "run",
    "tcp_open",
]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
T = TypeVar("T")


# --- namespaces ------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _oserror(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def names() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir()}
    except FileNotFoundError:
        return set()


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def holds(name: str, pid: int) -> bool:
    """Whether process ``pid`` is in namespace ``name`` as it is now (not in one of that name that was
    deleted and made again). False when either is gone."""
    try:
        return Path(f"/proc/{pid}/ns/net").stat().st_ino == (NETNS_DIR / name).stat().st_ino
    except FileNotFoundError:
        return False


_nsfs_dev: int | None = None


def _is_netns(path: Path) -> bool:
    """True when ``path`` is a bound namespace, not just the empty file a creator starts with."""
    global _nsfs_dev
    if _nsfs_dev is None:
        _nsfs_dev = Path("/proc/self/ns/net").stat().st_dev  # every nsfs inode shares this device
    try:
        return path.stat().st_dev == _nsfs_dev
    except FileNotFoundError:
        return False


def _in_fresh_thread(fn: Callable[[], T], timeout: float, what: str) -> T:
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TemporaryError(f"timed out after {timeout}s: {what}")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _lo_up() -> None:
    """``ip link set lo up`` for the calling thread's namespace, by ioctl."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        res = fcntl.ioctl(sock, siocgifflags, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack_from("16sH", res)[1]
        if not flags & iff_up:
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def _create(path: Path, loopback: bool) -> bool:
    """What ``ip netns add`` does: an empty file, a fresh namespace, the one bind-mounted on the other."""

    def body() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:  # moves only this (fresh) thread
            raise _oserror("unshare(CLONE_NEWNET)")
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if _libc.mount(source, str(path).encode(), b"none", MS_BIND, None) != 0:
            raise _oserror(f"bind-mount {path}")
        if loopback:
            _lo_up()

    for attempt in range(2):
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        except FileExistsError:
            # a concurrent creator between its open and its mount, or the leftover of one that crashed there
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if _is_netns(path):
                    return False
                time.sleep(0.01)
            if attempt:
                raise PermanentError(f"{path} exists but never became a network namespace") from None
            path.unlink(missing_ok=True)
            continue
        try:
            _in_fresh_thread(body, 10.0, f"create netns {path.name}")
        except BaseException as exc:
            path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise PermanentError(f"cannot create network namespace {path.name!r}: {exc}") from exc
            raise
        return True
    return False


_dir_mounted = False


def _netns_dir_mounted() -> bool:
    """/run/netns is a mount point (iproute2 bind-mounts it onto itself; ``os.path.ismount`` misses that)."""
    global _dir_mounted
    if not _dir_mounted:
        target = str(NETNS_DIR).encode()
        with open("/proc/self/mountinfo", "rb") as handle:
            _dir_mounted = any(line.split(b" ")[4] == target for line in handle)
    return _dir_mounted


def add(name: str, *, loopback: bool = True) -> bool:
    """Create the namespace if missing, with ``lo`` up. Idempotent and safe against a concurrent creator.

    True when this call created it (so it is known to be empty).
    """
    path = NETNS_DIR / name
    if _is_netns(path):
        if loopback:
            in_netns(name, _lo_up)
        return False
    if not _netns_dir_mounted():
        # the host's first named namespace: let iproute2 make /run/netns the shared mount it always uses
        proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0 and not _is_netns(path):
            raise PermanentError(f"cannot create network namespace {name!r}: {proc.stderr.strip()}")
        if loopback:
            in_netns(name, _lo_up)
        return proc.returncode == 0
    return _create(path, loopback)


def delete(name: str) -> None:
    """What ``ip netns del`` does: lazy unmount, then unlink. Missing counts as deleted."""
    path = NETNS_DIR / name
    if not os.path.lexists(path):
        return
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (a crashed creator's file)
            raise TemporaryError(f"cannot unmount network namespace {name!r}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TemporaryError(f"cannot delete network namespace {name!r}: {exc.strerror}") from exc


class NamespaceGone(PermanentError):
    """The network namespace does not exist: never made, or deleted (perhaps while we looked)."""


def in_netns(name: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` in a fresh thread that has entered namespace ``name`` (setns moves only that thread)."""

    def body() -> T:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NamespaceGone(f"network namespace {name!r} does not exist") from exc
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                if err == errno.EINVAL:  # the file is no namespace (any more): deleted between open and setns
                    raise NamespaceGone(f"network namespace {name!r} does not exist")
                raise PermanentError(f"setns({name}): {os.strerror(err)}")
        finally:
            os.close(fd)
        return fn()

    return _in_fresh_thread(body, timeout, f"netns-{name}")


def run(
    argv: Sequence[str], *, netns: str, timeout: float, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``nsenter --net`` without the extra process: the child is born in the namespace of the thread."""
    return in_netns(
        netns,
        lambda: subprocess.run(list(argv), input=input, env=env, capture_output=True, timeout=timeout, check=False),
        timeout=timeout + 5.0,
    )


def tcp_open(ports: Sequence[int], host: str = "127.0.0.1", timeout: float = 0.5) -> list[int]:
    """The ports that accept a connection (call inside a namespace with :func:`in_netns`)."""
    open_ports = []
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                open_ports.append(port)
        except OSError:
            pass
    return open_ports


# --- prerequisites ---------------------------------------------------------------------------------------


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """One clear message naming what is missing and how to get it."""
    caps = _capabilities()
    missing = [name for name, bit in (("CAP_NET_ADMIN", 12), ("CAP_SYS_ADMIN", 21)) if not caps & (1 << bit)]
    if missing:
        raise PrerequisiteMissing(
            f"the local backend needs {' and '.join(missing)} (run as root, e.g. `sudo lessonctl ...`, "
            "or use LESSON_BACKEND=kubernetes)"
        )
    for tool, package in (("ip", "iproute2"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            raise PrerequisiteMissing(f"`{tool}` is not on PATH: install it with `apt-get install {package}`")
