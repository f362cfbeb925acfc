"""The test cluster behaves like a real one where the project depends on it: real API server and
scheduler, a real node (kubelet, containerd, runc, Multus) where the seed runs as written, kwok nodes that
are Ready, the NAD CRD, and a node agent that wires pods on the kwok nodes with the real CNI plugins so that
`kubectl exec` runs inside the pod's network namespace."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.core.render import NETWORK_STATUS_ANNOTATION
from tests.support.k8s import (
    REAL_NODE,
    SEED_EXPECTED,
    SEED_MANIFEST,
    SEED_SUBNETS,
    on_kwok,
)
from tests.support.waits import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def pods_json(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(kubectl("get", "pods", "-o", "json", namespace=namespace).stdout)["items"])


def k8s_bridges(node_ns: str) -> set[str]:
    if not Path(f"/run/netns/{node_ns}").exists():
        return set()
    out = subprocess.run(
        ["ip", "-n", node_ns, "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    ).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def _ready(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def test_three_ready_kwok_nodes_dialed_on_loopback(k8s_kubectl: Kubectl, k8s_cluster: Any) -> None:
    nodes = json.loads(k8s_kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [n for n in nodes if _ready(n) and n["metadata"]["name"].startswith(k8s_cluster.NODE_PREFIX)]
    assert len(ready) >= 3, [n["metadata"]["name"] for n in nodes]
    hostnames = {n["metadata"]["labels"]["kubernetes.io/hostname"] for n in ready}
    assert len(hostnames) == len(ready)
    kwok_port = json.loads((k8s_cluster.STATE / "ports.json").read_text())["kwok"]
    for node in ready:
        # What the API server dials for exec and logs: InternalIP (the only type it prefers) and the
        # kubelet port, which is kwok's server on loopback.
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == ["127.0.0.1"], node["status"]["addresses"]
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kwok_port
        # tainted: lesson pods go to the real node; tests of many-node scheduling tolerate the taint
        assert node["spec"]["taints"] == [k8s_cluster.KWOK_TAINT], node["spec"]


def test_the_real_node_is_a_kubelet_on_containerd(k8s_kubectl: Kubectl, k8s_cluster: Any) -> None:
    node = json.loads(k8s_kubectl("get", "node", REAL_NODE, "-o", "json").stdout)
    assert _ready(node), node["status"].get("conditions")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == k8s_cluster.versions()["version"], info
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    assert not node["spec"].get("taints"), node["spec"]  # the cloud-provider taint is gone
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert internal == ["127.0.0.1"]  # set as a cloud controller would: the API server dials the kubelet there
    ports = json.loads((k8s_cluster.STATE / "ports.json").read_text())
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == ports["kubelet"]


def test_control_plane_listens_on_loopback_only(k8s_cluster: Any) -> None:
    for component in k8s_cluster.COMPONENTS:
        pid = k8s_cluster.recorded(component)
        assert pid is not None, f"{component} is not running"
    inodes = {}
    for component in k8s_cluster.COMPONENTS:
        pid = k8s_cluster.recorded(component)
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink()
            except OSError:
                continue
            if str(target).startswith("socket:["):
                inodes[str(target)[8:-1]] = component
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (state == "0A" or table.startswith("/proc/net/udp")):
                listening.append((inodes[inode], table, local))
    assert listening, "found no listening sockets of the cluster's processes"
    loopback = ("0100007F:", "00000000000000000000000001000000:")  # 127.0.0.1, ::1
    others = [entry for entry in listening if not entry[2].startswith(loopback)]
    assert not others, f"listening beyond loopback: {others}"


def test_nad_crd_is_served(k8s_kubectl: Kubectl) -> None:
    resources = k8s_kubectl("api-resources", "--api-group=k8s.cni.cncf.io", "-o", "name").stdout.split()
    assert "network-attachment-definitions.k8s.cni.cncf.io" in resources
    k8s_kubectl("get", "network-attachment-definitions", "--all-namespaces")


def _network_status(pod: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(NETWORK_STATUS_ANNOTATION)
    return json.loads(raw) if raw else None


def _seed_on_kwok() -> str:
    """The seed's manifest with its pods placed on the kwok nodes (the node agent wires them)."""
    items = [d for d in yaml.safe_load_all(SEED_MANIFEST.read_text()) if d]
    items = [on_kwok(d) if d["kind"] == "Pod" else d for d in items]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def test_seed_busybox_example_on_kwok_nodes_via_the_node_agent(
    k8s_kubectl: Kubectl, k8s_namespace: str, k8s_cluster: Any
) -> None:
    """The emulated path (nothing runs on a kwok node): the agent plays Multus and wires the pods."""
    ns = k8s_namespace
    k8s_kubectl("apply", "-f", "-", stdin=_seed_on_kwok(), namespace=ns)

    def wired() -> list[dict[str, Any]] | None:
        pods = pods_json(k8s_kubectl, ns)
        done = [p for p in pods if p["spec"].get("nodeName") and _network_status(p)]
        return pods if len(done) == 3 else None

    pods = {p["metadata"]["name"]: p for p in wait_until("bb1..bb3 scheduled and wired", wired, timeout=90)}

    # The real scheduler honoured the required pod affinity: one node for all three.
    nodes = {p["spec"]["nodeName"] for p in pods.values()}
    assert len(nodes) == 1, {name: p["spec"]["nodeName"] for name, p in pods.items()}
    assert nodes.pop().startswith(k8s_cluster.NODE_PREFIX)

    addresses: dict[tuple[str, str], str] = {}
    for name, (first, second) in SEED_EXPECTED.items():
        status = _network_status(pods[name])
        assert status is not None
        extra = {s["interface"]: s for s in status if not s.get("default")}
        assert set(extra) == {"net1", "net2"}, status
        for ifname, nad in (("net1", first), ("net2", second)):
            entry = extra[ifname]
            assert entry["name"] == f"{ns}/{nad}"
            assert len(entry["ips"]) == 1, entry
            assert ipaddress.ip_address(entry["ips"][0]) in SEED_SUBNETS[nad], entry
            assert entry["mac"]
            addresses[(name, nad)] = entry["ips"][0]
        # The addresses are really there, inside the pod's network namespace.
        shown = json.loads(k8s_kubectl("exec", name, "--", "ip", "-j", "-4", "addr", "show", namespace=ns).stdout)
        configured = {i["ifname"]: [a["local"] for a in i.get("addr_info", [])] for i in shown}
        assert configured.get("net1") == [extra["net1"]["ips"][0]], configured
        assert configured.get("net2") == [extra["net2"]["ips"][0]], configured

    target = addresses[("bb2", "12-net")]
    ping = k8s_kubectl("exec", "bb1", "--", "ping", "-c2", "-W2", target, namespace=ns, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "2 received" in ping.stdout, ping.stdout

    # bb1 and bb3 share 31-net; bb1 has no leg on 23-net, so bb3's 23-net address is unreachable from it.
    ping31 = k8s_kubectl(
        "exec", "bb1", "--", "ping", "-c1", "-W2", addresses[("bb3", "31-net")], namespace=ns, check=False
    )
    assert ping31.returncode == 0, ping31.stdout + ping31.stderr
    ping23 = k8s_kubectl(
        "exec", "bb1", "--", "ping", "-c1", "-W1", addresses[("bb3", "23-net")], namespace=ns, check=False
    )
    assert ping23.returncode != 0, ping23.stdout

    # Commands without a wrapper are refused rather than run in the root network namespace.
    refused = k8s_kubectl("exec", "bb1", "--", "wget", "-q", "-O-", f"http://{target}/", namespace=ns, check=False)
    assert refused.returncode != 0

    # Pods gone: CNI DEL, namespaces removed, bridges without ports deleted.
    uids = [p["metadata"]["uid"] for p in pods.values()]
    node = pods["bb1"]["spec"]["nodeName"]
    k8s_kubectl("delete", "pods", "--all", "--wait=true", "--timeout=60s", namespace=ns)
    node_ns = f"{k8s_cluster.NETNS_PREFIX}-{node}"

    def torn_down() -> bool:
        left = {p.name for p in Path("/run/netns").iterdir()}
        if any(f"{k8s_cluster.NETNS_PREFIX}-pod-{uid}" in left for uid in uids):
            return False
        bridges = k8s_bridges(node_ns)
        return not ({"12-bridge", "23-bridge", "31-bridge"} & bridges)

    wait_until("the agent's teardown", torn_down, timeout=30)


def test_exec_is_confined_to_the_pods_network_namespace_as_nobody(
    k8s_kubeconfig: Path, k8s_kubectl: Kubectl, k8s_cluster: Any, instance: str, k8s_cleanup: list[str]
) -> None:
    """`kubectl exec` runs wrapped commands only, in the pod's network namespace, as nobody with CAP_NET_RAW
    alone: no shell, no way into the host's namespaces, none of root's files."""
    from scheduler.core import render
    from scheduler.core.plan import make_plan
    from scheduler.services.catalog import load_catalog
    from workers.backends.kubernetes.backend import KubernetesBackend

    lesson = load_catalog(k8s_cluster.REPO / "config" / "lessons").get("busybox-line")
    assert lesson is not None
    plan = make_plan(lesson, "confine001", "tester", instance=instance)
    kb = KubernetesBackend.from_kubeconfig(k8s_kubeconfig, instance=instance)
    kb.apply_networks(plan)
    # the backend's own pods, placed on the kwok nodes: this is the agent's exec path, not a container's
    pods = [on_kwok(p) for p in render.pods(plan)]
    k8s_kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    assert kb.observe(plan, wait=60).ready
    check = plan.checks[0]
    pod = plan.pod(check.source).name
    peer = kb.observe(plan, wait=0).address(check.target, check.interface)
    assert peer is not None

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return k8s_kubectl("exec", pod, "--", *argv, namespace=plan.namespace, check=False)

    # what lessons need still works: ping (CAP_NET_RAW) and reading the pod's own interfaces
    ping = run("ping", "-c1", "-W2", peer.split("/")[0])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert json.loads(run("ip", "-j", "link", "show").stdout)
    status = run("cat", "/proc/self/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == "65534" and fields["Gid"].split()[0] == "65534", status
    assert int(fields["CapEff"], 16) == 1 << 13 and int(fields["CapBnd"], 16) == 1 << 13, status  # CAP_NET_RAW
    assert fields["NoNewPrivs"].strip() == "1", status

    host_hostname = Path("/proc/sys/kernel/hostname").read_text()
    escapes = {
        "a shell": ("sh", "-c", "nsenter --net=/proc/1/ns/net ip link"),
        "bash": ("bash", "-c", "cat /proc/1/environ"),
        "nsenter": ("nsenter", "--net=/proc/1/ns/net", "--", "ip", "link"),
        "an absolute path": ("/usr/bin/nsenter", "--net=/proc/1/ns/net", "--", "ip", "link"),
        "init's environment": ("cat", "/proc/1/environ"),
        "init's network namespace": ("ls", "-l", "/proc/1/ns/net"),
        "the cluster's admin key": ("cat", str(k8s_cluster.STATE / "pki" / "admin.key")),
        "the admin kubeconfig": ("cat", str(k8s_cluster.STATE / "kubeconfig")),
        "/etc/shadow": ("cat", "/etc/shadow"),
        "ip netns attach of the host": ("ip", "netns", "attach", f"escape-{instance}", "1"),
        "ip netns exec": ("ip", "netns", "exec", f"{k8s_cluster.NETNS_PREFIX}-kwok-node-0", "ip", "link"),
        "a link into the host": ("ip", "link", "add", "esc0", "type", "veth", "peer", "name", "esc1", "netns", "1"),
        "a new link": ("ip", "link", "add", "esc0", "type", "dummy"),
        "the host's name": ("hostname", "escaped"),
        "the wrapper itself": ("netns-exec",),
    }
    allowed = {
        what: (proc.returncode, proc.stdout) for what, argv in escapes.items() if (proc := run(*argv)).returncode == 0
    }
    assert allowed == {}, allowed
    assert not Path(f"/run/netns/escape-{instance}").exists()
    assert Path("/proc/sys/kernel/hostname").read_text() == host_hostname
    kb.destroy(plan.livelesson)
