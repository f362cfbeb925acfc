"""The test cluster (tests/k8s/machinery/cluster.py) as a module, its prerequisites, the worker's ServiceAccount and
the admission probe, and the kubernetes backend on it."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.core.plan import Plan, make_plan
from scheduler.services.catalog import load_catalog
from tests.support.ids import new_id
from tests.support.lessons import CATALOG, REPO
from tests.support.prereqs import needs
from workers.backends.kubernetes.backend import KubernetesBackend
from workers.connectivity import run_check

K8S_TESTS = REPO / "tests" / "k8s"
# The seed's busybox example (its YAML indentation mended), and what it declares: each NAD's subnet, and
# each pod's networks in annotation order (net1 the first listed, net2 the second).
SEED_MANIFEST = K8S_TESTS / "machinery" / "manifests" / "busybox.yaml"
SEED_SUBNETS = {
    "12-net": ipaddress.ip_network("10.10.12.0/24"),
    "23-net": ipaddress.ip_network("10.10.23.0/24"),
    "31-net": ipaddress.ip_network("10.10.31.0/24"),
}
SEED_EXPECTED = {"bb1": ("31-net", "12-net"), "bb2": ("12-net", "23-net"), "bb3": ("23-net", "31-net")}
RBAC = REPO / "config" / "k8s" / "rbac.yaml"
WORKER_SA = ("lesson-scheduler", "lesson-scheduler-worker")
# the admission policy's parameter: one data key per instance the worker serves (config/k8s/rbac.yaml)
INSTANCES_CONFIGMAP = "lesson-scheduler-instances"
PROBE_ID = "probe00000"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def _load_cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location("lesson_test_k8s_cluster", K8S_TESTS / "machinery" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster = _load_cluster_module()
# The node where lesson pods run as real containers; the kwok nodes are tainted (cluster.KWOK_TAINT).
REAL_NODE = cluster.real_node.NODE_NAME
KWOK_TOLERATION = {**cluster.KWOK_TAINT, "operator": "Equal"}
# a container that just runs: busybox's own default command (sh) would exit at once on the real node
SLEEPER = {"name": "c", "image": "busybox", "command": ["sleep", "infinity"]}


def on_kwok(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` placed on the kwok nodes (emulated: nothing runs), for tests of the node agent and of
    scheduling across many nodes."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("tolerations", []).append(KWOK_TOLERATION)
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), "type": "kwok"}
    return pod


def cluster_prerequisites() -> None:
    """Skip (fail under CI=true) without the cluster's binaries, root, the tools or the CNI plugins."""

    def unavailable(reason: str) -> None:
        needs(False, reason, failure="the test cluster is required under CI=true", pytrace=False)

    missing = cluster.missing_binaries()
    if missing:
        unavailable(f"test cluster binaries missing ({', '.join(missing)}): run `make k8s-tools`")
    if os.geteuid() != 0:
        unavailable("the test cluster's node agent needs root (network namespaces)")
    for tool in ("ip", "nsenter", "setpriv", "openssl"):
        if shutil.which(tool) is None:
            unavailable(f"`{tool}` is not on PATH")
    if not os.access("/usr/lib/cni/bridge", os.X_OK):
        unavailable("the CNI plugins are missing: apt-get install containernetworking-plugins")
    node_missing = cluster.real_node.missing_prerequisites()
    if node_missing:
        unavailable("the test cluster's real node needs " + ", ".join(node_missing))


def token_api(token: str) -> Any:
    """An ApiClient of ``token``, straight to the test cluster's API server."""
    from kubernetes import client

    configuration = client.Configuration()
    port = json.loads((cluster.STATE / "ports.json").read_text())["apiserver"]
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.ssl_ca_cert = str(cluster.STATE / "pki/ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.retries = False
    return client.ApiClient(configuration)


def probe_namespace(token: str, instance: str | None) -> int:
    """The status of a server-side dry-run create of a lesson namespace of ``instance`` (None: with no
    labels) as ``token``: 201 once the admission policy allows it, 403 while it refuses it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    labels = {} if instance is None else {
        "app.kubernetes.io/managed-by": "lesson-scheduler",
        "lessons.io/instance": instance,
        "lessons.io/livelesson": PROBE_ID,
    }  # fmt: skip
    body = {"metadata": {"name": f"{instance or 'probe'}-{PROBE_ID}", "labels": labels}}
    with token_api(token) as api:
        try:
            core: Any = client.CoreV1Api(api)  # Any: the stubs want V1Namespace where a dict is fine
            core.create_namespace(body, dry_run="All")
        except ApiException as exc:
            return int(exc.status)
    return 201


def namespaces_of(kubectl: Kubectl, instance: str) -> list[dict[str, Any]]:
    out = kubectl("get", "namespaces", "-l", f"lessons.io/instance={instance}", "-o", "json").stdout
    return list(json.loads(out)["items"])


# --- the kubernetes backend on the test cluster ---------------------------------------------------------------

KUBE_CATALOG = load_catalog(CATALOG)


def catalog_plan(
    slug: str, instance: str, livelesson: str | None = None, deployment: str = "", catalog: Any = None
) -> Plan:
    lesson = (catalog or KUBE_CATALOG).get(slug)
    assert lesson is not None
    return make_plan(lesson, livelesson or new_id(), "tester", instance=instance, deployment=deployment)


def backend(kubeconfig: Path, instance: str, deployment: str = "") -> KubernetesBackend:
    return KubernetesBackend.from_kubeconfig(kubeconfig, instance=instance, deployment=deployment)


def namespace_json(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", "namespace", name, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return dict(json.loads(proc.stdout))


def ring_checks(kb: KubernetesBackend, plan: Plan) -> list[tuple[str, str, bool]]:
    observation = kb.observe(plan, wait=0)
    out = []
    for check in plan.checks:
        address = observation.address(check.target, check.interface)
        assert address is not None, (check, observation)
        result = run_check(kb, plan, check, address, deadline=time.monotonic() + 10)
        out.append((check.source, check.target, result.ok))
    return out
