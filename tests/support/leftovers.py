"""What a live lesson left behind (in the kernel, on disk, running), and the sweep of a test instance."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from scheduler.core import naming


def marked_processes(mark: str | bytes) -> set[int]:
    """PIDs of the processes whose argv carries ``mark`` (pod processes carry their lesson's mark)."""
    needle = mark.encode() if isinstance(mark, str) else mark
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    found.add(int(proc.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return found


def leftovers(instance: str, livelesson: str, state_dir: Path) -> list[str]:
    """Everything of one live lesson still in the kernel, on disk, or running."""
    from tests.support import netns_tools as netns

    found = [f"netns {n}" for n in netns.names() if n.startswith(naming.namespace(instance, livelesson))]
    mark = f"{naming.mark(instance, livelesson)}/"
    for node in (naming.node_netns(instance, k) for k in range(64)):  # every node a configuration may have
        if netns.exists(node):
            links = netns.link_table(node)
            found += [f"{link.kind} {name}" for name, link in links.items() if link.alias.startswith(mark)]
            found += [f"link {name}" for name in links if name.startswith("veth")]
    if (state_dir / instance / "lessons" / livelesson).exists():
        found.append("state dir")
    found += [f"process {pid}" for pid in sorted(marked_processes(f"{naming.mark(instance, livelesson)}/"))]
    ipam = state_dir / instance / "ipam"
    if ipam.exists():
        found += [f"ipam {p.name}" for p in ipam.iterdir() if p.is_dir()]
    found += container_leftovers(instance, livelesson, state_dir)
    return found


def container_leftovers(instance: str, livelesson: str, state_dir: Path) -> list[str]:
    """A live lesson's containers (runc's records), overlay mounts, cgroups and container layers."""
    from workers.backends.local.runtime.runc import Runc, cgroup_dirs, mounts_under

    folder = state_dir / instance / "lessons" / livelesson
    prefix = naming.namespace(instance, livelesson)
    found = [
        f"container {c.id} ({c.status})"
        for c in Runc(state_dir / instance / "runc").states().values()
        if c.id.startswith(f"{prefix}-") or c.bundle.parent == folder / "containers"
    ]
    found += [f"mount {m}" for m in mounts_under(folder)]
    found += [f"cgroup {d}" for d in cgroup_dirs(naming.cgroup_parent(instance, livelesson)) if d.exists()]
    if (folder / "containers").exists():
        found.append("container layers")
    return found


def cleanup_instance(name: str, state_dir: Path) -> None:
    """Remove whatever instance ``name`` left: its live lessons, pod processes, namespaces and state."""
    from tests.support import netns_tools as netns
    from workers.backends.local import LocalBackend

    backend = LocalBackend(instance=name, state_dir=state_dir)
    for livelesson in backend.list():
        with contextlib.suppress(Exception):  # the sweep below removes what destroy could not
            backend.destroy(livelesson)
    # stop pod processes of this instance (their argv carries the mark), by PID
    for pid in marked_processes(naming.instance_mark(name)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
    for ns in netns.names():
        if ns.startswith(f"{name}-"):
            netns.delete(ns)
    from workers.backends.local.runtime.runc import Runc, remove_cgroup, unmount_all

    runc = Runc(state_dir / name / "runc")
    for container in runc.states():
        with contextlib.suppress(Exception):
            runc.remove(container)
    unmount_all(state_dir / name)
    remove_cgroup(naming.cgroup_instance(name))
    shutil.rmtree(state_dir / name, ignore_errors=True)
