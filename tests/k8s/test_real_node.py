"""The test cluster's real node (kubelet, containerd, runc, Multus; tests/k8s/machinery/real_node.py): the
seed's own example as written, and the kubernetes backend's lessons, as real containers.

Nothing here is emulated: the images are pulled from the loopback registry, the containers run
``sleep``, Multus wires ``net1``/``net2`` from the NetworkAttachmentDefinitions with the real bridge and
host-local plugins, and every ping runs inside a container through ``kubectl exec`` (pods/exec).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scheduler.core.render import NETWORK_STATUS_ANNOTATION
from tests.support.k8s import (
    REAL_NODE,
    SEED_EXPECTED,
    SEED_MANIFEST,
    SEED_SUBNETS,
    Kubectl,
    backend,
    catalog_plan,
    cluster,
    namespaces_of,
    ring_checks,
)
from tests.support.waits import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Each link of the triangle and its two ends.
LINKS = {"12-net": ("bb1", "bb2"), "23-net": ("bb2", "bb3"), "31-net": ("bb3", "bb1")}
SEED_BRIDGES = ("12-bridge", "23-bridge", "31-bridge")


def _running(kubectl: Kubectl, ns: str, count: int) -> list[dict[str, Any]] | None:
    pods = json.loads(kubectl("get", "pods", "-o", "json", namespace=ns).stdout)["items"]
    ready = [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    return pods if len(ready) == count else None


def ip_addr_show(kubectl: Kubectl, ns: str, pod: str) -> dict[str, list[str]]:
    """`ip addr show` inside the container (busybox's ip), read as interface -> IPv4 addresses."""
    out = kubectl("exec", pod, "--", "ip", "addr", "show", namespace=ns).stdout
    shown: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        head = re.match(r"^\d+: ([^:@]+)", line)
        if head:
            current = head.group(1)
            shown[current] = []
        inet = re.match(r"^\s+inet (\S+)", line)
        if inet and current:
            shown[current].append(inet.group(1))
    return shown


def _remove_seed_bridges() -> None:
    """The seed names its bridges itself (12-bridge, ...); on a real node they live in the host's root
    namespace and outlive the pods, as the bridge plugin leaves them. This test made them: it removes them."""
    for bridge in SEED_BRIDGES:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def test_the_seed_as_written_runs_real_containers(k8s_kubectl: Kubectl, k8s_namespace: str) -> None:
    ns = k8s_namespace
    try:
        _seed(k8s_kubectl, ns)
    finally:
        k8s_kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s", namespace=ns, check=False)
        _remove_seed_bridges()


def _seed(k8s_kubectl: Kubectl, ns: str) -> None:
    k8s_kubectl("apply", "-f", str(SEED_MANIFEST), namespace=ns)
    pods = {
        p["metadata"]["name"]: p
        for p in wait_until("bb1..bb3 Running and Ready", lambda: _running(k8s_kubectl, ns, 3), timeout=120)
    }
    main = ipaddress.ip_network(cluster.real_node.MAIN_SUBNET)
    for name, pod in pods.items():
        assert pod["spec"]["nodeName"] == REAL_NODE, (name, pod["spec"]["nodeName"])
        [container] = pod["status"]["containerStatuses"]
        assert container["containerID"].startswith("containerd://"), container
        # pulled: `image: busybox` is docker.io/library/busybox:latest, through the loopback mirror
        assert container["image"] == "docker.io/library/busybox:latest", container
        assert "@sha256:" in container["imageID"], container
        # Multus's own network-status: eth0 on the main network first, the cluster default. (Multus lists
        # net1/net2 there only for NADs that declare a cniVersion; the seed's do not.)
        status = json.loads(pod["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION])
        assert status[0]["interface"] == "eth0" and status[0]["default"] is True, status
        assert ipaddress.ip_address(status[0]["ips"][0]) in main, status
        # PID 1 of the container is the seed's command
        cmdline = k8s_kubectl("exec", name, "--", "cat", "/proc/1/cmdline", namespace=ns).stdout
        assert cmdline.split("\0")[:2] == ["sleep", "3600"], cmdline

    events = json.loads(k8s_kubectl("get", "events", "-o", "json", namespace=ns).stdout)["items"]
    pulled = {e["involvedObject"]["name"] for e in events if e["reason"] == "Pulled"}
    assert pulled == set(SEED_EXPECTED), [(e["reason"], e["message"]) for e in events]

    # The seed's transcript: `kubectl exec bb1 -- ip addr show` lists eth0, net1 and net2.
    addresses: dict[tuple[str, str], str] = {}
    for name, (first, second) in SEED_EXPECTED.items():
        shown = ip_addr_show(k8s_kubectl, ns, name)
        assert {"lo", "eth0", "net1", "net2"} <= set(shown), shown
        for ifname, nad in (("net1", first), ("net2", second)):
            [cidr] = shown[ifname]
            address = ipaddress.ip_interface(cidr)
            assert address.ip in SEED_SUBNETS[nad], (name, ifname, cidr)
            addresses[(name, nad)] = str(address.ip)

    # Pings from inside each container, over each link, both ways.
    for nad, (a, b) in LINKS.items():
        for source, target in ((a, b), (b, a)):
            ping = k8s_kubectl(
                "exec", source, "--", "ping", "-c", "2", "-W", "2", addresses[(target, nad)], namespace=ns, check=False
            )
            assert ping.returncode == 0 and "2 packets received" in ping.stdout, (nad, source, target, ping.stdout)
    # bb1 has no leg on 23-net: bb3's address there is out of its reach.
    ping23 = k8s_kubectl(
        "exec", "bb1", "--", "ping", "-c", "1", "-W", "1", addresses[("bb3", "23-net")], namespace=ns, check=False
    )
    assert ping23.returncode != 0, ping23.stdout


@pytest.mark.parametrize("slug", ["busybox-triangle", "busybox-hub", "busybox-line"])
def test_the_backends_lessons_run_as_real_containers(
    slug: str,
    worker_kubeconfig: Path,
    k8s_kubectl: Kubectl,
    instance: str,
    k8s_cleanup: list[str],
) -> None:
    """The kubernetes backend, as the worker's ServiceAccount: ready from the kubelet's Ready condition and
    Multus's network-status, pings through pods/exec inside the containers, then gone."""
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan(slug, instance)
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    observation = kb.observe(plan, wait=120)
    assert observation.ready, observation
    assert {p.node for p in observation.pods.values()} == {REAL_NODE}
    pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=plan.namespace).stdout)["items"]
    for pod in pods:
        [container] = pod["status"]["containerStatuses"]
        assert container["containerID"].startswith("containerd://") and container["started"], container
        # Multus, not the agent, wrote the addresses the backend reads
        status = json.loads(pod["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION])
        assert status[0]["name"] == "main" and status[0]["interface"] == "eth0", status
        assert [s["interface"] for s in status[1:]] == [i.name for i in plan.pod(pod["metadata"]["name"]).interfaces]
    results = ring_checks(kb, plan)
    assert results and all(ok for _, _, ok in results), results
    kb.destroy(plan.livelesson)
    assert namespaces_of(k8s_kubectl, instance) == []


def test_nothing_of_a_destroyed_lesson_runs_on_the_node(
    worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    """After destroy, containerd holds no container of the lesson's pods (the kubelet removed them)."""
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("busybox-line", instance)
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    assert kb.observe(plan, wait=120).ready
    uids = {p["metadata"]["uid"] for p in _pods(k8s_kubectl, plan.namespace)}
    assert len(uids) == len(plan.pods)
    assert uids <= _uids_in_containerd()
    kb.destroy(plan.livelesson)
    wait_until("containerd forgets the lesson's containers", lambda: not (uids & _uids_in_containerd()), timeout=60)


def _pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    return list(json.loads(kubectl("get", "pods", "-o", "json", namespace=ns).stdout)["items"])


def _uids_in_containerd() -> set[str]:
    """The pod UIDs of the containers containerd holds (the CRI labels each with io.kubernetes.pod.uid)."""
    sock = cluster.STATE / "node" / "containerd" / "containerd.sock"
    out = subprocess.run(
        ["ctr", "--address", str(sock), "--namespace", "k8s.io", "containers", "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    uids = set()
    for cid in out:
        info = subprocess.run(
            ["ctr", "--address", str(sock), "--namespace", "k8s.io", "containers", "info", cid],
            capture_output=True,
            text=True,
            check=False,
        )
        if info.returncode == 0:
            uid = json.loads(info.stdout).get("Labels", {}).get("io.kubernetes.pod.uid")
            if uid:
                uids.add(uid)
    return uids
