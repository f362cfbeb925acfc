"""The whole system on the kubernetes backend: real Redis, real Celery worker and beat processes, the real
test cluster, the worker's ServiceAccount (never cluster-admin), and the fault proxy where faults are due."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.core.plan import make_plan
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.k8s.machinery.api_proxy import ApiProxy
from tests.support.k8s import REAL_NODE, SLEEPER, Kubectl, cluster, namespaces_of
from tests.support.lessons import CURRICULUM, TRIANGLE
from tests.support.waits import wait_for, wait_until
from workers.backends.kubernetes.backend import KubernetesBackend

pytestmark = [pytest.mark.root, pytest.mark.slow]


def log_events(worker: CeleryProcess, event: str) -> list[dict[str, Any]]:
    """The worker's structured log lines (JSON) whose event is ``event``."""
    out = []
    for line in worker.log_file.read_text(errors="replace").splitlines():
        start = line.find("{")
        if start < 0 or event not in line:
            continue
        try:
            doc = json.loads(line[start:])
        except ValueError:
            continue
        if doc.get("event") == event:
            out.append(doc)
    return out


def namespace_gone(kubectl: Kubectl, name: str) -> bool:
    proc = kubectl("get", "namespace", name, check=False)
    assert proc.returncode == 0 or "NotFound" in proc.stderr, proc.stderr
    return proc.returncode != 0


def k8s_settings(settings_for: Callable[..., Settings], kubeconfig: Path, **overrides: object) -> Settings:
    return settings_for(backend="kubernetes", kubeconfig=kubeconfig, **overrides)


# --- the demo command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin-kubeconfig", "worker-service-account"])
def test_demo_command_on_kubernetes(
    who: str, request: pytest.FixtureRequest, k8s_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str,
    k8s_cleanup: list[str],
) -> None:  # fmt: skip
    """`LESSON_BACKEND=kubernetes LESSON_KUBECONFIG=... lessonctl demo busybox-triangle.yaml --json`, as the
    README shows it (the cluster's admin kubeconfig) and as a deployment runs it (the worker's account)."""
    kubeconfig = k8s_kubeconfig if who == "admin-kubeconfig" else request.getfixturevalue("direct_worker_kubeconfig")
    lessonctl = Path(sys.executable).with_name("lessonctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    env.update({"LESSON_BACKEND": "kubernetes", "LESSON_KUBECONFIG": str(kubeconfig), "LESSON_INSTANCE": instance})
    proc = subprocess.run(
        [str(lessonctl), "demo", str(TRIANGLE), "--json"], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = json.loads(proc.stdout)
    assert record["backend"] == "kubernetes" and record["instance"] == instance
    assert record["ready_at"], record
    checks = record["checks"]
    assert len(checks) == 12 and all(c["ok"] and c["received"] == c["sent"] > 0 for c in checks), checks
    assert sum(c["by_name"] for c in checks) == 6  # each linked pair both ways, by its Service's name
    assert {(c["source"], c["target"]) for c in checks} == {
        ("bb1", "bb2"), ("bb2", "bb1"), ("bb2", "bb3"), ("bb3", "bb2"), ("bb3", "bb1"), ("bb1", "bb3"),
    }  # fmt: skip
    # one node for the three pods: the record names it (several would be comma-separated)
    assert record["node"] == REAL_NODE, record["node"]  # real containers, on the kubelet's node
    # eth0 on the cluster's main network first (the real node's pod range), then the links' subnets
    assert {ep["interfaces"][0]["name"] for ep in record["endpoints"].values()} == {"eth0"}
    assert {ep["interfaces"][1]["address"].rsplit(".", 1)[0] for ep in record["endpoints"].values()} <= {
        "10.10.12", "10.10.23", "10.10.31",
    }  # fmt: skip
    assert record["status"] == "deleted"
    assert "nothing left behind" in proc.stderr
    assert namespace_gone(k8s_kubectl, record["namespace"]), "the namespace outlived the demo"
    assert namespaces_of(k8s_kubectl, instance) == []


# --- the curriculum ----------------------------------------------------------------------------------------


def test_every_curriculum_lesson_with_connections_becomes_ready_and_is_torn_down(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], worker_kubeconfig: Path,
    k8s_proxy: ApiProxy, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str],
) -> None:  # fmt: skip
    catalog = load_catalog(CURRICULUM)
    lessons = [lesson for lesson in catalog.lessons.values() if lesson.connections]
    assert len(lessons) == 6, sorted(lesson.slug for lesson in lessons)
    # the curriculum's images cannot be had here: the local busybox, asked for explicitly
    settings = k8s_settings(
        settings_for, worker_kubeconfig, catalog=CURRICULUM, provision_timeout_seconds=180, image_substitute="busybox"
    )
    start_worker(settings, concurrency=4)
    store = Store.from_settings(settings)
    client = Client(settings)
    ids = {lesson.slug: client.request_lesson(lesson.slug, f"student{i}").id for i, lesson in enumerate(lessons)}

    for lesson in lessons:
        record = wait_for(store, ids[lesson.slug], {"ready", "failed"}, timeout=150)
        assert record.status == "ready", (lesson.slug, record.error)
        assert len([c for c in record.checks if not c.by_name]) == 2 * len(lesson.connections)
        pairs = {(c.a, c.b) for c in lesson.connections} | {(c.b, c.a) for c in lesson.connections}
        assert {(c.source, c.target) for c in record.checks if c.by_name} == pairs  # by name, cluster DNS
        assert all(c.ok for c in record.checks), (lesson.slug, record.checks)
        assert record.node and "," not in record.node, (lesson.slug, record.node)
        pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=record.namespace).stdout)["items"]
        assert sorted(p["metadata"]["name"] for p in pods) == sorted(e.name for e in lesson.endpoints)
        assert {p["spec"]["nodeName"] for p in pods} == {record.node}
        flavors = {e.name: e.flavor for e in lesson.endpoints}
        for pod in pods:  # privileged exactly for the trusted images (virtual routers)
            privileged = pod["spec"]["containers"][0]["securityContext"].get("privileged")
            assert privileged is (flavors[pod["metadata"]["name"]] == "trusted"), pod["metadata"]["name"]
        nads = json.loads(
            k8s_kubectl("get", "network-attachment-definitions", "-o", "json", namespace=record.namespace).stdout
        )["items"]
        assert len(nads) == len(lesson.connections)
        if lesson.ready_delay:
            assert record.ready_at is not None
            verified = record.steps["verify_connectivity"].finished_at
            assert verified is not None and (record.ready_at - verified).total_seconds() >= lesson.ready_delay - 0.5

    for livelesson in ids.values():
        client.delete(livelesson)
    for slug, livelesson in ids.items():
        final = wait_for(store, livelesson, {"deleted", "failed"}, timeout=120)
        assert final.status == "deleted", (slug, final.error)
        assert namespace_gone(k8s_kubectl, final.namespace), slug
    assert namespaces_of(k8s_kubectl, instance) == []
    assert not [r for r in k8s_proxy.requests if r.status == 403], "the worker's account was refused something"


# --- faults ------------------------------------------------------------------------------------------------


def test_api_faults_are_retried_and_the_lesson_still_becomes_ready(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], worker_kubeconfig: Path,
    k8s_proxy: ApiProxy, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str],
) -> None:  # fmt: skip
    faults = [
        k8s_proxy.add("500", verb="create", resource="namespaces", times=2),
        k8s_proxy.add("429", verb="create", resource="network-attachment-definitions", retry_after=2),
        k8s_proxy.add("502", verb="create", resource="networkpolicies"),
        k8s_proxy.add("reset", verb="create", resource="pods"),
        k8s_proxy.add("reset-after", verb="create", resource="pods", skip=1),
        k8s_proxy.add("503", verb="list", resource="pods"),
        k8s_proxy.add("reset", verb="exec", resource="pods/exec"),
        k8s_proxy.add("504", verb="get", resource="namespaces"),
        k8s_proxy.add("500", verb="delete", resource="namespaces"),
    ]
    settings = k8s_settings(settings_for, worker_kubeconfig)
    worker = start_worker(settings)
    store = Store.from_settings(settings)
    livelesson = Client(settings).request_lesson("busybox-triangle", "flaky").id
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=90)
    assert record.status == "ready", record.error
    assert len(record.checks) == 12 and all(c.ok for c in record.checks)  # 6 by name
    Client(settings).delete(livelesson)
    final = wait_for(store, livelesson, {"deleted", "failed"}, timeout=90)
    assert final.status == "deleted", final.error
    assert namespace_gone(k8s_kubectl, record.namespace)
    assert [f.hits for f in faults] == [f.times for f in faults], [(f.kind, f.verb, f.resource, f.hits) for f in faults]

    retries = log_events(worker, "kubernetes API transient error, retrying")
    statuses = [r["status"] for r in retries]
    for code in ("500", "429", "502", "503", "504"):
        assert code in statuses, (code, statuses)
    assert any(not s.isdigit() for s in statuses), f"no connection reset among {statuses}"
    assert any(r["status"] == "429" and r["sleep_s"] == 2 for r in retries), "Retry-After was not honoured"
    assert log_events(worker, "exec failed to start"), "the exec reset left no trace"
    # the lost pod create was answered 409 on retry and checked by its labels: still three pods, no failure
    assert [r.status for r in k8s_proxy.requests if r.key == "create pods"].count(201) == 2


SLOW_STEP = {
    # stretch one step with a delayed request, so that the worker can be killed in the middle of it
    "creating_networks": {"verb": "create", "resource": "network-attachment-definitions", "delay": 1.5, "times": 3},
    "scheduling_pods": {"verb": "create", "resource": "pods", "delay": 1.5, "times": 3},
    "booting": {"verb": "list", "resource": "pods", "delay": 3.0, "times": 1},
    "verifying": {"verb": "exec", "resource": "pods/exec", "delay": 2.0, "times": 6},
}


@pytest.mark.parametrize("status", list(SLOW_STEP))
def test_worker_sigkilled_mid_step_still_ends_ready(
    status: str, settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess],
    worker_kubeconfig: Path, k8s_proxy: ApiProxy, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str],
) -> None:  # fmt: skip
    slow = k8s_proxy.add("delay", **SLOW_STEP[status])  # type: ignore[arg-type]
    settings = k8s_settings(
        settings_for, worker_kubeconfig, lease_seconds=3, gc_interval_seconds=1, visibility_timeout_seconds=60
    )
    worker = start_worker(settings)
    start_worker(settings, kind="beat")
    store = Store.from_settings(settings)
    livelesson = Client(settings).request_lesson("busybox-triangle", f"kill-{status}").id
    record = wait_for(store, livelesson, {status, "ready", "failed"}, timeout=60)
    assert record.status == status, f"the step passed before it could be killed: {record.status}"
    wait_until("the slow request in flight", lambda: slow.hits >= 1, timeout=10, interval=0.02)
    assert worker.pid is not None
    os.killpg(worker.pid, signal.SIGKILL)  # the whole worker, main process and pool, mid-request
    assert worker.proc is not None
    worker.proc.wait()
    start_worker(settings)
    final = wait_for(store, livelesson, {"ready", "failed"}, timeout=120)
    assert final.status == "ready", final.error
    assert len(final.checks) == 12 and all(c.ok for c in final.checks)  # 6 by name
    assert final.node and "," not in final.node
    pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=final.namespace).stdout)["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["bb1", "bb2", "bb3"]
    Client(settings).delete(livelesson)
    assert wait_for(store, livelesson, {"deleted", "failed"}, timeout=90).status == "deleted"
    assert namespace_gone(k8s_kubectl, final.namespace)


def test_unschedulable_lesson_fails_fast_with_the_reason_and_releases_everything(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], worker_kubeconfig: Path,
    k8s_kubectl: Kubectl, k8s_namespace: str, instance: str, k8s_cleanup: list[str],
) -> None:  # fmt: skip
    """Every node runs a pod that refuses this instance's pods next to it: the real scheduler says
    Unschedulable, and the lesson fails at once (not at the 300 s deadline) with that reason in the record,
    and its namespace is removed at once."""
    nodes = [n["metadata"]["name"] for n in json.loads(k8s_kubectl("get", "nodes", "-o", "json").stdout)["items"]]
    blockers = [{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"blocker-{node}", "namespace": k8s_namespace},
        "spec": {
            "nodeName": node,
            "containers": [SLEEPER],
            "terminationGracePeriodSeconds": 0,  # sleep ignores SIGTERM: no 30 s wait at cleanup
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"lessons.io/instance": instance}},
                "namespaceSelector": {},
                "topologyKey": "kubernetes.io/hostname",
            }]}},
        },
    } for node in nodes]  # fmt: skip
    k8s_kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": blockers}))
    wait_until(
        "the blockers running",
        lambda: all(
            p["status"].get("phase") == "Running"
            for p in json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=k8s_namespace).stdout)["items"]
        ),
    )
    settings = k8s_settings(settings_for, worker_kubeconfig)
    start_worker(settings)
    store = Store.from_settings(settings)
    livelesson = Client(settings).request_lesson("busybox-line", "nowhere").id
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=60)
    assert record.status == "failed", record
    # failed at once with the scheduler's reason, not at the provisioning deadline
    assert record.error is not None and record.error.step == "wait_ready"
    assert "deadline" not in record.error.message, record.error
    assert "unschedulable" in record.error.message and "anti-affinity" in record.error.message, record.error
    wait_until("the failed lesson's namespace gone", lambda: namespace_gone(k8s_kubectl, record.namespace), 60)


def test_a_crashing_container_fails_the_lesson_fast_with_the_kubelets_reason(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], worker_kubeconfig: Path,
    k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str], tmp_path: Path,
) -> None:  # fmt: skip
    """On the real node, one endpoint's command exits: the record fails in seconds with the kubelet's
    account (the exit code), not at the provisioning deadline, and the namespace goes."""
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "crash.yaml").write_text(
        "slug: crash\nname: Crash\ncategory: fundamentals\ntier: prod\ndescription: one host dies\n"
        "shortDescription: Crash\nendpoints:\n- name: h1\n  image: busybox\n  command: [sleep, infinity]\n"
        "- name: h2\n  image: busybox\n  command: [sh, -c, 'exit 7']\nconnections:\n- a: h1\n  b: h2\n"
    )
    settings = k8s_settings(settings_for, worker_kubeconfig, catalog=catalog)
    start_worker(settings)
    store = Store.from_settings(settings)
    livelesson = Client(settings).request_lesson("crash", "crasher").id
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=90)
    assert record.status == "failed", record
    # wait_ready may see h2 Ready for the moment before it exits; then verify_connectivity fails it
    assert record.error is not None and record.error.step in ("wait_ready", "verify_connectivity"), record.error
    assert "deadline" not in record.error.message, record.error
    assert "h2" in record.error.message and "exit code 7" in record.error.message, record.error
    wait_until("the failed lesson's namespace gone", lambda: namespace_gone(k8s_kubectl, record.namespace), 60)


# --- garbage collection -------------------------------------------------------------------------------------


def test_gc_removes_an_orphan_and_never_touches_another_instance(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess],
    direct_worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str],
    k8s_allow: Callable[..., None],
) -> None:  # fmt: skip
    catalog = load_catalog(TRIANGLE.parent)
    triangle = catalog.get("busybox-triangle")
    assert triangle is not None
    other_instance = f"{instance}-other"  # its namespaces even start with this instance's prefix
    k8s_cleanup.append(other_instance)
    k8s_allow(other_instance)  # the same worker account serves both instances
    settings = k8s_settings(settings_for, direct_worker_kubeconfig, gc_interval_seconds=1)
    deployment = Store.from_settings(settings).deployment()  # the workers' below: GC collects only its own
    mine = KubernetesBackend.from_kubeconfig(direct_worker_kubeconfig, instance=instance, deployment=deployment)
    theirs = KubernetesBackend.from_kubeconfig(direct_worker_kubeconfig, instance=other_instance)
    # a crash after the objects were made and before (or after) the record was lost: no record
    orphan = make_plan(triangle, "orphan0001", "gone", instance=instance, deployment=deployment)
    foreign = make_plan(triangle, "foreign001", "alive", instance=other_instance)
    for backend, plan in ((mine, orphan), (theirs, foreign)):
        backend.apply_networks(plan)
        backend.apply_pods(plan)
        assert backend.observe(plan, wait=30).ready
    handmade = f"{instance}-handmade01"  # our name prefix, none of our labels
    k8s_cleanup.append(f"ns:{handmade}")
    k8s_kubectl("create", "namespace", handmade)

    worker = start_worker(settings)
    start_worker(settings, kind="beat")
    wait_until("GC to remove the orphan", lambda: namespace_gone(k8s_kubectl, orphan.namespace), timeout=90)
    destroyed = log_events(worker, "orphan destroyed")
    assert [e["livelesson"] for e in destroyed] == [orphan.livelesson], destroyed
    passes = len(log_events(worker, "gc pass"))
    wait_until("two more GC passes", lambda: len(log_events(worker, "gc pass")) >= passes + 2, timeout=30)

    ns = json.loads(k8s_kubectl("get", "namespace", foreign.namespace, "-o", "json").stdout)
    assert ns["status"]["phase"] == "Active" and "deletionTimestamp" not in ns["metadata"]
    pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=foreign.namespace).stdout)["items"]
    assert len(pods) == 3 and not any("deletionTimestamp" in p["metadata"] for p in pods)
    assert theirs.observe(foreign, wait=0).ready
    handmade_ns = json.loads(k8s_kubectl("get", "namespace", handmade, "-o", "json").stdout)
    assert "deletionTimestamp" not in handmade_ns["metadata"]
    assert [e["livelesson"] for e in log_events(worker, "orphan destroyed")] == [orphan.livelesson]
    theirs.destroy(foreign.livelesson)
    assert cluster.is_up()
