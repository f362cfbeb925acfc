"""The local backend's pods as real containers (runc, images from the skopeo/umoci store), read back
independently of the code under test: /proc, the cgroup files, runc's own list, the mount table.

Needs root, runc, umoci, skopeo and busybox-static (skips by hand without them; fails under CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scheduler.core import naming
from scheduler.core.errors import PermanentError
from scheduler.core.plan import POD_LIMITS, POD_PIDS_LIMIT, Plan, make_plan
from scheduler.dev.redis_server import free_port
from scheduler.services.catalog import load_paths
from tests.support import lessons
from tests.support import netns_tools as netns
from tests.support.ids import new_id
from tests.support.leftovers import container_leftovers, leftovers
from tests.support.lessons import REPO, triangle
from tests.support.prereqs import needs
from tests.support.waits import wait_until
from workers.backends.local import LocalBackend
from workers.backends.local.image_store import BUSYBOX, ImageStore
from workers.backends.local.runtime.runc import Runc, mounts_under

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("root")]

LESSONCTL = REPO / ".venv" / "bin" / "lessonctl"


@pytest.fixture
def backend(instance: str, tmp_path: Path, image_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(instance=instance, state_dir=tmp_path / "state", pods="container", image_dir=image_dir)
    yield backend
    for livelesson in backend.list():
        backend.destroy(livelesson)
    backend.prune()


def up(backend: LocalBackend, plan: Plan) -> None:
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    observation = backend.observe(plan, wait=20)
    assert observation.ready, observation


def lesson_file(tmp_path: Path, endpoints: list[dict[str, object]], connections: list[dict[str, str]]) -> Path:
    path = tmp_path / "lesson.yaml"
    doc = {"slug": "box", "name": "Box", "endpoints": endpoints, "connections": connections}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_each_pod_is_a_container_with_its_own_namespaces_cgroup_and_hostname(backend: LocalBackend) -> None:
    plan = make_plan(triangle(), new_id(), "s1", instance=backend.instance)
    up(backend, plan)
    listed = subprocess.run(
        ["runc", "--root", str(backend.root / "runc"), "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    running = {c["id"]: c for c in json.loads(listed)}
    for pod in plan.pods:
        container = running[pod.container]
        assert container["status"] == "running"
        pid = int(container["pid"])
        # PID 1 of its own PID namespace runs the lesson's command, from the image's rootfs
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"infinity"]
        assert os.readlink(f"/proc/{pid}/exe").endswith("/bin/busybox")
        for kind in ("pid", "mnt", "uts", "ipc"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
        # the network namespace is the pod's own, the one the CNI plugins attached
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{pod.netns}").st_ino
        result = backend.exec(plan, pod.endpoint, ["sh", "-c", "hostname; ps -o pid,args | sed -n 2p"], timeout=10)
        hostname, first = result.stdout.splitlines()
        assert hostname == pod.endpoint
        assert first.split()[:3] == ["1", "sleep", "infinity"]
        # its cgroup, under the live lesson's, with the pod's limits (cgroup v1 files here; v2: memory.max)
        cgroup = f"{naming.cgroup_parent(backend.instance, plan.livelesson)}/{pod.endpoint}"
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert all(line.endswith(cgroup) for line in lines if ":memory:" in line or ":pids:" in line), lines
        memory = Path("/sys/fs/cgroup/memory") / cgroup.lstrip("/") / "memory.limit_in_bytes"
        if memory.exists():
            assert int(memory.read_text()) == POD_LIMITS.memory_bytes
            assert int((Path("/sys/fs/cgroup/pids") / cgroup.lstrip("/") / "pids.max").read_text()) == POD_PIDS_LIMIT
        else:  # cgroup v2
            assert (
                int((Path("/sys/fs/cgroup") / cgroup.lstrip("/") / "memory.max").read_text()) == POD_LIMITS.memory_bytes
            )
        # an untrusted pod gets the few capabilities of the render, not root's all
        status = Path(f"/proc/{pid}/status").read_text()
        effective = int(next(line for line in status.splitlines() if line.startswith("CapEff")).split()[1], 16)
        assert effective != 0 and effective.bit_count() == 5
    # the rootfs is an overlay whose upper layer is the container's own: a write stays in its pod
    backend.exec(plan, "bb1", ["sh", "-c", "echo mine > /tmp/file"], timeout=10)
    assert backend.exec(plan, "bb1", ["cat", "/tmp/file"], timeout=10).stdout == "mine\n"
    assert backend.exec(plan, "bb2", ["cat", "/tmp/file"], timeout=10).returncode != 0
    backend.destroy(plan.livelesson)
    assert leftovers(backend.instance, plan.livelesson, backend.root.parent) == []


def test_the_image_entrypoint_and_cmd_follow_kubernetes_rules(backend: LocalBackend, tmp_path: Path) -> None:
    """No command: the image's own (busybox: `sh`, which exits at once without a terminal: the pod fails
    fast with its output); args only: the image's entrypoint with those args."""
    path = lesson_file(
        tmp_path,
        [
            {"name": "own", "image": "busybox"},
            {"name": "said", "image": "busybox", "command": ["sh", "-c", "echo boom-$((6*7)) >&2; exit 3"]},
        ],
        [],
    )
    lesson = load_paths([path]).get("box")
    assert lesson is not None
    plan = make_plan(lesson, new_id(), "s1", instance=backend.instance)
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    observation = backend.observe(plan, wait=20)
    assert not observation.ready
    said = observation.pods["said"]
    assert said.fatal and "container said exited" in (said.reason or "") and "boom-42" in (said.reason or "")
    assert observation.pods["own"].fatal, observation  # `sh` with no terminal ends at once, like on Docker
    backend.destroy(plan.livelesson)
    assert container_leftovers(backend.instance, plan.livelesson, backend.root.parent) == []


def test_an_image_that_is_not_in_the_store_fails_fast_naming_it(backend: LocalBackend, tmp_path: Path) -> None:
    path = lesson_file(tmp_path, [{"name": "r1", "image": "example.invalid/nobody/router:1.0"}], [])
    lesson = load_paths([path]).get("box")
    assert lesson is not None
    plan = make_plan(lesson, new_id(), "s1", instance=backend.instance)
    backend.apply_networks(plan)
    with pytest.raises(PermanentError) as raised:
        backend.apply_pods(plan)
    message = str(raised.value)
    assert "image example.invalid/nobody/router:1.0 is not available" in message
    assert "lessonctl images import" in message
    assert not any(n.startswith(naming.namespace(backend.instance, plan.livelesson)) for n in netns.names())


def test_a_killed_container_is_reported_and_replaced_by_the_next_apply(backend: LocalBackend) -> None:
    plan = make_plan(triangle(), new_id(), "s1", instance=backend.instance)
    up(backend, plan)
    runc = ["runc", "--root", str(backend.root / "runc")]
    subprocess.run([*runc, "kill", plan.pod("bb2").container, "KILL"], check=True)
    # `runc kill` returns once the signal is sent, not once the container has stopped: wait for runc to say so
    wait_until("bb2's container to stop", lambda: not backend.observe(plan).pods["bb2"].ready, 30, 0.05)
    observation = backend.observe(plan, wait=10)
    assert observation.pods["bb2"].fatal and "exited" in (observation.pods["bb2"].reason or "")
    backend.apply_pods(plan)  # as a redelivered schedule_pods: the container is made again
    assert backend.observe(plan, wait=10).ready


def test_images_ls_import_and_bad_archives_through_the_cli(tmp_path: Path, image_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    store_dir = tmp_path / "store"
    env.update({"LESSON_IMAGE_DIR": str(store_dir), "LESSON_STATE_DIR": str(tmp_path / "state")})

    def lessonctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(LESSONCTL), *args], env=env, capture_output=True, text=True, timeout=120)

    # archives made by skopeo from the session's busybox: an OCI archive and a docker archive
    oci, docker = tmp_path / "busybox-oci.tar", tmp_path / "busybox-docker.tar"
    source = f"oci:{ImageStore(image_dir).layout}:{BUSYBOX}"
    subprocess.run(["skopeo", "copy", "-q", source, f"oci-archive:{oci}:example.org/labs/box:2.0"], check=True)
    subprocess.run(["skopeo", "copy", "-q", source, f"docker-archive:{docker}:labs/router:1.5"], check=True)

    assert json.loads(lessonctl("images", "ls", "--json").stdout) == []
    imported = lessonctl("images", "import", str(oci))
    assert imported.returncode == 0, imported.stderr
    assert "imported example.org/labs/box:2.0" in imported.stdout
    imported = lessonctl("images", "import", str(docker))
    assert imported.returncode == 0, imported.stderr
    assert "imported docker.io/labs/router:1.5" in imported.stdout
    named = lessonctl("images", "import", str(oci), "--name", "busybox")
    assert named.returncode == 0 and "imported docker.io/library/busybox:latest" in named.stdout, named.stderr
    listed = {i["reference"] for i in json.loads(lessonctl("images", "ls", "--json").stdout)}
    assert listed == {"example.org/labs/box:2.0", "docker.io/labs/router:1.5", BUSYBOX}

    # bad input: exit 2, a message naming it, no traceback, the store unchanged
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("not an archive")
    for args, needle in [
        (("images", "import", str(tmp_path / "missing.tar")), "no such file"),
        (("images", "import", str(not_tar)), "not a readable image archive"),
        (("images", "import", str(oci), "--name", "Bad Name"), "--name"),
    ]:
        proc = lessonctl(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert {i["reference"] for i in json.loads(lessonctl("images", "ls", "--json").stdout)} == listed
    # a lesson runs an imported image under its own name
    store = ImageStore(store_dir)
    assert store.unpacked("labs/router:1.5", pull=False).rootfs.joinpath("bin", "busybox").is_file()


HANGING_RUNC = """#!/bin/sh
# the real runc, except that starting bb2's container hangs first: the worker is SIGKILLed meanwhile
run=0; last=""
for a in "$@"; do [ "$a" = run ] && run=1; last=$a; done
case "$last" in *-bb2) [ $run = 1 ] && sleep 60;; esac
exec {real} "$@"
"""


def test_a_worker_sigkilled_while_containers_start_leaves_nothing_after_destroy_and_converges_on_reapply(
    backend: LocalBackend, tmp_path: Path, image_dir: Path
) -> None:
    """A real process runs apply_pods and is SIGKILLed (with its process group) when bb1's and bb3's
    containers run and bb2's is half made (its overlay mounted, runc started): applying again converges, and
    destroy then leaves no container, mount, cgroup or layer."""
    real = shutil.which("runc")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "runc").write_text(HANGING_RUNC.format(real=real))
    (bin_dir / "runc").chmod(0o755)
    plan = make_plan(triangle(), new_id(), "s1", instance=backend.instance)
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from scheduler.core.plan import make_plan
from scheduler.services.catalog import load_paths
from workers.backends.local import LocalBackend
lesson = load_paths([{str(lessons.TRIANGLE)!r}]).get("busybox-triangle")
plan = make_plan(lesson, {plan.livelesson!r}, "s1", instance={plan.instance!r})
backend = LocalBackend(instance={backend.instance!r}, state_dir=Path({str(backend.root.parent)!r}),
                       pods="container", image_dir=Path({str(image_dir)!r}))
backend.apply_networks(plan)
backend.apply_pods(plan)
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    worker = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, env=env)
    bundle = backend.root / "lessons" / plan.livelesson / "containers" / "bb2"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            states = Runc(backend.root / "runc").states() if (backend.root / "runc").is_dir() else {}
            running = {s.id for s in states.values() if s.status == "running"}
            if {plan.pod("bb1").container, plan.pod("bb3").container} <= running and (bundle / "config.json").exists():
                break
            time.sleep(0.02)
        assert worker.poll() is None, "the apply ended instead of hanging on bb2's container"
        assert bundle / "rootfs" in mounts_under(bundle)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    observation = backend.observe(plan)
    assert not observation.ready and not observation.pods["bb2"].ready
    assert observation.pods["bb1"].ready and observation.pods["bb3"].ready  # they outlive the worker
    backend.apply_pods(plan)  # the redelivered step: the real runc now
    assert backend.observe(plan, wait=20).ready
    backend.destroy(plan.livelesson)
    assert leftovers(backend.instance, plan.livelesson, backend.root.parent) == []


def test_an_image_is_pulled_from_a_reachable_registry(backend: LocalBackend, tmp_path: Path, image_dir: Path) -> None:
    """A registry on loopback (go-containerregistry's `crane registry serve`, built by `make k8s-tools`)
    holds an image the store lacks: apply_pods pulls it with skopeo and the pod runs it. The registry is
    plain HTTP, so LESSON_INSECURE_REGISTRIES names it, as an operator would for a lab registry."""
    from tests.k8s.machinery import cluster

    crane = cluster.bin_dir() / "crane"
    needs(crane.is_file(), f"needs {crane} (make k8s-tools)")
    port = free_port()
    registry = f"127.0.0.1:{port}"
    (tmp_path / "blobs").mkdir()
    server = subprocess.Popen(
        [str(crane), "registry", "serve", "--address", registry, "--disk", str(tmp_path / "blobs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        reference = f"{registry}/labs/pulled:1.0"
        source = f"oci:{ImageStore(image_dir).layout}:{BUSYBOX}"
        deadline = time.monotonic() + 20
        while True:  # until the registry listens
            pushed = subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", source, f"docker://{reference}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if pushed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pushed.returncode == 0, pushed.stderr
        path = lesson_file(tmp_path, [{"name": "p1", "image": reference, "command": ["sleep", "infinity"]}], [])
        lesson = load_paths([path]).get("box")
        assert lesson is not None
        # a store of its own, without the image: the pull is the only way to it
        pulling = LocalBackend(
            instance=backend.instance,
            state_dir=backend.root.parent,
            pods="container",
            image_dir=tmp_path / "fresh",
            insecure_registries=registry,
        )
        plan = make_plan(lesson, new_id(), "s1", instance=backend.instance)
        assert ImageStore(tmp_path / "fresh").digest(reference) is None
        up(pulling, plan)
        assert ImageStore(tmp_path / "fresh").digest(reference) is not None
        assert pulling.exec(plan, "p1", ["hostname"], timeout=10).stdout == "p1\n"
        pulling.destroy(plan.livelesson)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
