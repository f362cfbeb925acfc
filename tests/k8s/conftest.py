"""Fixtures for tests that need the real test cluster (tests/k8s/machinery/cluster.py).

``k8s_kubeconfig`` (session) starts the cluster if it is not up and stops it again at the end of the
session if it started it (set LESSON_K8S_KEEP=1 to leave it running). Without the binaries from
`make k8s-tools`, root, or the CNI plugins, tests that use it skip with the reason, except under CI=true,
where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s import (
    INSTANCES_CONFIGMAP,
    RBAC,
    WORKER_SA,
    Kubectl,
    cluster,
    cluster_prerequisites,
    namespaces_of,
    probe_namespace,
)
from tests.support.waits import wait_until

HERE = Path(__file__).resolve().parent


def run_cluster(*command: str) -> None:
    """`cluster.py COMMAND...`; a failure fails the test with its output. `down` and `nodes-down` check the
    host after themselves: a container, mount, cgroup, bridge or IPAM file left is a failure."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "machinery" / "cluster.py"), *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"`cluster.py {' '.join(command)}` failed:\n{proc.stdout}{proc.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def k8s_kubeconfig() -> Iterator[Path]:
    """Path to the test cluster's kubeconfig; the cluster is up for the whole session."""
    cluster_prerequisites()
    started = not cluster.is_up()
    if started:
        run_cluster("up")
    yield cluster.STATE / "kubeconfig"
    if started and os.environ.get("LESSON_K8S_KEEP") != "1":
        settle_namespaces(cluster.STATE / "kubeconfig")
        run_cluster("down")


def settle_namespaces(kubeconfig: Path, timeout: float = 180) -> None:
    """Wait until no namespace is terminating: ``k8s_cleanup`` does not wait, and a pod the kubelet has not
    torn down yet (its CNI DEL undone) would be left on the host when the cluster stops."""

    def terminating() -> list[str]:
        argv = [str(cluster.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "get", "namespaces", "-o", "json"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        items = json.loads(proc.stdout)["items"]
        return [n["metadata"]["name"] for n in items if n.get("status", {}).get("phase") == "Terminating"]

    wait_until("no namespace terminating", lambda: not terminating(), timeout, 1.0)


@pytest.fixture(scope="session")
def k8s_kubectl(k8s_kubeconfig: Path) -> Kubectl:
    """kubectl(*args, check=True, stdin=None, namespace=None) with the test cluster's kubeconfig."""
    binary = str(cluster.bin_dir() / "kubectl")

    def run(
        *args: str, check: bool = True, stdin: str | None = None, namespace: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [binary, f"--kubeconfig={k8s_kubeconfig}", *(["-n", namespace] if namespace else []), *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"`kubectl {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def k8s_namespace(k8s_kubectl: Kubectl) -> Iterator[str]:
    """A fresh, uniquely named namespace (with its default ServiceAccount), deleted afterwards."""
    name = f"lstest-{uuid.uuid4().hex[:10]}"
    k8s_kubectl("create", "namespace", name)
    wait_until(
        f"the default ServiceAccount in {name}",
        lambda: k8s_kubectl("get", "serviceaccount", "default", namespace=name, check=False).returncode == 0,
    )
    yield name
    k8s_kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


@pytest.fixture(scope="session")
def k8s_cluster(k8s_kubeconfig: Path) -> Any:
    """tests/k8s/machinery/cluster.py as a module (STATE, COMPONENTS, recorded(), NETNS_PREFIX, ...)."""
    return cluster


# --- the kubernetes backend's tests (issue 6): the worker's ServiceAccount, the fault proxy, cleanup ------


@pytest.fixture(scope="session")
def k8s_worker_token(k8s_kubectl: Kubectl) -> str:
    """A token of the worker's ServiceAccount (TokenRequest API), after applying config/k8s/rbac.yaml as a
    deployment would: the backend's tests run as that account, never as cluster-admin. Returned once the
    admission policy is in force (the API server loads a new policy asynchronously)."""
    k8s_kubectl("apply", "-f", str(RBAC))
    namespace, account = WORKER_SA
    token = k8s_kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    wait_until("the worker's admission policy in force", lambda: probe_namespace(token, None) == 403, timeout=30)
    return token


@pytest.fixture
def k8s_allow(k8s_kubectl: Kubectl, k8s_worker_token: str) -> Iterator[Callable[..., None]]:
    """``allow(*instances)``: as an administrator would, add instances to the policy's ConfigMap, and wait
    until the worker may create their namespaces. They are taken out again after the test."""
    added: list[str] = []

    def allow(*instances: str) -> None:
        patch = {"data": dict.fromkeys(instances, "")}
        k8s_kubectl("patch", "configmap", INSTANCES_CONFIGMAP, "--type=merge", "-p", json.dumps(patch),
                    namespace=WORKER_SA[0])  # fmt: skip
        added.extend(instances)
        wait_until(
            f"instances {', '.join(instances)} allowed",
            lambda: all(probe_namespace(k8s_worker_token, i) == 201 for i in instances),
            timeout=30,
        )

    yield allow
    if added:
        patch = {"data": dict.fromkeys(added)}  # null removes the key
        k8s_kubectl("patch", "configmap", INSTANCES_CONFIGMAP, "--type=merge", "-p", json.dumps(patch),
                    namespace=WORKER_SA[0], check=False)  # fmt: skip


@pytest.fixture
def k8s_proxy(k8s_kubeconfig: Path) -> Iterator[Any]:
    """A fault-injecting, request-counting proxy in front of the API server (tests/k8s/machinery/api_proxy.py)."""
    from tests.k8s.machinery.api_proxy import ApiProxy

    with ApiProxy.for_cluster(cluster.STATE) as proxy:
        yield proxy
        if proxy.errors:  # shown with a failing test's output
            print("api proxy errors:", *proxy.errors, sep="\n  ")


@pytest.fixture
def worker_kubeconfig(
    k8s_proxy: Any, k8s_worker_token: str, tmp_path: Path, k8s_allow: Callable[..., None], instance: str
) -> Path:
    """A kubeconfig for the worker's ServiceAccount that goes through ``k8s_proxy``; the test's instance is
    one the worker serves."""
    k8s_allow(instance)
    return k8s_proxy.kubeconfig(tmp_path / "worker-kubeconfig", token=k8s_worker_token, ca=cluster.STATE / "pki/ca.crt")


@pytest.fixture
def direct_worker_kubeconfig(
    k8s_kubeconfig: Path, k8s_worker_token: str, tmp_path: Path, k8s_allow: Callable[..., None], instance: str
) -> Path:
    """The same ServiceAccount, straight to the API server."""
    from tests.k8s.machinery.api_proxy import write_token_kubeconfig

    k8s_allow(instance)
    port = json.loads((cluster.STATE / "ports.json").read_text())["apiserver"]
    return write_token_kubeconfig(
        tmp_path / "worker-kubeconfig-direct",
        f"https://127.0.0.1:{port}",
        token=k8s_worker_token,
        ca=cluster.STATE / "pki/ca.crt",
    )


@pytest.fixture
def k8s_cleanup(k8s_kubectl: Kubectl, instance: str) -> Iterator[list[str]]:
    """After the test, as admin: delete every namespace of this test's instance (and of the instances or
    namespaces the test appends to the yielded list), pass or fail. It does not wait for them to go (a
    namespace whose pods ignore SIGTERM takes their grace period and the namespace controller's passes,
    ~16 s): no later test shares their names, and the cluster's `down` stops whatever still runs."""
    extra: list[str] = []
    yield extra
    names: set[str] = set()
    for inst in [instance, *(e for e in extra if not e.startswith("ns:"))]:
        names |= {n["metadata"]["name"] for n in namespaces_of(k8s_kubectl, inst)}
    names |= {e[3:] for e in extra if e.startswith("ns:")}
    if names:
        k8s_kubectl("delete", "namespace", *sorted(names), "--ignore-not-found", "--wait=false", check=False)
