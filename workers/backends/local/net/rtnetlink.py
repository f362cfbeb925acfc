"""rtnetlink, hand-written: link and address dumps and batches of link changes, in-process.

Each call runs in a fresh thread that entered the namespace (:func:`netns.in_netns`): one dump, or one
datagram holding a whole batch of requests, instead of an ``ip`` process per read or change.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from scheduler.core.errors import PermanentError, TemporaryError
from workers.backends.local.net.netns import NamespaceGone, exists, in_netns

__all__ = [
    "Link",
    "NetlinkRace",
    "addresses",
    "bridges",
    "delete_links",
    "ensure_bridges",
    "link_table",
    "thread_addresses",
]


class NetlinkRace(TemporaryError):
    """EBUSY/EEXIST/EAGAIN from the kernel: another actor is mid-change on the same object."""


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
    try:
        return {link.name: link for link in in_netns(netns, _links).values()}
    except NamespaceGone:  # deleted since exists() looked (a GC pass pruning an empty node)
        return {}


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
