"""Run the real CNI plugins, exactly as Multus would: config on stdin, parameters in CNI_* variables.

The plugin process is born inside the "node" network namespace (where the bridges live): it is started
from a thread that entered that namespace (:func:`netns.run`, ``nsenter`` without the extra process);
the plugin itself enters the pod's namespace (``CNI_NETNS``) for the container side.
Shared by the local backend and the test cluster's node agent.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack

import structlog
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler.core.errors import PermanentError, PrerequisiteMissing, TemporaryError
from workers.backends.local.net import netns as _netns

__all__ = ["PLUGIN_DIR", "CniError", "CniResult", "Where", "add", "delete", "netns_path", "plugin"]

log = structlog.get_logger(__name__)

CALL_TIMEOUT = 20.0
PLUGIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins

# Races that clear within moments, so they are retried in place: a bridge or veth created by a concurrent
# ADD (EEXIST), a device still settling after a DEL (EBUSY), netlink's EAGAIN.
_RACE_MARKERS = ("file exists", "device or resource busy", "resource temporarily unavailable")
# A DEL that found the interface and then lost it (ENODEV) raced the kernel removing it (its namespace or
# its veth peer going away); the next DEL finds nothing and succeeds.
_DEL_RACE_MARKERS = ("no such device",)
# CNI's own "try again later" (spec error code 11): the plugin asks to be called again later, so the error
# goes up to the queue's retry rather than being spun on here.
TRY_AGAIN_LATER = 11


def netns_path(name: str) -> Path:
    return _netns.NETNS_DIR / name


class Where(TypedDict):
    """Which attachment a call is about (the CNI_* parameters), and where the plugin runs."""

    container_id: str
    netns: Path  # the pod's namespace (CNI_NETNS)
    ifname: str
    node_netns: str | None  # the namespace the plugin is started in; None: this process's
    plugin_dir: NotRequired[Path]


class CniError(PermanentError):
    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CniRace(TemporaryError):
    pass


@dataclass(frozen=True)
class CniResult:
    addresses: list[str]  # CIDRs on the container interface, e.g. ["10.10.12.2/24"]
    mac: str | None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: dict[str, Any], ifname: str) -> CniResult:
        interfaces = raw.get("interfaces") or []
        index = next((i for i, itf in enumerate(interfaces) if itf.get("name") == ifname and itf.get("sandbox")), None)
        mac = interfaces[index].get("mac") if index is not None else None
        addresses = [
            ip["address"] for ip in raw.get("ips") or [] if index is None or ip.get("interface", index) == index
        ]
        return cls(addresses, mac, raw)


def plugin(plugin_dir: Path, name: str) -> Path:
    path = plugin_dir / name
    if not os.access(path, os.X_OK):
        raise PrerequisiteMissing(
            f"the CNI plugin {name!r} is missing from {plugin_dir}: install it with "
            "`apt-get install containernetworking-plugins` (or set LESSON_CNI_PATH)"
        )
    return path


@retry(
    retry=retry_if_exception_type(CniRace),
    stop=stop_after_delay(10),
    wait=wait_exponential(multiplier=0.05, max=1.0),
    reraise=True,
)
def _call(
    command: str,
    config: dict[str, Any],
    *,
    container_id: str,
    netns: Path,
    ifname: str,
    node_netns: str | None,
    plugin_dir: Path = PLUGIN_DIR,
) -> dict[str, Any]:
    binary = plugin(plugin_dir, str(config["type"]))
    argv = [str(binary)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(plugin_dir),
    }
    stdin = json.dumps(config).encode()
    try:
        if node_netns is not None:
            proc = _netns.run(argv, netns=node_netns, input=stdin, env=env, timeout=CALL_TIMEOUT)
        else:
            proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=CALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"CNI {command} of {ifname} timed out after {CALL_TIMEOUT:.0f}s") from exc
    if proc.returncode == 0:
        out = proc.stdout.strip()
        return json.loads(out) if out else {}
    message, code = _error(proc.stdout, proc.stderr)
    text = f"CNI {command} {config.get('type')} for {ifname} failed: {message}"
    if code == TRY_AGAIN_LATER:
        raise TemporaryError(text, delay=1.0)
    markers = _RACE_MARKERS + (_DEL_RACE_MARKERS if command == "DEL" else ())
    if any(m in message.lower() for m in markers):
        log.warning("cni race, retrying", command=command, ifname=ifname, error=message)
        raise CniRace(text)
    raise CniError(text, code=code)


def _error(stdout: bytes, stderr: bytes) -> tuple[str, int | None]:
    try:
        doc = json.loads(stdout)
        message = str(doc.get("msg", ""))
        if doc.get("details"):
            message += f": {doc['details']}"
        return message or stderr.decode(errors="replace").strip(), doc.get("code")
    except (ValueError, AttributeError):
        return (stderr or stdout).decode(errors="replace").strip() or "no output", None


def add(config: dict[str, Any], **where: Unpack[Where]) -> CniResult:
    """CNI ADD; the container interface's addresses and MAC, read from the plugin's result."""
    return CniResult.parse(_call("ADD", config, **where), where["ifname"])


def delete(config: dict[str, Any], **where: Unpack[Where]) -> None:
    """CNI DEL; the spec makes it succeed when the attachment is already gone."""
    _call("DEL", config, **where)
