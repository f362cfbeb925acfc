"""Real nodes whose network is a network namespace of ours ("netns nodes"), for lessons split over nodes.

``cluster.py nodes-up --count N --max-pods M`` starts ``netns-node-1..N`` next to ``real-node-0`` (which,
with the kwok nodes, is not touched); ``cluster.py nodes-down`` stops them. Each node k is real-node-0's
machinery (real_node.RealNode: containerd, runc, a kubelet, Multus's thin plugin) with:

* its network namespace ``<NETNS_PREFIX>-node-<k>`` (``k8sagent-node-1``), in which containerd, the kubelet
  and the product's node agent run (``nsenter --net``: the host's mount namespace is shared, so paths,
  cgroups and containerd's mounts are the host's; ``ip netns exec`` would make a mount namespace);
* its state under ``.k8s/nodes/netns-node-<k>/``, its kubelet cgroup root
  ``/lesson-scheduler-test-netns-node-<k>``, its own kubelet serving and client certificates;
* the pods' main network: Multus's default delegate is the bridge ``lsk8smain0`` *inside* the node's
  namespace (made here before the kubelet starts; the bridge plugin reuses it), host-local on
  10.246.0.0/16 with a range of its own (``node_range``), and a veth with no address on either side
  (``lsk8sn<k>`` in the root namespace, a port of the root ``lsk8smain0``, which holds the cluster DNS's
  port): one flat L2 network of every real node's pods and the DNS, as weave gives in production;
* an underlay for VXLAN: a namespace ``<NETNS_PREFIX>-underlay`` holding a bridge ``underlay``; each node
  has a veth end ``underlay0`` (MTU 1550) with 10.248.0.<k+1>/24, its ``lessons.io/tunnel-address`` label;
* no address in the host's root namespace: the API server and the registry are reached through relays
  (``cluster_dns.py relay``) listening on 127.0.0.1 inside the node's namespace at their ports and
  connecting in the root one; the API server reaches the kubelet (exec, logs) through a reverse relay
  listening on 127.0.0.1:<the node's kubelet port> in the root namespace and connecting inside the node's.

Standard library only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NODE_PREFIX = "netns-node-"
MAX_NODES = 16  # node_range: 10.246.128.0 .. 10.246.255.255 holds 16 nodes of 8 /24s
HOST_VETH_PREFIX = "lsk8sn"  # root side of the main network's veth, lsk8sn<k>
NODE_VETH = "main0"  # the node side, a port of the node's lsk8smain0
UNDERLAY_BRIDGE = "underlay"
UNDERLAY_VETH = "underlay0"
UNDERLAY_MTU = 1550
UNDERLAY_PREFIX_LEN = 24
TUNNEL_LABEL = "lessons.io/tunnel-address"
AGENT_SA = "lesson-scheduler-node-agent"
AGENT_NAMESPACE = "lesson-scheduler"
AGENT_MODULE = "workers.node_agent"
AGENT_READY_TIMEOUT = 30.0


class NetnsNodeError(RuntimeError):
    pass


def node_range(k: int) -> tuple[str, str]:
    """Node k's share of the main delegate's 10.246.0.0/16: 8 /24s from 10.246.128.0 (real-node-0 ends at
    10.246.127.254, the DNS is in 10.246.0.0/24)."""
    first = 128 + 8 * (k - 1)
    return f"10.246.{first}.1", f"10.246.{first + 7}.254"


def underlay_address(k: int) -> str:
    return f"10.248.0.{k + 1}"


class NetnsNode:
    """One node's names and paths."""

    def __init__(self, nodes: NetnsNodes, k: int) -> None:
        c = nodes.c
        self.k = k
        self.name = f"{NODE_PREFIX}{k}"
        self.netns = f"{c.NETNS_PREFIX}-node-{k}"
        self.netns_path = Path("/run/netns") / self.netns
        self.state: Path = nodes.root / self.name
        self.cgroup_root = f"/lesson-scheduler-test-{self.name}"
        self.host_veth = f"{HOST_VETH_PREFIX}{k}"
        self.underlay_veth = f"n{k}"  # its underlay-side end, in the underlay namespace
        self.address = underlay_address(k)
        self.agent_c = f"lesson-agent-{self.name}"
        self.relays = {  # component -> (listen in the node's namespace?, port); the kubelet's is the reverse one
            f"relay-api-{self.name}": "apiserver",
            f"relay-registry-{self.name}": "registry",
            f"relay-kubelet-{self.name}": "kubelet",
        }

    def real(self, c: Any, max_pods: int = 110) -> Any:
        labels = {"type": "real", "lesson-scheduler.test/node": "netns", TUNNEL_LABEL: self.address}
        return c.real_node.RealNode(
            c,
            name=self.name,
            state=self.state,
            cgroup_root=self.cgroup_root,
            netns=self.netns_path,
            labels=labels,
            main_range=node_range(self.k),
            max_pods=max_pods,
        )

    def ports(self) -> dict[str, int]:
        try:
            return json.loads((self.state / "ports.json").read_text())
        except (OSError, ValueError):
            return {}


class NetnsNodes:
    """Start and stop the netns nodes; ``cluster`` is cluster.py as a module (spawn, stop, kubectl, ...)."""

    def __init__(self, cluster: Any) -> None:
        self.c = cluster
        self.rn = cluster.real_node
        self.root: Path = cluster.STATE / "nodes"
        self.underlay = f"{cluster.NETNS_PREFIX}-underlay"
        self.underlay_path = Path("/run/netns") / self.underlay
        self._manifests_applied = False

    # --- up ----------------------------------------------------------------------------------------------

    def up(self, count: int, max_pods: int) -> int:
        started = time.monotonic()
        if not 1 <= count <= MAX_NODES:
            raise NetnsNodeError(f"--count must be 1..{MAX_NODES}")
        if not self.c.is_up():
            raise NetnsNodeError("the cluster is not up: run `make k8s-up` first")
        for tool in ("nsenter", "ip", "ss"):
            if shutil.which(tool) is None:
                raise NetnsNodeError(f"`{tool}` is not on PATH")
        if not Path("/sys/class/net", self.rn.MAIN_BRIDGE).exists():
            raise NetnsNodeError(f"the root namespace has no {self.rn.MAIN_BRIDGE} (the cluster DNS makes it)")
        bins = self.c.bin_dir()
        cports = json.loads((self.c.STATE / "ports.json").read_text())
        self.root.mkdir(parents=True, exist_ok=True)
        self._snapshot_host()
        self._underlay()
        for k in range(1, count + 1):
            node = NetnsNode(self, k)
            if self._node_up(node):
                self.c.log(f"{node.name}: already up")
                continue
            if node.state.exists() or node.netns_path.exists():
                self.c.log(f"{node.name}: partly up or left by a cluster that is gone: removing it first")
                self._down_node(node)
            t0 = time.monotonic()
            try:
                self._up_node(node, bins, cports, max_pods)
            except BaseException:
                self.c.log(f"{node.name}: start failed: removing it (logs kept in {self.c.STATE / 'logs'})")
                self._down_node(node)
                raise
            self.c.log(f"{node.name} up in {time.monotonic() - t0:.1f}s")
        self.c.log(f"nodes-up: {count} netns node(s) up in {time.monotonic() - started:.1f}s")
        return 0

    def _node_up(self, node: NetnsNode) -> bool:
        real = node.real(self.c)
        needed = [real.containerd_c, real.kubelet_c, *node.relays]
        if (node.state / "agent.kubeconfig").exists():
            needed.append(node.agent_c)
        return node.netns_path.exists() and all(self.c.recorded(n) for n in needed)

    def _snapshot_host(self) -> None:
        """The host's IPAM folders before the netns nodes (kept while any is up): teardown removes new ones."""
        path = self.root / "host-before.json"
        if not path.exists():
            path.write_text(json.dumps({"ipam": sorted(self.rn._ipam_dirs())}, indent=2) + "\n")

    def _underlay(self) -> None:
        if self.underlay_path.exists():
            return
        self.c.log(f"underlay: namespace {self.underlay} with bridge {UNDERLAY_BRIDGE} (MTU {UNDERLAY_MTU})")
        _ip("netns", "add", self.underlay)
        _ip("link", "set", "lo", "up", netns=self.underlay)
        _ip("link", "add", UNDERLAY_BRIDGE, "mtu", str(UNDERLAY_MTU), "type", "bridge", netns=self.underlay)
        _ip("link", "set", UNDERLAY_BRIDGE, "addrgenmode", "none", netns=self.underlay)
        _ip("link", "set", UNDERLAY_BRIDGE, "up", netns=self.underlay)

    def _up_node(self, node: NetnsNode, bins: Path, cports: dict[str, int], max_pods: int) -> None:
        node.state.mkdir(parents=True, exist_ok=True)
        kubelet, healthz = self.c.free_ports(2)
        ports = {"apiserver": cports["apiserver"], "registry": cports["registry"], "kubelet": kubelet,
                 "kubelet_healthz": healthz}  # fmt: skip
        (node.state / "ports.json").write_text(json.dumps(ports, indent=2) + "\n")
        self._network(node)
        self._relays(node, ports)
        real = node.real(self.c, max_pods)
        real.start_node(bins, ports, f"127.0.0.1:{cports['registry']}")
        self._start_agent(node, cports["apiserver"])

    def _network(self, node: NetnsNode) -> None:
        bridge = self.rn.MAIN_BRIDGE
        self.c.log(
            f"{node.name}: namespace {node.netns}; {bridge} in it joined to the root {bridge} by "
            f"{node.host_veth}<->{NODE_VETH} (no addresses); {UNDERLAY_VETH} {node.address}/{UNDERLAY_PREFIX_LEN}"
        )
        if Path("/sys/class/net", node.host_veth).exists():
            _ip("link", "del", node.host_veth, check=False)
        _ip("netns", "add", node.netns)
        ns = node.netns
        _ip("link", "set", "lo", "up", netns=ns)
        # the pods' main bridge, as the bridge plugin would make it, but before it: no address, no IPv6 LL
        _ip("link", "add", bridge, "type", "bridge", netns=ns)
        _ip("link", "set", bridge, "addrgenmode", "none", netns=ns)
        _ip("link", "set", bridge, "up", netns=ns)
        _ip("link", "add", node.host_veth, "type", "veth", "peer", "name", NODE_VETH, "netns", ns)
        _ip("link", "set", node.host_veth, "addrgenmode", "none")
        _ip("link", "set", node.host_veth, "master", bridge)
        _ip("link", "set", node.host_veth, "up")
        _ip("link", "set", NODE_VETH, "addrgenmode", "none", netns=ns)
        _ip("link", "set", NODE_VETH, "master", bridge, netns=ns)
        _ip("link", "set", NODE_VETH, "up", netns=ns)
        # the underlay: a veth from the node's namespace to the underlay bridge, nothing in the root one
        mtu = str(UNDERLAY_MTU)
        _ip("link", "add", node.underlay_veth, "mtu", mtu, "type", "veth",
            "peer", "name", UNDERLAY_VETH, "mtu", mtu, "netns", ns, netns=self.underlay)  # fmt: skip
        _ip("link", "set", node.underlay_veth, "addrgenmode", "none", netns=self.underlay)
        _ip("link", "set", node.underlay_veth, "master", UNDERLAY_BRIDGE, netns=self.underlay)
        _ip("link", "set", node.underlay_veth, "up", netns=self.underlay)
        _ip("addr", "add", f"{node.address}/{UNDERLAY_PREFIX_LEN}", "dev", UNDERLAY_VETH, netns=ns)
        _ip("link", "set", UNDERLAY_VETH, "up", netns=ns)

    def _relays(self, node: NetnsNode, ports: dict[str, int]) -> None:
        script = str(self.c.HERE / "cluster_dns.py")
        for component, which in node.relays.items():
            port = ports[which]
            if which == "kubelet":  # root namespace -> the node's: the API server dials 127.0.0.1:<port>
                where = [f"--connect-netns={node.netns_path}"]
                self.c.log(f"{node.name}: relay 127.0.0.1:{port} (root) -> its kubelet 127.0.0.1:{port} (node)")
            else:  # the node's namespace -> root: the API server, the registry
                where = [f"--netns={node.netns_path}"]
                self.c.log(f"{node.name}: relay 127.0.0.1:{port} (node) -> {which} 127.0.0.1:{port} (root)")
            argv = [sys.executable, script, "relay", *where, f"--port={port}", f"--target-port={port}"]
            self.c.spawn(component, argv)
        for component, which in node.relays.items():
            netns = None if which == "kubelet" else node.netns_path
            port = ports[which]
            self.c.wait_for(f"{component} listening", lambda n=netns, p=port: _listening(n, p), 15, component)

    def _start_agent(self, node: NetnsNode, api_port: int) -> None:
        repo: Path = self.c.REPO
        token = self._agent_token()
        if token is None:
            raise NetnsNodeError(f"no ServiceAccount {AGENT_NAMESPACE}/{AGENT_SA} after applying config/k8s/*.yaml")
        ca = base64.b64encode((self.c.STATE / "pki" / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    # the API relay inside the node's namespace, at the API server's own port
                    "name": "lesson-test",
                    "cluster": {"server": f"https://127.0.0.1:{api_port}", "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": AGENT_SA, "user": {"token": token}}],
            "contexts": [{"name": "lesson-test", "context": {"cluster": "lesson-test", "user": AGENT_SA}}],
            "current-context": "lesson-test",
        }
        kubeconfig = node.state / "agent.kubeconfig"
        kubeconfig.touch(mode=0o600)
        kubeconfig.chmod(0o600)
        kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        ready = node.state / "agent-ready"
        ready.unlink(missing_ok=True)
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self.c.log(f"{node.name}: node agent ({AGENT_MODULE}) in {node.netns}")
        argv = [self.c.agent_python(), "-m", AGENT_MODULE, "--node", node.name,
                "--kubeconfig", str(kubeconfig), "--ready-file", str(ready)]  # fmt: skip
        self.c.spawn(node.agent_c, ["nsenter", f"--net={node.netns_path}", "--", *argv], env=env)
        self.c.wait_for(f"{node.name}'s node agent ready", ready.exists, AGENT_READY_TIMEOUT, node.agent_c)

    def _agent_token(self) -> str | None:
        def exists() -> bool:
            args = ("get", "serviceaccount", AGENT_SA, "-n", AGENT_NAMESPACE)
            return self.c.kubectl(*args, check=False).returncode == 0

        if not exists():
            if self._manifests_applied:  # once per nodes-up
                return None
            self.c.log(f"no ServiceAccount {AGENT_NAMESPACE}/{AGENT_SA}: applying config/k8s/*.yaml again")
            self.c.install_manifests()
            self._manifests_applied = True
            if not exists():
                return None
        out = self.c.kubectl("create", "token", AGENT_SA, "-n", AGENT_NAMESPACE, "--duration=24h")
        return out.stdout.strip()

    # --- down --------------------------------------------------------------------------------------------

    def nodes(self) -> list[NetnsNode]:
        """Every netns node with anything of it on the host: a state folder, a namespace, a pidfile, a veth."""
        ks: set[int] = set()
        pattern = re.compile(rf"{re.escape(NODE_PREFIX)}(\d+)$")
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if m := pattern.match(folder.name):
                ks.add(int(m.group(1)))
        ns_pattern = re.compile(rf"{re.escape(self.c.NETNS_PREFIX)}-node-(\d+)$")
        for ns in Path("/run/netns").iterdir() if Path("/run/netns").is_dir() else []:
            if m := ns_pattern.match(ns.name):
                ks.add(int(m.group(1)))
        pid_pattern = re.compile(rf"-{re.escape(NODE_PREFIX)}(\d+)\.pid$")
        for pidfile in (self.c.STATE / "run").iterdir() if (self.c.STATE / "run").is_dir() else []:
            if m := pid_pattern.search(pidfile.name):
                ks.add(int(m.group(1)))
        veth_pattern = re.compile(rf"{HOST_VETH_PREFIX}(\d+)$")
        for link in Path("/sys/class/net").iterdir():
            if m := veth_pattern.match(link.name):
                ks.add(int(m.group(1)))
        return [NetnsNode(self, k) for k in sorted(ks)]

    def down(self) -> int:
        started = time.monotonic()
        left = self.teardown()
        if left:
            self.c.log("netns nodes: left behind on the host (remove by hand):\n  " + "\n  ".join(left))
            return 1
        self.c.log(f"nodes-down in {time.monotonic() - started:.1f}s")
        return 0

    def teardown(self) -> list[str]:
        """Stop every netns node and the underlay; what is left on the host (empty if all went)."""
        nodes = self.nodes()
        for node in nodes:
            try:
                self._down_node(node)
            except Exception as exc:  # go on with the others; leftovers says what stayed
                self.c.log(f"{node.name}: teardown failed: {exc}")
        if self.underlay_path.exists():
            self.c.log(f"removing namespace {self.underlay}")
            _ip("netns", "del", self.underlay, check=False)
        self._remove_ipam()
        left = self.leftovers()
        if not left and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def _down_node(self, node: NetnsNode) -> None:
        self.c.log(f"{node.name}: stopping")
        real = node.real(self.c)
        real.delete_pods()
        self.c.stop(node.agent_c)
        real.stop_runtime()
        self.rn._unmount_under(node.state)
        self.rn._remove_cgroups(node.cgroup_root)
        self.rn._remove_container_log_links(node.state / "pod-logs")
        for component in node.relays:
            self.c.stop(component)
        if Path("/sys/class/net", node.host_veth).exists():
            _ip("link", "del", node.host_veth, check=False)
        if node.netns_path.exists():
            _ip("netns", "del", node.netns, check=False)
        if self.c.api_ready():
            self.c.kubectl("delete", "node", node.name, "--ignore-not-found", "--wait=false", check=False)
        if not self._node_leftovers(node):
            shutil.rmtree(node.state, ignore_errors=True)

    def _new_ipam(self) -> list[str]:
        """IPAM folders new since the netns nodes came up, and not real-node-0's (the product's NADs)."""
        try:
            before = set(json.loads((self.root / "host-before.json").read_text())["ipam"])
        except (OSError, ValueError, KeyError):
            return []
        with contextlib.suppress(OSError, ValueError, KeyError):
            before |= set(json.loads((self.c.STATE / "node" / "host-before.json").read_text())["ipam"])
        in_use = self._real_node_sandboxes()
        new = []
        for name in sorted(self.rn._ipam_dirs() - before):
            folder = self.rn.HOST_IPAM_DIR / name
            owners = set()
            for lease in folder.iterdir() if folder.is_dir() else []:
                with contextlib.suppress(OSError, IndexError):
                    owners.add(lease.read_text().splitlines()[0].strip())
            if owners & in_use:  # a lease of a pod on real-node-0: its own teardown removes the folder
                continue
            new.append(name)
        return new

    def _real_node_sandboxes(self) -> set[str]:
        sock = self.c.STATE / "node" / "containerd" / "containerd.sock"
        if not sock.exists():
            return set()
        out = subprocess.run(["ctr", "--address", str(sock), "--namespace", "k8s.io", "containers", "list", "-q"],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        return set(out.stdout.split())

    def _remove_ipam(self) -> None:
        for name in self._new_ipam():
            self.c.log(f"removing {self.rn.HOST_IPAM_DIR / name} (made on a netns node)")
            shutil.rmtree(self.rn.HOST_IPAM_DIR / name, ignore_errors=True)

    # --- checks ------------------------------------------------------------------------------------------

    def _node_leftovers(self, node: NetnsNode) -> list[str]:
        found = node.real(self.c).leftovers()
        found += [f"network namespace {node.netns}"] if node.netns_path.exists() else []
        found += [f"link {node.host_veth}"] if Path("/sys/class/net", node.host_veth).exists() else []
        return found

    def leftovers(self) -> list[str]:
        """What of the netns nodes is still on the host: empty after a clean ``teardown``."""
        found = [f for node in self.nodes() for f in self._node_leftovers(node)]
        found += [f"network namespace {self.underlay}"] if self.underlay_path.exists() else []
        base = Path("/sys/fs/cgroup")
        for hierarchy in base.iterdir() if base.is_dir() else []:
            found += [f"cgroup {g}" for g in sorted(hierarchy.glob(f"lesson-scheduler-test-{NODE_PREFIX}*"))]
        found += [f"{self.rn.HOST_IPAM_DIR / d}" for d in self._new_ipam()]
        found += [f"process {pid}: {cmd}" for pid, cmd in self._processes()]
        return list(dict.fromkeys(found))

    def _processes(self) -> list[tuple[int, str]]:
        """Processes of the netns nodes, by what their command lines name: a node's state folder (containerd,
        its shims, the kubelet, the agent's kubeconfig) or namespace (the relays)."""
        marks = (str(self.root.resolve()) + "/", f"/run/netns/{self.c.NETNS_PREFIX}-node-")
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(mark in arg for arg in argv for mark in marks):
                found.append((int(proc.name), " ".join(argv)[:120]))
        return found

    def describe(self) -> list[str]:
        """Lines for `cluster.py status`."""
        lines = []
        for node in self.nodes():
            state = "up" if self._node_up(node) else "partly up or down"
            lines.append(f"{node.name}: {state} (namespace {node.netns}, {TUNNEL_LABEL}={node.address})")
        return lines


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetnsNodeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _listening(netns: Path | None, port: int) -> bool:
    argv = ["ss", "-Htln", f"sport = :{port}"]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    return bool(subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False).stdout.strip())
