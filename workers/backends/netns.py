"""Network namespaces and links, through iproute2 (argv only, never a shell).

Kept apart from the local backend so the test cluster's node agent can share it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler.errors import PermanentError, PrerequisiteMissing, TemporaryError

__all__ = [
    "NETNS_DIR",
    "NetlinkRace",
    "add",
    "addresses",
    "bridges",
    "check_privileges",
    "delete",
    "exists",
    "in_netns",
    "ip",
    "names",
    "tcp_open",
]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetlinkRace(TemporaryError):
    """EBUSY/EEXIST/EAGAIN from the kernel: another actor is mid-change on the same object."""


_RACES = ("device or resource busy", "resource temporarily unavailable", "file exists")


@retry(
    retry=retry_if_exception_type(NetlinkRace),
    stop=stop_after_delay(5),
    wait=wait_exponential(multiplier=0.02, max=0.5),
    reraise=True,
)
def ip(*args: str, netns: str | None = None, check: bool = True, stdin: str | None = None) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0 and check:
        err = proc.stderr.strip()
        if any(r in err.lower() for r in _RACES):
            raise NetlinkRace(f"`{' '.join(argv)}`: {err}")
        raise PermanentError(f"`{' '.join(argv)}` failed: {err}")
    return proc.stdout


def names() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir()}
    except FileNotFoundError:
        return set()


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add(name: str, *, loopback: bool = True) -> None:
    """Create the namespace if missing, with ``lo`` up. Idempotent and safe against a concurrent creator."""
    if not exists(name):
        proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0 and not exists(name):
            raise PermanentError(f"cannot create network namespace {name!r}: {proc.stderr.strip()}")
    if loopback:
        ip("link", "set", "lo", "up", netns=name)


def delete(name: str) -> None:
    if not exists(name):
        return
    proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0 and exists(name):
        raise TemporaryError(f"cannot delete network namespace {name!r}: {proc.stderr.strip()}")


def links(netns: str, *extra: str) -> list[dict[str, Any]]:
    if not exists(netns):
        return []
    out = ip("-j", "-d", "link", "show", *extra, netns=netns)
    return list(json.loads(out or "[]"))


def bridges(netns: str) -> dict[str, str]:
    """Bridge name -> its alias (our ownership mark, or "")."""
    return {link["ifname"]: link.get("ifalias", "") for link in links(netns, "type", "bridge")}


def addresses(netns: str) -> dict[str, list[str]]:
    """Interface name -> IPv4 CIDRs actually configured in the namespace."""
    out = ip("-j", "-4", "addr", "show", netns=netns)
    return {
        itf["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in itf.get("addr_info", [])]
        for itf in json.loads(out or "[]")
    }


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` in a fresh thread that has entered namespace ``name`` (setns moves only that thread)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            with (NETNS_DIR / name).open("rb") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise PermanentError(f"setns({name}): {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TemporaryError(f"timed out after {timeout}s inside network namespace {name!r}")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


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
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            raise PrerequisiteMissing(f"`{tool}` is not on PATH: install it with `apt-get install {package}`")
