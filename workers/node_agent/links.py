"""The VXLAN devices and lesson bridges of the node agent's own network namespace, through ``ip`` and
``bridge``. Only links marked :data:`naming.TUNNEL_MARK` are ever changed or removed; a device of our name
or VNI held by anything else is refused (:class:`PermanentError`), never taken over."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.core import naming
from scheduler.core.errors import PermanentError, TemporaryError
from workers import vxlan
from workers.node_agent.tunnels import End

__all__ = ["Device", "devices", "ensure", "remove_stale"]

_CALL = 20.0


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # "vxlan", "bridge", ...
    mark: str  # its alias, "" when none
    master: str  # the bridge it is a port of, "" when none
    vni: int | None


def _run(argv: Sequence[str], lines: Sequence[str] = ()) -> str:
    """The command's error output, or "" on success."""
    try:
        proc = subprocess.run(
            list(argv), input="\n".join(lines) + "\n" if lines else None, capture_output=True, text=True,
            timeout=_CALL, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return proc.stderr.strip() or proc.stdout.strip() if proc.returncode else ""


def devices() -> dict[str, Device]:
    """Every link of this namespace, by name."""
    try:
        out = subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True, timeout=_CALL)
        links = json.loads(out.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise TemporaryError(f"cannot list this node's links: {exc}") from exc
    found = {}
    for link in links:
        info = link.get("linkinfo") or {}
        vni = (info.get("info_data") or {}).get("id")
        found[link["ifname"]] = Device(
            link["ifname"], str(info.get("info_kind", "")), str(link.get("ifalias", "")), str(link.get("master", "")),
            vni if isinstance(vni, int) else None,
        )  # fmt: skip
    return found


def ensure(end: End, local: str, *, mtu: int) -> None:
    """The end's device: a port of its bridge (made when the CNI plugin has not yet), sending from
    ``local``, flooding to its remotes. Idempotent; repairs a device left half made."""
    links = devices()
    for name, kind in ((end.device, "VXLAN device"), (end.bridge, "bridge")):
        link = links.get(name)
        if link is not None and link.mark not in ("", end.mark):
            raise PermanentError(f"{kind} {name} here is not this link's (mark {link.mark!r}); refusing to use it")
    if end.bridge not in links:
        error = _run(["ip", "-batch", "-"], [f"link add {end.bridge} type bridge"])
        if error and end.bridge not in devices():  # the CNI plugin may have made it meanwhile
            raise TemporaryError(f"cannot make bridge {end.bridge}: {error}")
    device = links.get(end.device)
    if device is not None and (device.kind != "vxlan" or device.vni != end.vni):
        _run(["ip", "link", "del", end.device])  # ours, but not as it must be: made again
        device = None
    if device is None:
        error = _run(["ip", "-batch", "-"], vxlan.add(end.device, end.vni, local, mtu=mtu))
        if error and end.device not in devices():
            if vxlan.collides(error):
                raise PermanentError(f"VNI {end.vni} of {end.mark} is already used on this node: {error}")
            raise TemporaryError(f"cannot make VXLAN device {end.device}: {error}")
    lines = [f"link set {end.bridge} alias {end.mark} up", *vxlan.join(end.device, end.mark, end.bridge)]
    error = _run(["ip", "-batch", "-"], lines)
    error = error or _run(["bridge", "-batch", "-"], vxlan.flood(end.device, end.remotes))
    if error:
        raise TemporaryError(f"cannot join VXLAN device {end.device} to {end.bridge}: {error}")


def remove_stale(wanted: Sequence[End]) -> list[str]:
    """Remove the marked devices no end wants, then the marked bridges left with no port; what went."""
    keep = {e.device for e in wanted} | {e.bridge for e in wanted}
    links = devices()
    stale = [d for d in links.values() if d.mark.startswith(naming.TUNNEL_MARK) and d.name not in keep]
    removed = []
    for device in sorted((d for d in stale if d.kind == "vxlan"), key=lambda d: d.name):
        if not _run(["ip", "link", "del", device.name]):
            removed.append(device.name)
    ports = {d.master for d in devices().values() if d.master}
    for bridge in sorted((d for d in stale if d.kind == "bridge" and d.name not in ports), key=lambda d: d.name):
        if not _run(["ip", "link", "del", bridge.name]):
            removed.append(bridge.name)
    return removed
