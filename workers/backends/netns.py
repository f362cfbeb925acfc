"""Network namespaces and links: in-process syscalls and rtnetlink where that is cheap, iproute2 otherwise.

Creating, entering and deleting a namespace, bringing ``lo`` up and reading links and addresses are done
in-process (``unshare``/``setns``/``mount`` through libc, one rtnetlink dump), because each would
otherwise cost a process start; ``ip`` (argv only, never a shell) is kept for batches of link changes and
for callers that want its JSON.

A thread that enters a namespace (``setns``/``unshare`` move only the calling thread) is always a fresh
thread that ends right after, so no pooled thread is ever left in a foreign namespace. Processes started
from such a thread are born in that namespace, which is how :func:`run` replaces ``nsenter``.

Kept apart from the local backend so the test cluster's node agent can share it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler.errors import PermanentError, PrerequisiteMissing, TemporaryError

__all__ = [
    "NETNS_DIR",
    "Link",
    "NetlinkRace",
    "add",
    "addresses",
    "bridges",
    "check_privileges",
    "delete",
    "delete_links",
    "ensure_bridges",
    "exists",
    "in_netns",
    "ip",
    "link_table",
    "links",
    "names",
    "run",
    "tcp_open",
    "thread_addresses",
]

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
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


def in_netns(name: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` in a fresh thread that has entered namespace ``name`` (setns moves only that thread)."""

    def body() -> T:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise PermanentError(f"network namespace {name!r} does not exist") from exc
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise PermanentError(f"setns({name}): {os.strerror(ctypes.get_errno())}")
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


# --- links and addresses (rtnetlink dumps) -----------------------------------------------------------------

_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_RTM_NEWLINK, _RTM_GETLINK, _RTM_NEWADDR, _RTM_GETADDR = 16, 18, 20, 22
_IFLA_IFNAME, _IFLA_MASTER, _IFLA_LINKINFO, _IFLA_IFALIAS, _IFLA_INFO_KIND = 3, 10, 18, 20, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def _attrs(buf: bytes, offset: int) -> dict[int, bytes]:
    out = {}
    while offset + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[offset + 4 : offset + length]  # 0x3fff: without NLA_F_NESTED/NET_BYTEORDER
        offset += (length + 3) & ~3
    return out


def _dump(request: int, reply: int, body: bytes, fixed: int) -> Iterator[tuple[bytes, dict[int, bytes]]]:
    """One rtnetlink dump in the calling thread's namespace: (fixed header, attributes) per object."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=LHHLL", 16 + len(body), request, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=LH", data, offset)
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    if code:
                        raise OSError(code, f"rtnetlink dump: {os.strerror(code)}")
                elif kind == reply:
                    payload = data[offset + 16 : offset + length]
                    yield payload[:fixed], _attrs(payload, fixed)
                offset += (length + 3) & ~3


def _text(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


class Link(NamedTuple):
    name: str
    kind: str  # "bridge", "veth", ... ("" for lo and other kindless devices)
    alias: str
    master: str | None  # the bridge it is a port of


def _links() -> dict[int, Link]:
    """index -> link, in the calling thread's namespace."""
    raw = {}
    for head, attrs in _dump(_RTM_GETLINK, _RTM_NEWLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0), 16):
        index = struct.unpack_from("=BxHi", head)[2]
        kind = _text(_attrs(attrs[_IFLA_LINKINFO], 0).get(_IFLA_INFO_KIND)) if _IFLA_LINKINFO in attrs else ""
        master = struct.unpack("=I", attrs[_IFLA_MASTER])[0] if _IFLA_MASTER in attrs else 0
        raw[index] = (_text(attrs.get(_IFLA_IFNAME)), kind, _text(attrs.get(_IFLA_IFALIAS)), master)
    return {
        index: Link(name, kind, alias, raw[master][0] if master in raw else None)
        for index, (name, kind, alias, master) in raw.items()
    }


def thread_addresses() -> dict[str, list[str]]:
    """:func:`addresses` for the calling thread's namespace (inside :func:`in_netns`)."""
    links = _links()
    out: dict[str, list[str]] = {link.name: [] for link in links.values()}
    for head, attrs in _dump(_RTM_GETADDR, _RTM_NEWADDR, struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0), 8):
        family, prefixlen, _flags, _scope, index = struct.unpack("=BBBBI", head)
        raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
        if family == socket.AF_INET and raw and index in links:
            out[links[index].name].append(f"{socket.inet_ntoa(raw)}/{prefixlen}")
    return out


def link_table(netns: str) -> dict[str, Link]:
    """Every link in the namespace by name (kind, alias, master), in-process. Empty if it is gone."""
    if not exists(netns):
        return {}
    return {link.name: link for link in in_netns(netns, _links).values()}


def links(netns: str, *extra: str) -> list[dict[str, Any]]:
    """``ip -j -d link show [extra]``, for callers that want iproute2's full JSON."""
    if not exists(netns):
        return []
    out = ip("-j", "-d", "link", "show", *extra, netns=netns)
    return list(json.loads(out or "[]"))


def bridges(netns: str) -> dict[str, str]:
    """Bridge name -> its alias (our ownership mark, or ""). Empty if the namespace is gone."""
    if not exists(netns):
        return {}
    return {link.name: link.alias for link in link_table(netns).values() if link.kind == "bridge"}


# --- link changes (rtnetlink requests, one datagram for a whole batch) -----------------------------------

_NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x4, 0x200, 0x400
_RTM_DELLINK = 17
_NLA_F_NESTED = 0x8000
_IFF_UP = 0x1


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def _ifinfo(up: bool) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, _IFF_UP if up else 0, _IFF_UP if up else 0)


def _request(messages: Sequence[tuple[int, int, bytes]]) -> list[int]:
    """Send (type, flags, body) messages in one datagram, in the calling thread's namespace; the kernel
    runs them in order. Returns each one's errno (0 for success)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        datagram = b"".join(
            struct.pack("=LHHLL", 16 + len(body), kind, flags | _NLM_F_REQUEST | _NLM_F_ACK, seq, 0) + body
            for seq, (kind, flags, body) in enumerate(messages, start=1)
        )
        sock.send(datagram)
        errors: dict[int, int] = {}
        while len(errors) < len(messages):
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq = struct.unpack_from("=LHHL", data, offset)
                if kind == _NLMSG_ERROR:
                    errors[seq] = -struct.unpack_from("=i", data, offset + 16)[0]
                offset += (length + 3) & ~3
    return [errors[seq] for seq in range(1, len(messages) + 1)]


def ensure_bridges(netns: str, create: Sequence[str], aliases: dict[str, str]) -> list[str]:
    """Create bridges (up) and set aliases (and up) in one rtnetlink batch, in-process.

    Returns the names whose creation found them already there (EEXIST: a concurrent creator). Any other
    error is raised; EBUSY/EAGAIN as :class:`NetlinkRace`.
    """
    messages: list[tuple[int, int, bytes]] = []
    for name in create:
        linkinfo = _attr(_IFLA_LINKINFO | _NLA_F_NESTED, _attr(_IFLA_INFO_KIND, b"bridge\0"))
        body = _ifinfo(up=True) + _attr(_IFLA_IFNAME, name.encode() + b"\0") + linkinfo
        messages.append((_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body))
    for name, alias in aliases.items():
        body = _ifinfo(up=True) + _attr(_IFLA_IFNAME, name.encode() + b"\0") + _attr(_IFLA_IFALIAS, alias.encode())
        messages.append((_RTM_NEWLINK, 0, body))
    if not messages:
        return []
    errors = in_netns(netns, lambda: _request(messages))
    existed = [name for name, err in zip(create, errors, strict=False) if err == errno.EEXIST]
    for (_kind, _flags, body), err in zip(messages, errors, strict=True):
        if err and err != errno.EEXIST:
            name = _text(_attrs(body, 16).get(_IFLA_IFNAME))
            text = f"bridge {name} in {netns}: {os.strerror(err)}"
            raise (NetlinkRace if err in (errno.EBUSY, errno.EAGAIN) else PermanentError)(text)
    return existed


def delete_links(netns: str, names: Sequence[str]) -> None:
    """Delete links by name in one rtnetlink batch, in-process; already gone counts as deleted."""
    if not names or not exists(netns):
        return
    messages = [(_RTM_DELLINK, 0, _ifinfo(up=False) + _attr(_IFLA_IFNAME, n.encode() + b"\0")) for n in names]
    errors = in_netns(netns, lambda: _request(messages), timeout=60.0)
    failed = {n: os.strerror(e) for n, e in zip(names, errors, strict=True) if e not in (0, errno.ENODEV)}
    if failed:
        raise TemporaryError(f"cannot delete links in {netns}: {failed}")


def addresses(netns: str) -> dict[str, list[str]]:
    """Every interface in the namespace -> its IPv4 CIDRs (an empty list when it has none)."""
    return in_netns(netns, thread_addresses)


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
