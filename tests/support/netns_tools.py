"""Namespaces and links as tests, benchmarks and the test cluster's node agent see them.

``ip`` (argv only, never a shell) for link changes a test makes on purpose and ``links`` for iproute2's
JSON live here, not in the product, which reads and changes links in-process. The product's own reads
(:mod:`workers.backends.local.net.netns`, :mod:`workers.backends.local.net.rtnetlink`) are re-exported, so a test
imports one module: ``from tests.support import netns_tools as netns``.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler.core.errors import PermanentError
from workers.backends.local.net.netns import NETNS_DIR, add, delete, exists, in_netns, names
from workers.backends.local.net.rtnetlink import NetlinkRace, addresses, bridges, link_table

__all__ = [
    "NETNS_DIR",
    "add",
    "addresses",
    "bridges",
    "delete",
    "exists",
    "in_netns",
    "ip",
    "link_table",
    "links",
    "names",
]

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


def links(netns: str, *extra: str) -> list[dict[str, Any]]:
    """``ip -j -d link show [extra]``, for callers that want iproute2's full JSON."""
    if not exists(netns):
        return []
    out = ip("-j", "-d", "link", "show", *extra, netns=netns)
    return list(json.loads(out or "[]"))
