"""The test cluster's DNS: CoreDNS on the real node's pod network, in a network namespace of ours.

Pods on the real node get ``nameserver 10.246.0.10`` and the search list ``<ns>.svc.cluster.local
svc.cluster.local cluster.local`` from the kubelet (``clusterDNS``, ``clusterDomain``); CoreDNS's
``kubernetes`` plugin answers for ``cluster.local`` from the API server's Services and EndpointSlices (a
headless Service's name is its ready, or with ``publishNotReadyAddresses`` every, pod address). Nothing
else is answered: there is no ``forward``, so no query leaves the machine.

Where it lives, and why there:

* the network namespace ``<NETNS_PREFIX>-dns`` (``k8sagent-dns``), joined to the pods' bridge
  ``lsk8smain0`` by a veth: ``lsk8sdns0`` in the root namespace (a bridge port with no address, not even
  an IPv6 link-local one) and ``eth0`` in ours, with the fixed address 10.246.0.10/16. The main delegate's
  host-local range starts at 10.246.1.1 (``real_node.MAIN_RANGE_START``), so no pod is ever given it.
  The host's root namespace gets no address on the pods' network: a pod reaches the DNS and nothing of
  the host;
* CoreDNS runs inside that namespace (``nsenter --net``) and listens on 10.246.0.10:53 only (``bind``);
  its health and readiness endpoints are on the namespace's own loopback;
* it reaches the API server, which listens on 127.0.0.1 of the root namespace, through a TCP relay
  (``relay`` below, run as ``cluster_dns.py relay``) whose listening socket is on 127.0.0.1 *inside* the
  DNS namespace, at the API server's port, and whose outgoing connections are made in the root one. TLS
  passes through untouched: CoreDNS checks the API server's certificate (it names 127.0.0.1) against the
  cluster CA and authenticates with a client certificate ``lesson-test:coredns``, which RBAC lets list
  and watch Services, EndpointSlices and Namespaces, and nothing more.

``down`` stops CoreDNS and the relay by PID (cluster.py's pidfiles), deletes the namespace (its veth pair
goes with it) and ``leftovers`` reports anything of it still on the host. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, cast

# the root namespace's end of the veth, a port of real_node.MAIN_BRIDGE
HOST_VETH = "lsk8sdns0"
COMPONENTS = ("dns-relay", "coredns")
COREDNS_USER = "lesson-test:coredns"
# inside the DNS namespace, on its own loopback
HEALTH_PORT = 8080
READY_PORT = 8181
CLONE_NEWNET = 0x40000000


class DNSError(RuntimeError):
    pass


class ClusterDNS:
    """Start and stop the DNS; ``cluster`` is cluster.py as a module (spawn, stop, sign, kubectl, ...)."""

    def __init__(self, cluster: Any) -> None:
        self.c = cluster
        self.state: Path = cluster.STATE / "dns"
        self.netns = f"{cluster.NETNS_PREFIX}-dns"
        self.netns_path = Path("/run/netns") / self.netns
        self.bridge: str = cluster.real_node.MAIN_BRIDGE
        self.prefix_len = cluster.real_node.MAIN_SUBNET.split("/")[1]
        self.address: str = cluster.real_node.CLUSTER_DNS
        self.domain: str = cluster.real_node.CLUSTER_DOMAIN

    # --- up ----------------------------------------------------------------------------------------------

    def up(self, bins: Path, ports: dict[str, int]) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self._network()
        self._grant()
        kubeconfig = self._kubeconfig(ports["apiserver"])
        corefile = self._corefile(kubeconfig)
        self.c.log(f"cluster DNS: relay to the API server on 127.0.0.1:{ports['apiserver']} inside {self.netns}")
        self.c.spawn(
            "dns-relay",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "relay",
                f"--netns={self.netns_path}",
                f"--port={ports['apiserver']}",
                f"--target-port={ports['apiserver']}",
            ],
        )
        self.c.wait_for("the DNS relay", lambda: self._listening(ports["apiserver"]), 15, "dns-relay")
        self.c.log(f"cluster DNS: CoreDNS on {self.address}:53 in {self.netns}, zone {self.domain}")
        self.c.spawn(
            "coredns",
            ["nsenter", f"--net={self.netns_path}", "--", str(bins / "coredns"), "-conf", str(corefile)],
        )
        self.c.wait_for("CoreDNS ready (its informers synced)", self.ready, 60, "coredns")
        self.c.wait_for("CoreDNS answering kubernetes.default", self.answers, 30, "coredns")

    def _network(self) -> None:
        if self.netns_path.exists():  # left by a cluster that died
            self.c.log(f"removing network namespace {self.netns}, left by a cluster that is gone")
            _ip("netns", "del", self.netns, check=False)
        if _link_exists(HOST_VETH):
            _ip("link", "del", HOST_VETH, check=False)
        if not _link_exists(self.bridge):
            # The bridge plugin makes it at the first pod; made now, for the DNS's port, with the same
            # settings (it uses a bridge that exists). No IPv6 link-local address: the host has none there.
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "addrgenmode", "none")
            _ip("link", "set", self.bridge, "up")
        self.c.log(f"cluster DNS: namespace {self.netns}, {self.address}/{self.prefix_len} on {self.bridge}")
        _ip("netns", "add", self.netns)
        _ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _ip("link", "set", HOST_VETH, "addrgenmode", "none")
        _ip("link", "set", HOST_VETH, "master", self.bridge)
        _ip("link", "set", HOST_VETH, "up")
        _ip("link", "set", "lo", "up", netns=self.netns)
        _ip("addr", "add", f"{self.address}/{self.prefix_len}", "dev", "eth0", netns=self.netns)
        _ip("link", "set", "eth0", "up", netns=self.netns)

    def _grant(self) -> None:
        """Least privilege for the kubernetes plugin: list and watch what it serves names from."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "lesson-test-coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "lesson-test-coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lesson-test-coredns"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}],
        }
        self.c.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]})
        )

    def _kubeconfig(self, api_port: int) -> Path:
        pki = self.c.STATE / "pki"
        if not (pki / "coredns.crt").exists():
            self.c.sign("coredns", f"/CN={COREDNS_USER}", "clientAuth", None)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    # the relay's port inside the DNS namespace is the API server's own
                    "name": "lesson-test",
                    "cluster": {
                        "server": f"https://127.0.0.1:{api_port}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "coredns",
                    "user": {"client-certificate": str(pki / "coredns.crt"), "client-key": str(pki / "coredns.key")},
                }
            ],
            "contexts": [{"name": "lesson-test", "context": {"cluster": "lesson-test", "user": "coredns"}}],
            "current-context": "lesson-test",
        }
        path = self.state / "coredns.kubeconfig"
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def _corefile(self, kubeconfig: Path) -> Path:
        path = self.state / "Corefile"
        path.write_text(f"""# The test cluster's DNS (tests/k8s/machinery/cluster_dns.py). Only {self.domain}: no
# forward, so any other name is refused and no query leaves the machine.
{self.domain}:53 {{
    bind {self.address}
    errors
    log
    health 127.0.0.1:{HEALTH_PORT}
    ready 127.0.0.1:{READY_PORT}
    kubernetes {self.domain} {{
        kubeconfig {kubeconfig} lesson-test
        pods disabled
        ttl 5
    }}
}}
""")
        return path

    # --- checks ------------------------------------------------------------------------------------------

    def _in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` run in the DNS namespace (the root namespace cannot reach anything in it)."""
        argv = ("nsenter", f"--net={self.netns_path}", "--", *argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)

    def _listening(self, port: int) -> bool:
        return bool(self._in_netns("ss", "-Htln", f"sport = :{port}").stdout.strip())

    def ready(self) -> bool:
        """CoreDNS's ready plugin: the kubernetes plugin has synced its informers."""
        busybox = str(self.c.real_node.DEBIAN_BUSYBOX)
        url = f"http://127.0.0.1:{READY_PORT}/ready"
        return self._in_netns(busybox, "wget", "-q", "-O", "/dev/null", url).returncode == 0

    def answers(self) -> bool:
        """A real query, from inside the namespace: the API server's own Service has a name."""
        name = f"kubernetes.default.svc.{self.domain}"
        out = self._in_netns(str(self.c.real_node.DEBIAN_BUSYBOX), "nslookup", name, self.address)
        return out.returncode == 0 and "10.96.0.1" in out.stdout

    def describe(self) -> str:
        """One line for `cluster.py status`."""
        if not self.netns_path.exists():
            return "not running"
        state = "ready" if self.ready() and self.answers() else "not ready"
        return f"{state}: CoreDNS on {self.address}:53 ({self.domain}) in network namespace {self.netns}"

    # --- down --------------------------------------------------------------------------------------------

    def down(self) -> None:
        for name in reversed(COMPONENTS):
            self.c.stop(name)
        if self.netns_path.exists():
            self.c.log(f"removing network namespace {self.netns} (and its veth {HOST_VETH})")
            _ip("netns", "del", self.netns, check=False)
        if _link_exists(HOST_VETH):
            _ip("link", "del", HOST_VETH, check=False)

    def leftovers(self) -> list[str]:
        """What of the DNS is still on the host: empty after a clean ``down``."""
        found = [f"network namespace {self.netns}"] if self.netns_path.exists() else []
        found += [f"link {HOST_VETH}"] if _link_exists(HOST_VETH) else []
        found += [f"{what} process {pid}" for pid, what in self._processes()]
        return found

    def _processes(self) -> list[tuple[int, str]]:
        """CoreDNS and relay processes of this cluster, found by what their command lines name: CoreDNS's
        Corefile, the relay's namespace."""
        marks = {str(self.state / "Corefile").encode(): "coredns", f"--netns={self.netns_path}".encode(): "relay"}
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            found += [(int(proc.name), what) for mark, what in marks.items() if mark in argv]
        return found


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise DNSError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


# --- the relay --------------------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def relay(netns: Path | None, port: int, target_port: int, connect_netns: Path | None = None) -> None:
    """Accept on 127.0.0.1:``port`` inside ``netns``; for each connection, connect to 127.0.0.1:``target_port``
    inside ``connect_netns`` and copy bytes both ways. Either namespace may be left out: it is then the one
    this process started in (the root one). The DNS's relay listens in its namespace and connects in the
    root one; a netns node's kubelet relay (netns_nodes.py) listens in the root one and connects in the node's.

    A socket belongs to the network namespace its thread was in when it was made: the listener is made
    after setns into ``netns``; then the process moves to ``connect_netns`` (or returns to its own), where
    every outgoing connection is made (each worker thread also enters it itself, setns being per thread).
    Nothing listens anywhere else."""
    with open("/proc/self/ns/net", "rb") as home:
        home_id = os.readlink("/proc/self/ns/net")
        if netns is not None:
            with open(netns, "rb") as theirs:
                _setns(theirs.fileno())
        try:
            server = socket.create_server(("127.0.0.1", port), backlog=64)
        finally:
            _setns(home.fileno())
        if os.readlink("/proc/self/ns/net") != home_id:
            raise OSError("the relay did not return to its own network namespace")
    connect_fd = os.open(connect_netns, os.O_RDONLY) if connect_netns is not None else None
    if connect_fd is not None:
        _setns(connect_fd)
    here = str(netns) if netns is not None else "this namespace"
    there = str(connect_netns) if connect_netns is not None else "this namespace"
    print(f"relay: 127.0.0.1:{port} in {here} -> 127.0.0.1:{target_port} in {there}", flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_pipe, args=(client, target_port, connect_fd), daemon=True).start()


def _pipe(client: socket.socket, target_port: int, connect_fd: int | None = None) -> None:
    try:
        if connect_fd is not None:  # per thread; a new thread inherits it from the main one anyway
            _setns(connect_fd)
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
    except OSError as exc:
        print(f"relay: cannot reach 127.0.0.1:{target_port}: {exc}", flush=True)
        client.close()
        return
    upstream.settimeout(None)
    with client, upstream, selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        open_ends = 2
        with contextlib.suppress(OSError):
            while open_ends:
                for key, _ in sel.select():
                    source = cast(socket.socket, key.fileobj)
                    sink = cast(socket.socket, key.data)
                    data = source.recv(65536)
                    if data:
                        sink.sendall(data)
                    else:  # half-close: pass the end of stream on, keep the other direction
                        sel.unregister(source)
                        sink.shutdown(socket.SHUT_WR)
                        open_ends -= 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("relay", help="the TCP relay from the DNS namespace's loopback to the API server")
    r.add_argument("--netns", type=Path, help="where to listen (default: this process's namespace)")
    r.add_argument("--connect-netns", type=Path, help="where to connect (default: this process's namespace)")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--target-port", type=int, required=True)
    args = parser.parse_args(argv[1:])
    relay(args.netns, args.port, args.target_port, args.connect_netns)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
