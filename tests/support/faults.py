"""Fault injection by wrappers around real tools (CNI plugins, iproute2); never used outside tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

REAL_CNI = Path("/usr/lib/cni")


def wrapper_dir(tmp: Path, scripts: dict[str, str]) -> Path:
    """A folder of executable bash wrappers, one per ``name: body``; ``@DIR@`` in a body is the folder."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = tmp / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body).replace("@DIR@", str(tmp)))
        path.chmod(0o755)
    return tmp


def cni_dir_with(tmp: Path, bridge_script: str) -> Path:
    """A CNI plugin folder: the real host-local and static, and a `bridge` wrapper around the real one."""
    folder = wrapper_dir(tmp, {"bridge": bridge_script})
    for ipam in ("host-local", "static"):  # links' addresses, eth0's
        (folder / ipam).symlink_to(REAL_CNI / ipam)
    return folder
