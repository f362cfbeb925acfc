"""The test cluster's real node: containerd + runc + a kubelet, with Multus's thin plugin as its CNI.

Lesson pods land here and run as real containers (the kwok nodes are tainted, see cluster.py). What it
is made of, all private to the cluster's state folder (``.k8s/node``) unless said otherwise:

* a registry on loopback (go-containerregistry's ``crane registry serve``) that containerd uses as the
  mirror of ``docker.io`` and ``registry.k8s.io``: the busybox and pause images are built here from
  Debian's busybox-static and pushed with ``crane``, so a pull is a real pull and an unknown image is a
  real "not found";
* Debian's containerd with its own root, state, socket and config (CRI: ``restrict_oom_score_adj``, since
  processes here lack CAP_SYS_RESOURCE; network namespaces mounted under its state folder), and runc;
* a kubelet (cgroupfs driver under the cgroup ``/lesson-scheduler-test``, ``--cloud-provider=external``):
  it refuses a loopback node IP, so this script plays the cloud controller and sets the node's
  InternalIP to 127.0.0.1, which the API server dials with the cluster CA;
* Multus (thin plugin) as the node's CNI, the seed's ``1-multus-cni.conf`` shape: its default delegate is
  a bridge (``lsk8smain0``, standing in for weave) for ``eth0`` with no address on the host; the lesson
  NADs run the real bridge/host-local plugins;
* the kubelet's ``clusterDNS`` is the cluster DNS (``cluster_dns.py``), which sits on ``lsk8smain0`` at an
  address kept out of the pods' range.

The bridges and host-local files of the NADs live where a node keeps them: in the host's root network
namespace and under /var/lib/cni/networks. ``teardown`` removes every bridge and IPAM folder that was not
there when the node came up, with the containers, mounts and cgroups. Standard library only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

NODE_NAME = "real-node-0"
NODE_LABELS = {"type": "real", "lesson-scheduler.test/node": "real"}
MAIN_BRIDGE = "lsk8smain0"
MAIN_SUBNET = "10.246.0.0/16"
# host-local hands pods addresses from here on: 10.246.0.0/24 stays free for the cluster's own fixed
# addresses, which no pod can then be given.
MAIN_RANGE_START = "10.246.1.1"
# real-node-0's range ends here: 10.246.128.0 and up are the netns nodes' (netns_nodes.py), 8 /24s each.
MAIN_RANGE_END = "10.246.127.254"
# The cluster DNS (cluster_dns.py), the kubelet's clusterDNS: on the pods' network, outside their range.
CLUSTER_DNS = "10.246.0.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "/lesson-scheduler-test"
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
# The images the tests use, as a kubelet names them, and the registry's repository for each.
IMAGES = {
    "busybox": ("library/busybox", "latest", ["sh"], None),
    "pause": ("pause", "3.10", None, ["/bin/sleep", "infinity"]),
}
MIRRORED = ("docker.io", "registry.k8s.io")
CNI_PLUGINS = ("bridge", "host-local", "static", "loopback", "portmap")  # static: a split link's fixed addresses
HOST_CNI_DIR = Path("/usr/lib/cni")
HOST_IPAM_DIR = Path("/var/lib/cni/networks")
DEBIAN_BUSYBOX = Path("/bin/busybox")
COMPONENTS = ("registry", "containerd", "kubelet")
MULTUS_USER = "lesson-test:multus"


class NodeError(RuntimeError):
    pass


def missing_prerequisites() -> list[str]:
    """What the real node needs from the host and does not have."""
    missing = [
        f"`{tool}` (apt-get install {pkg})"
        for tool, pkg in (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"))
        if shutil.which(tool) is None
    ]
    if shutil.which("containerd-shim-runc-v2") is None and "containerd" not in " ".join(missing):
        missing.append("`containerd-shim-runc-v2` (apt-get install containerd)")
    if not _is_static_busybox(DEBIAN_BUSYBOX):
        missing.append(f"a static {DEBIAN_BUSYBOX} (apt-get install busybox-static)")
    missing += [
        f"{HOST_CNI_DIR / p} (apt-get install containernetworking-plugins)"
        for p in CNI_PLUGINS
        if not os.access(HOST_CNI_DIR / p, os.X_OK)
    ]
    return missing


def _is_static_busybox(path: Path) -> bool:
    try:
        out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True, check=False).stdout
    except OSError:  # no `file`: trust the ELF has no interpreter
        with contextlib.suppress(OSError):
            return b"/lib64/ld-linux" not in path.read_bytes()[:4096]
        return False
    return "statically linked" in out or "static-pie" in out


class RealNode:
    """Start and stop the node; ``cluster`` is cluster.py as a module (spawn, stop, wait_for, kubectl...)."""

    def __init__(
        self,
        cluster: Any,
        name: str = NODE_NAME,
        state: Path | None = None,
        cgroup_root: str = CGROUP_ROOT,
        netns: Path | None = None,
        labels: dict[str, str] | None = None,
        main_range: tuple[str, str] = (MAIN_RANGE_START, MAIN_RANGE_END),
        max_pods: int = 110,
    ) -> None:
        """The defaults are real-node-0 (the host's root network namespace); netns_nodes.py passes a node
        name, its own state folder and cgroup root, the network namespace its containerd and kubelet run
        in (``nsenter --net``), its labels, its share of the main delegate's host-local range, its maxPods."""
        self.c = cluster
        self.name = name
        self.state: Path = state if state is not None else cluster.STATE / "node"
        self.sock = self.state / "containerd" / "containerd.sock"
        self.cgroup_root = cgroup_root
        self.netns = netns
        self.labels = labels if labels is not None else NODE_LABELS
        self.main_range = main_range
        self.max_pods = max_pods
        # real-node-0 keeps its historical component, certificate and log names; other nodes suffix theirs
        suffix = "" if name == NODE_NAME else f"-{name}"
        self.containerd_c = f"containerd{suffix}"
        self.kubelet_c = f"kubelet{suffix}"
        self.kubelet_pki = f"kubelet{suffix}"
        self.node_pki = f"node{suffix}"
        self.multus_log = f"multus{suffix}.log"
        # what teardown unmounts and leftovers checks: all of .k8s for real-node-0 (as before), else its state
        self.mount_root: Path = cluster.STATE if name == NODE_NAME else self.state

    def _argv(self, argv: list[str]) -> list[str]:
        """``argv`` run in the node's network namespace, if it has one (same mount namespace: nsenter --net)."""
        return ["nsenter", f"--net={self.netns}", "--", *argv] if self.netns else argv

    # --- up ----------------------------------------------------------------------------------------------

    def up(self, bins: Path, ports: dict[str, int]) -> None:
        missing = missing_prerequisites()
        if missing:
            raise NodeError("the real node needs " + ", ".join(missing))
        # Its bridge and cgroup names are fixed (one real node per machine): refuse to share them with a
        # node that runs; remove what a node that died left.
        if _cgroup_processes(CGROUP_ROOT):
            raise NodeError(
                f"another test cluster's real node runs on this machine (processes in cgroup {CGROUP_ROOT}): "
                "run `make k8s-down` in its checkout first"
            )
        if MAIN_BRIDGE in _bridges():
            self.c.log(f"removing bridge {MAIN_BRIDGE}, left by a real node that is gone")
            subprocess.run(["ip", "link", "del", MAIN_BRIDGE], capture_output=True, timeout=30, check=False)
        _remove_cgroups(CGROUP_ROOT)
        self.state.mkdir(parents=True, exist_ok=True)
        self._snapshot_host()
        registry = f"127.0.0.1:{ports['registry']}"
        self._start_registry(bins, registry)
        self._push_images(bins, registry)
        self.start_node(bins, ports, registry)

    def start_node(self, bins: Path, ports: dict[str, int], registry: str) -> None:
        """CNI config, containerd, certificates, kubelet, then the node's addresses, untainted and Ready."""
        self.state.mkdir(parents=True, exist_ok=True)
        self._write_cni(bins)
        self._start_containerd(registry)
        self._make_node_pki()
        self._start_kubelet(bins, ports)
        self._initialise_node(ports)

    def _snapshot_host(self) -> None:
        """What the host had before the node: teardown removes only what is new since."""
        before = {"bridges": sorted(_bridges()), "ipam": sorted(_ipam_dirs())}
        (self.state / "host-before.json").write_text(json.dumps(before, indent=2) + "\n")

    def _start_registry(self, bins: Path, registry: str) -> None:
        self.c.log(f"registry (crane registry serve) on {registry}, the mirror of {', '.join(MIRRORED)}")
        blobs = self.state / "registry"
        blobs.mkdir(parents=True, exist_ok=True)
        self.c.spawn(
            "registry", [str(bins / "crane"), "registry", "serve", "--address", registry, "--disk", str(blobs)]
        )

        def answers() -> bool:
            with urllib.request.urlopen(f"http://{registry}/v2/", timeout=1) as r:
                return r.status == 200

        self.c.wait_for("the registry", answers, 30, "registry")

    def _push_images(self, bins: Path, registry: str) -> None:
        layer = self.state / "images" / "busybox-layer.tar"
        _busybox_layer(layer)
        env = {**os.environ, "HOME": str(self.state / "images")}  # crane's config (none) stays ours
        for name, (repo, tag, cmd, entrypoint) in IMAGES.items():
            ref = f"{registry}/{repo}:{tag}"
            self.c.log(f"image {name}: pushing {ref} (busybox-static, one layer)")
            _run([str(bins / "crane"), "append", "--platform=linux/amd64", "-f", str(layer), "-t", ref], env=env)
            mutate = [str(bins / "crane"), "mutate", ref, "-t", ref, "--env", "PATH=/bin"]
            if cmd:
                mutate += ["--cmd", ",".join(cmd)]
            if entrypoint:
                mutate += ["--entrypoint", ",".join(entrypoint)]
            _run(mutate, env=env)

    def _write_cni(self, bins: Path) -> None:
        cni_bin = self.state / "cni" / "bin"
        cni_bin.mkdir(parents=True, exist_ok=True)
        for plugin in CNI_PLUGINS:
            _symlink(HOST_CNI_DIR / plugin, cni_bin / plugin)
        _symlink(bins / "multus", cni_bin / "multus")
        conf_dir = self.state / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = self._client_kubeconfig("multus", MULTUS_USER)
        self._grant_multus()
        # The seed's 1-multus-cni.conf: Multus with one delegate for eth0 (weave there, a bridge with no
        # host address here) and the NADs' networks from the pod's annotation.
        conf = {
            "cniVersion": "0.3.1",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": str(kubeconfig),
            "binDir": str(cni_bin),
            "cniDir": str(self.state / "cni" / "multus-cache"),
            "logFile": str(self.c.STATE / "logs" / self.multus_log),
            "logLevel": "error",
            "delegates": [
                {
                    "cniVersion": "0.3.1",
                    "name": "main",
                    "type": "bridge",
                    "bridge": MAIN_BRIDGE,
                    "isGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "subnet": MAIN_SUBNET,
                        "rangeStart": self.main_range[0],
                        "rangeEnd": self.main_range[1],
                        "dataDir": str(self.state / "ipam"),
                    },
                }
            ],
        }
        (conf_dir / "00-multus.conf").write_text(json.dumps(conf, indent=2) + "\n")

    def _grant_multus(self) -> None:
        """Multus's own ClusterRole (deployments/multus-daemonset.yml), bound to the node's Multus user."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "lesson-test-multus"},
            "rules": [
                {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": [""], "resources": ["pods", "pods/status"], "verbs": ["get", "update"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "lesson-test-multus"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lesson-test-multus"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": MULTUS_USER}],
        }
        self.c.kubectl(
            "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]})
        )

    def _containerd_config(self, registry: str) -> Path:
        root = self.state / "containerd"
        hosts = root / "certs.d"
        for upstream in MIRRORED:
            (hosts / upstream).mkdir(parents=True, exist_ok=True)
            # `server` is the loopback registry: no fallback to the internet, so "not found" is final.
            (hosts / upstream / "hosts.toml").write_text(
                f'server = "http://{registry}"\n\n[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n'
            )
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        text = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
oom_score = 0

[grpc]
  address = "{self.sock}"

[ttrpc]
  address = "{self.sock}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

{cri}
  sandbox_image = "{SANDBOX_IMAGE}"
  # processes here lack CAP_SYS_RESOURCE: a negative oom_score_adj (-998 for sandboxes) is refused
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri[:-1]}.containerd.runtimes.runc.options]
  SystemdCgroup = false

{cri[:-1]}.cni]
  bin_dir = "{self.state / "cni" / "bin"}"
  conf_dir = "{self.state / "cni" / "net.d"}"
  max_conf_num = 1

{cri[:-1]}.registry]
  config_path = "{hosts}"
"""
        path = root / "config.toml"
        path.write_text(text)
        return path

    def _start_containerd(self, registry: str) -> None:
        config = self._containerd_config(registry)
        where = f", in network namespace {self.netns.name}" if self.netns else ""
        self.c.log(f"containerd (Debian's, private root and socket {self.sock}{where})")
        self.c.spawn(self.containerd_c, self._argv(["containerd", "--config", str(config)]))
        ok = lambda: self._ctr("version").returncode == 0  # noqa: E731
        self.c.wait_for(f"{self.containerd_c}'s socket", ok, 30, self.containerd_c)

    def _ctr(self, *args: str, namespace: str = "k8s.io") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.sock), "--namespace", namespace, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _make_node_pki(self) -> None:
        # the kubelet's serving certificate, for the address the API server dials (127.0.0.1)
        self.c.sign(self.kubelet_pki, f"/CN={self.name}", "serverAuth", f"IP:127.0.0.1,DNS:{self.name}")
        # the kubelet's client identity, which the Node authorizer and NodeRestriction know
        self.c.sign(self.node_pki, f"/O=system:nodes/CN=system:node:{self.name}", "clientAuth", None)

    def _client_kubeconfig(self, name: str, user: str) -> Path:
        pki = self.c.STATE / "pki"
        if not (pki / f"{name}.crt").exists():
            self.c.sign(name, f"/CN={user}", "clientAuth", None)
        port = json.loads((self.c.STATE / "ports.json").read_text())["apiserver"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lesson-test",
                    "cluster": {"server": f"https://127.0.0.1:{port}", "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": name,
                    "user": {"client-certificate": str(pki / f"{name}.crt"), "client-key": str(pki / f"{name}.key")},
                }
            ],
            "contexts": [{"name": "lesson-test", "context": {"cluster": "lesson-test", "user": name}}],
            "current-context": "lesson-test",
        }
        path = self.state / f"{name}.kubeconfig"
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        return path

    def _start_kubelet(self, bins: Path, ports: dict[str, int]) -> None:
        pki = self.c.STATE / "pki"
        kubeconfig = self._client_kubeconfig(self.node_pki, f"system:node:{self.name}")
        root = self.state / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        _make_cgroups(self.cgroup_root)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports["kubelet_healthz"],
            "tlsCertFile": str(pki / f"{self.kubelet_pki}.crt"),
            "tlsPrivateKeyFile": str(pki / f"{self.kubelet_pki}.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "podLogsDir": str(self.state / "pod-logs"),
            "volumePluginDir": str(self.state / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            # pods (dnsPolicy ClusterFirst) get the cluster DNS and the search list <ns>.svc.cluster.local
            # svc.cluster.local cluster.local, not the host's nameservers
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "serializeImagePulls": False,
            "registerNode": True,
            "maxPods": self.max_pods,
            "makeIPTablesUtilChains": False,
            # a shared build machine: never evict test pods for disk or memory the tests do not use
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "shutdownGracePeriod": "0s",
        }
        path = self.state / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        where = f" in network namespace {self.netns.name}" if self.netns else ""
        port = ports["kubelet"]
        self.c.log(f"kubelet for node {self.name} on 127.0.0.1:{port}{where} (cgroup {self.cgroup_root})")
        self.c.spawn(
            self.kubelet_c,
            self._argv(
                [
                    str(bins / "kubelet"),
                    f"--config={path}",
                    f"--kubeconfig={kubeconfig}",
                    f"--root-dir={root}",
                    f"--cert-dir={self.state / 'kubelet-pki'}",
                    f"--hostname-override={self.name}",
                    "--cloud-provider=external",
                    f"--node-labels={labels}",
                    "--v=1",
                ]
            ),
        )

        def registered() -> bool:
            return self.c.kubectl("get", "node", self.name, check=False).returncode == 0

        self.c.wait_for(f"node {self.name} to register", registered, 90, self.kubelet_c)

    def _initialise_node(self, ports: dict[str, int]) -> None:
        """What a cloud-node controller does for --cloud-provider=external: addresses, then untaint."""
        self.c.log(f"node {self.name}: InternalIP 127.0.0.1 (as a cloud controller would), removing its taint")
        patch = {
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.name},
                ]
            }
        }
        self.c.kubectl("patch", "node", self.name, "--subresource=status", "--type=merge", "-p", json.dumps(patch))
        self.c.kubectl("taint", "node", self.name, "node.cloudprovider.kubernetes.io/uninitialized-", check=False)

        def ready() -> bool:
            node = json.loads(self.c.kubectl("get", "node", self.name, "-o", "json").stdout)
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = [t["key"] for t in node["spec"].get("taints", [])]
            return conds.get("Ready") == "True" and not taints and bool(node["status"].get("addresses"))

        self.c.wait_for(f"node {self.name} Ready and untainted", ready, 120, self.kubelet_c)

    # --- down --------------------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every container, mount, cgroup, bridge and IPAM file of the node; safe to call twice."""
        if not self.state.exists():
            return
        self.stop_node()
        self.c.stop("registry")
        _unmount_under(self.mount_root)
        _remove_cgroups(self.cgroup_root)
        self._remove_host_leftovers()
        _remove_container_log_links(self.state / "pod-logs")

    def stop_node(self) -> None:
        """The node's pods (deleted through the API: the kubelet stops them, CNI DEL runs), its kubelet, its
        containers, containerd and any shim still holding its socket."""
        self.delete_pods()
        self.stop_runtime()

    def delete_pods(self) -> None:
        if self.c.recorded(self.kubelet_c) and self.c.api_ready():
            # the kubelet stops the pods itself: CNI DEL runs, IPAM leases are released
            self.c.kubectl(
                "delete",
                "pods",
                "--all-namespaces",
                f"--field-selector=spec.nodeName={self.name}",
                "--grace-period=1",
                "--wait=true",
                "--timeout=60s",
                check=False,
            )

    def stop_runtime(self) -> None:
        self.c.stop(self.kubelet_c)
        if self.c.recorded(self.containerd_c):
            self._remove_containers()
        self.c.stop(self.containerd_c)
        self._kill_shims()

    def leftovers(self) -> list[str]:
        """What of the node is still on the host: empty after a clean ``down``."""
        found = [f"containerd shim {pid}" for pid in self._shims()]
        prefix = str(self.mount_root.resolve()) + "/"
        found += [f"mount {m}" for m in _mounts() if m.startswith(prefix)]
        base = Path("/sys/fs/cgroup")
        found += [
            f"cgroup {h / self.cgroup_root.lstrip('/')}"
            for h in (base.iterdir() if base.is_dir() else [])
            if (h / self.cgroup_root.lstrip("/")).is_dir()
        ]
        try:
            before = json.loads((self.state / "host-before.json").read_text())
        except (OSError, ValueError):
            return found
        found += [f"bridge {b}" for b in sorted(_bridges() - set(before["bridges"]))]
        found += [f"{HOST_IPAM_DIR / d}" for d in sorted(_ipam_dirs() - set(before["ipam"]))]
        return found

    def _remove_containers(self) -> None:
        for ns in ("k8s.io", "default"):
            ids = self._ctr("containers", "list", "-q", namespace=ns).stdout.split()
            for cid in ids:
                self._ctr("tasks", "kill", "--signal", "SIGKILL", cid, namespace=ns)
            for cid in ids:
                self._ctr("tasks", "delete", "--force", cid, namespace=ns)
                self._ctr("containers", "delete", cid, namespace=ns)

    def _shims(self) -> list[int]:
        """Shims outlive containerd by design; ours are those whose command line names our socket."""
        ours, pids = str(self.sock).encode(), []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and ours in argv:
                pids.append(int(proc.name))
        return pids

    def _kill_shims(self) -> None:
        for pid in self._shims():
            self.c.log(f"killing containerd shim {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)

    def _remove_host_leftovers(self) -> None:
        try:
            before = json.loads((self.state / "host-before.json").read_text())
        except (OSError, ValueError):
            before = {"bridges": [], "ipam": []}
        for bridge in sorted(_bridges() - set(before["bridges"])):
            self.c.log(f"removing bridge {bridge} (made on the node)")
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30, check=False)
        for folder in sorted(_ipam_dirs() - set(before["ipam"])):
            shutil.rmtree(HOST_IPAM_DIR / folder, ignore_errors=True)


# --- host helpers ---------------------------------------------------------------------------------------


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    if proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _symlink(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _busybox_layer(path: Path) -> None:
    """One layer: Debian's static busybox as /bin/busybox plus a link per applet, and the usual folders."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    applets = subprocess.run([str(DEBIAN_BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for folder, mode in (
            ("bin", 0o755),
            ("etc", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("var", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
        ):
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(info)
        info = tar.gettarinfo(str(DEBIAN_BUSYBOX), "bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        with DEBIAN_BUSYBOX.open("rb") as f:
            tar.addfile(info, f)
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def _bridges() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=False)
    try:
        return {link["ifname"] for link in json.loads(out.stdout or "[]")}
    except ValueError:
        return set()


def _ipam_dirs() -> set[str]:
    return {p.name for p in HOST_IPAM_DIR.iterdir()} if HOST_IPAM_DIR.is_dir() else set()


def _unmount_under(root: Path) -> None:
    """Every mount under ``root`` (overlay rootfs, shm, netns, tmpfs volumes), deepest first."""
    prefix = str(root.resolve()) + "/"
    for _ in range(3):
        mounts = [m for m in _mounts() if m.startswith(prefix)]
        if not mounts:
            return
        for point in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def _make_cgroups(root: str) -> None:
    """The kubelet's cgroup root in every v1 hierarchy (it must exist); cpuset gets its parent's CPUs and
    memory nodes, which a new v1 cpuset does not inherit."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in sorted(base.iterdir()):
        if not hierarchy.is_dir() or hierarchy.is_symlink() or not (hierarchy / "cgroup.procs").exists():
            continue
        top = hierarchy / root.lstrip("/")
        top.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / name).exists() and not (top / name).read_text().strip():
                (top / name).write_text((hierarchy / name).read_text())


def _mounts() -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            points.append(line.split()[4].replace("\\040", " "))
    return points


def _cgroup_processes(root: str) -> bool:
    """Whether any process lives in the cgroup tree ``root`` of the pids hierarchy."""
    top = Path("/sys/fs/cgroup/pids") / root.lstrip("/")
    for dirpath, _dirs, _files in os.walk(top):
        with contextlib.suppress(OSError):
            if (Path(dirpath) / "cgroup.procs").read_text().strip():
                return True
    return False


def _remove_cgroups(root: str) -> None:
    """The kubelet's cgroup tree in every v1 hierarchy, leaves first (empty once the shims are gone)."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in base.iterdir() if base.is_dir() else []:
        top = hierarchy / root.lstrip("/")
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            for _ in range(20):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _remove_container_log_links(pod_logs: Path) -> None:
    """The kubelet links /var/log/containers/*.log to its pod logs (a fixed path); drop links to ours."""
    folder = Path("/var/log/containers")
    for link in folder.glob("*.log") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs)):
                link.unlink()
