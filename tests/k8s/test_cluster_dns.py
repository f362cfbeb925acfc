"""The test cluster's DNS (tests/k8s/machinery/cluster_dns.py): CoreDNS answers for ``cluster.local`` on the
real node's pod network, so a headless Service's name resolves to its pod's eth0 address inside a container.

With kubectl only: two busybox pods on the real node and a headless Service for each (``clusterIP: None``,
a selector, ``publishNotReadyAddresses``: the shape of the Services the product makes), and a third pod and
Service in another namespace. From pod A, through the container's own resolver (the kubelet's resolv.conf),
B's short name and its FQDN resolve to B's address, even while B is not Ready, and a ping by name reaches
it; the other namespace's Service resolves by its FQDN only, never by its short name.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s import REAL_NODE, Kubectl, cluster
from tests.support.waits import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE = cluster.real_node
DOMAIN = NODE.CLUSTER_DOMAIN


@pytest.fixture
def other_namespace(k8s_kubectl: Kubectl) -> Iterator[str]:
    name = f"lstest-{uuid.uuid4().hex[:10]}"
    k8s_kubectl("create", "namespace", name)
    yield name
    k8s_kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


def _pod(name: str, ready: bool = True) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox", "command": ["sleep", "infinity"]}
    if not ready:  # never Ready: its Service publishes it all the same (publishNotReadyAddresses)
        container["readinessProbe"] = {"exec": {"command": ["false"]}, "periodSeconds": 2}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"dns-test": name}},
        "spec": {
            "nodeSelector": {"lesson-scheduler.test/node": NODE.NODE_LABELS["lesson-scheduler.test/node"]},
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def _service(name: str, pod: str, port: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": "None", "selector": {"dns-test": pod}, "publishNotReadyAddresses": True}
    if port is not None:  # the product gives an endpoint's Service ports only when it has some
        spec["ports"] = [{"name": "port", "port": port, "targetPort": port, "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def _apply(kubectl: Kubectl, ns: str, *items: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)}),
            namespace=ns)  # fmt: skip


def _running(kubectl: Kubectl, ns: str, names: set[str]) -> dict[str, dict[str, Any]] | None:
    pods = json.loads(kubectl("get", "pods", "-o", "json", namespace=ns).stdout)["items"]
    running = {p["metadata"]["name"]: p for p in pods if p["status"].get("phase") == "Running"}
    if set(running) != names or not all(p["status"].get("podIP") for p in running.values()):
        return None
    return running


def nslookup(kubectl: Kubectl, ns: str, pod: str, name: str) -> tuple[dict[str, set[str]], str]:
    """``nslookup NAME`` in the container: the A records it printed, by the name they answer for, and its
    output. (Busybox's nslookup tries the whole search list and exits 1 if any one of those names is not
    found, so its exit status says nothing.)"""
    proc = kubectl("exec", pod, "--", "nslookup", "-type=a", name, namespace=ns, check=False)
    answers: dict[str, set[str]] = {}
    for found, address in re.findall(r"^Name:\s*(\S+)\s*\nAddress:\s*(\S+)", proc.stdout, flags=re.MULTILINE):
        answers.setdefault(found.rstrip("."), set()).add(address)
    return answers, proc.stdout + proc.stderr


def resolves(kubectl: Kubectl, ns: str, pod: str, name: str, expected: dict[str, set[str]]) -> bool:
    answers, out = nslookup(kubectl, ns, pod, name)
    assert answers == expected, f"`nslookup {name}` in {pod} gave {answers}, not {expected}:\n{out}"
    return True


def eventually_resolves(kubectl: Kubectl, ns: str, pod: str, name: str, expected: dict[str, set[str]]) -> None:
    """As ``resolves``, within 30 s: the DNS learns a new Service from its watch of the API server."""
    what = f"{name} resolving in {pod}"
    wait_until(what, lambda: resolves(kubectl, ns, pod, name, expected), timeout=30, retry_on=(AssertionError,))


def ping(kubectl: Kubectl, ns: str, pod: str, name: str) -> subprocess.CompletedProcess[str]:
    return kubectl("exec", pod, "--", "ping", "-c", "1", "-W", "2", name, namespace=ns, check=False)


def listening(pid: int) -> set[tuple[str, str, int]]:
    """Every listening TCP socket and every UDP socket in the network namespace of process ``pid``."""
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            (address, port), state = fields[1].split(":"), fields[3]
            if table.startswith("tcp") and state != "0A":  # LISTEN
                continue
            raw = bytes.fromhex(address)  # host-order 32-bit words
            ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            found.add((table[:3], str(ip), int(port, 16)))
    return found


def _host_addresses(link: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", link], capture_output=True, text=True, check=True).stdout
    return [a["local"] for entry in json.loads(out) for a in entry.get("addr_info", [])]


def test_a_headless_services_name_resolves_to_its_pod_inside_a_container(
    k8s_kubectl: Kubectl, k8s_namespace: str, other_namespace: str
) -> None:
    ns, other = k8s_namespace, other_namespace
    _apply(k8s_kubectl, ns, _pod("pod-a"), _pod("pod-b", ready=False), _service("alpha", "pod-a", 8080),
           _service("beta", "pod-b", None))  # fmt: skip
    _apply(k8s_kubectl, other, _pod("pod-c"), _service("gamma", "pod-c", None))
    pods = wait_until("pod-a and pod-b Running", lambda: _running(k8s_kubectl, ns, {"pod-a", "pod-b"}), timeout=120)
    [pod_c] = wait_until("pod-c Running", lambda: _running(k8s_kubectl, other, {"pod-c"}), timeout=120).values()
    ip_a, ip_b, ip_c = pods["pod-a"]["status"]["podIP"], pods["pod-b"]["status"]["podIP"], pod_c["status"]["podIP"]
    # real containers on the real node, eth0 on the pods' network, in the pods' range: never the DNS's address
    main, first = ipaddress.IPv4Network(NODE.MAIN_SUBNET), ipaddress.IPv4Address(NODE.MAIN_RANGE_START)
    assert ipaddress.IPv4Address(NODE.CLUSTER_DNS) in main and ipaddress.IPv4Address(NODE.CLUSTER_DNS) < first
    for pod in (*pods.values(), pod_c):
        assert pod["spec"]["nodeName"] == REAL_NODE, pod["spec"]["nodeName"]
        address = ipaddress.IPv4Address(pod["status"]["podIP"])
        assert address in main and address >= first, address

    # The kubelet wrote the cluster's DNS into the container: its nameserver and the namespace's search list.
    resolv = k8s_kubectl("exec", "pod-a", "--", "cat", "/etc/resolv.conf", namespace=ns).stdout
    assert re.search(rf"^nameserver {re.escape(NODE.CLUSTER_DNS)}$", resolv, flags=re.MULTILINE), resolv
    search = next(line.split()[1:] for line in resolv.splitlines() if line.startswith("search"))
    assert search[:3] == [f"{ns}.svc.{DOMAIN}", f"svc.{DOMAIN}", DOMAIN], resolv

    # B's short name, through the search list, is B's eth0 address: B is not Ready, and is published anyway.
    fqdn_b = f"beta.{ns}.svc.{DOMAIN}"
    eventually_resolves(k8s_kubectl, ns, "pod-a", "beta", {fqdn_b: {ip_b}})
    pod_b = json.loads(k8s_kubectl("get", "pod", "pod-b", "-o", "json", namespace=ns).stdout)
    conditions = {c["type"]: c["status"] for c in pod_b["status"].get("conditions", [])}
    assert conditions.get("Ready") != "True", conditions
    assert resolves(k8s_kubectl, ns, "pod-a", fqdn_b, {fqdn_b: {ip_b}})
    # ...and the other way round, a Service with ports
    fqdn_a = f"alpha.{ns}.svc.{DOMAIN}"
    eventually_resolves(k8s_kubectl, ns, "pod-b", "alpha", {fqdn_a: {ip_a}})

    # A ping by name, with the container's own resolver (libc's getaddrinfo, not nslookup), reaches B.
    for name in ("beta", fqdn_b):
        by_name = ping(k8s_kubectl, ns, "pod-a", name)
        assert by_name.returncode == 0 and f"({ip_b})" in by_name.stdout, (name, by_name.stdout, by_name.stderr)
        assert "1 packets received" in by_name.stdout, by_name.stdout

    # The other namespace's Service exists and resolves by its FQDN, but its short name is not ours.
    fqdn_c = f"gamma.{other}.svc.{DOMAIN}"
    eventually_resolves(k8s_kubectl, ns, "pod-a", fqdn_c, {fqdn_c: {ip_c}})
    assert resolves(k8s_kubectl, ns, "pod-a", "gamma", {})
    short_c = ping(k8s_kubectl, ns, "pod-a", "gamma")
    assert short_c.returncode != 0 and "bad address" in short_c.stderr, (short_c.stdout, short_c.stderr)
    assert ip_c not in short_c.stdout
    # from its own namespace it does resolve by its short name
    assert resolves(k8s_kubectl, other, "pod-c", "gamma", {fqdn_c: {ip_c}})

    # Only the cluster's zone is answered: nothing is forwarded off the machine.
    assert resolves(k8s_kubectl, ns, "pod-a", "example.com", {})

    # In the DNS's namespace, CoreDNS answers on its address, port 53, and everything else (its health and
    # readiness endpoints, the relay to the API server) listens on that namespace's own loopback.
    coredns = cluster.recorded("coredns")
    assert coredns is not None, "CoreDNS is not running"
    sockets = listening(coredns)
    assert {("tcp", NODE.CLUSTER_DNS, 53), ("udp", NODE.CLUSTER_DNS, 53)} <= sockets, sockets
    assert {ip for _, ip, _ in sockets} <= {NODE.CLUSTER_DNS, "127.0.0.1"}, sockets

    # From a pod, the DNS's address answers DNS (TCP 53 connects) and nothing else: not the relay to the
    # API server, not the health or readiness endpoints.
    def connects(port: int) -> subprocess.CompletedProcess[str]:
        argv = ("exec", "pod-a", "--", "nc", "-w", "2", NODE.CLUSTER_DNS, str(port))
        return k8s_kubectl(*argv, namespace=ns, check=False)

    dns_tcp = connects(53)
    assert dns_tcp.returncode == 0, dns_tcp.stderr
    api_port = json.loads((cluster.STATE / "ports.json").read_text())["apiserver"]
    for port in (api_port, cluster.cluster_dns.HEALTH_PORT, cluster.cluster_dns.READY_PORT):
        probe = connects(port)
        assert probe.returncode != 0 and "refused" in probe.stderr, (port, probe.stdout, probe.stderr)

    # The host has no address on the pods' network (neither on the bridge nor on the DNS's veth): a pod
    # reaches the DNS, and nothing of the host.
    for link in (NODE.MAIN_BRIDGE, cluster.cluster_dns.HOST_VETH):
        assert _host_addresses(link) == [], link
