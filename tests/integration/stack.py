"""Helpers to run the real thing in tests: the API server process, fault-injecting tool wrappers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from scheduler import naming
from scheduler.records import LiveLesson
from scheduler.redis_server import free_port
from scheduler.settings import Settings
from scheduler.state import Store
from tests.conftest import settings_env


class ApiServer:
    """``lessonctl serve`` as a subprocess on a free loopback port."""

    def __init__(self, settings: Settings, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        lessonctl = Path(sys.executable).with_name("lessonctl")
        self.log_file = log_file
        self._log = log_file.open("ab")
        self.proc = subprocess.Popen(
            [str(lessonctl), "serve", "--port", str(self.port)],
            env={**os.environ, **settings_env(settings), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"API did not start: {log_file.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wrapper_dir(tmp: Path, scripts: dict[str, str]) -> Path:
    """A folder of executable shell wrappers (test fault injection; never used outside tests)."""
    tmp.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = tmp / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    return tmp


def cni_dir_with(tmp: Path, bridge_script: str) -> Path:
    """A CNI plugin folder: the real host-local, and a `bridge` wrapper around the real one."""
    folder = wrapper_dir(tmp, {"bridge": bridge_script})
    (folder / "host-local").symlink_to("/usr/lib/cni/host-local")
    return folder


def leftovers(instance: str, livelesson: str, state_dir: Path) -> list[str]:
    """Everything of one live lesson still in the kernel, on disk, or running."""
    from workers.backends import netns

    found = [f"netns {n}" for n in netns.names() if n.startswith(naming.namespace(instance, livelesson))]
    node = naming.node_netns(instance)
    if netns.exists(node):
        mark = f"{naming.mark(instance, livelesson)}/"
        found += [f"bridge {b}" for b, alias in netns.bridges(node).items() if alias.startswith(mark)]
        found += [f"link {link['ifname']}" for link in netns.links(node) if link.get("ifname", "").startswith("veth")]
    if (state_dir / instance / "lessons" / livelesson).exists():
        found.append("state dir")
    mark_bytes = f"{naming.mark(instance, livelesson)}/".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark_bytes in (proc / "cmdline").read_bytes():
                    found.append(f"process {proc.name}")
            except (FileNotFoundError, ProcessLookupError):
                pass
    ipam = state_dir / instance / "ipam"
    if ipam.exists():
        found += [f"ipam {p.name}" for p in ipam.iterdir() if p.is_dir()]
    return found


def wait_for(store: Store, livelesson: str, statuses: set[str], timeout: float = 60) -> LiveLesson:
    """Until the record's status is one of ``statuses``; an AssertionError with the record after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(livelesson)
        if record is not None and record.status in statuses:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"{livelesson} not in {statuses} after {timeout}s: {record}")
        time.sleep(0.05)
