#!/usr/bin/env python3
"""Start and stop the test Kubernetes cluster: a real control plane with kwok nodes, all on loopback.

    cluster.py up       start etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the kwok
                        controller, the real node, the cluster DNS and the node agent in the background;
                        write .k8s/kubeconfig; create the kwok nodes; install config/k8s/*.yaml. Does
                        nothing if it is already up.
    cluster.py down     stop everything by PID, undo the DNS's and the agent's network namespaces,
                        remove .k8s/.
    cluster.py status   exit 0 if the cluster is up and answering (and say whether the DNS answers).
    cluster.py nodes-up [--count N] [--max-pods M]
                        start real nodes netns-node-1..N, each in a network namespace of ours (see
                        netns_nodes.py); the cluster must be up. Nodes already up are left as they are.
    cluster.py nodes-down
                        stop every netns node and the underlay; exit 1 if anything of them is left.

The binaries come from `make k8s-tools` (tests/k8s/machinery/build-tools.sh); nothing is downloaded here.
Standard library only, so any python3 can run it; the node agent runs with the project's venv.

Environment: LESSON_K8S_STATE (default <repo>/.k8s), LESSON_K8S_NODES (default 3),
LESSON_K8S_NETNS_PREFIX (default k8sagent), K8S_BIN_DIR (default from versions.sh).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
STATE = Path(os.environ.get("LESSON_K8S_STATE") or REPO / ".k8s").resolve()
MARKER = STATE / ".lesson-scheduler-test-cluster"
NODES = int(os.environ.get("LESSON_K8S_NODES", "3"))
NETNS_PREFIX = os.environ.get("LESSON_K8S_NETNS_PREFIX", "k8sagent")
NODE_PREFIX = "kwok-node-"
# The pod network namespace's name reaches the wrapper commands through this variable (per-pod Exec).
NETNS_ENV = "LESSON_K8S_NETNS"
# Commands that `kubectl exec` can run in a wired pod. kwok resolves cmd[0] on its own PATH, which is
# only the wrapper directory: anything else is "not found" instead of running in the root namespace. No
# shell: nothing needs one, and a shell turns any gap in the confinement below into arbitrary commands.
WRAPPED = ("ping", "ip", "ss", "cat", "ls", "hostname", "sleep", "true", "arp", "nc", "tcpdump")
REAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each wrapped command runs confined, as a container's process would: in the pod's network namespace, as
# nobody, with no supplementary groups, no_new_privs, and CAP_NET_RAW (ping, tcpdump) as its only
# capability (bounding, permitted, effective and ambient sets). Without CAP_SYS_ADMIN it cannot enter
# another namespace (`nsenter --net=/proc/1/ns/net`, `ip netns attach/exec`), without CAP_NET_ADMIN it
# cannot move links to the host, and as nobody it cannot read root's files (/proc/1/environ, the
# cluster's keys). Its PATH holds links to the wrapped commands only.
CONFINED_UID = 65534
CONFINED_CAPS = "net_raw"


def _sibling(name: str):  # loaded by path: this file runs as a script and is loaded by path by the tests
    spec = importlib.util.spec_from_file_location(f"lesson_test_k8s_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


real_node = _sibling("real_node")
cluster_dns = _sibling("cluster_dns")
netns_nodes = _sibling("netns_nodes")
# Start order; `down` stops in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    *real_node.COMPONENTS,
    *cluster_dns.COMPONENTS,
    "node-agent",
)
# The kwok nodes carry this taint, so lesson pods land on the real node; tests that want kwok's many
# nodes (spreading, unschedulable cases) tolerate it.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}


def node():  # the real node, with this module's helpers (spawn, stop, kubectl, sign, ...)
    return real_node.RealNode(types.SimpleNamespace(**globals()))


def dns():  # the cluster DNS (CoreDNS in a network namespace of ours), with the same helpers
    return cluster_dns.ClusterDNS(types.SimpleNamespace(**globals()))


def netns():  # the real nodes in network namespaces of ours (`nodes-up`), with the same helpers
    return netns_nodes.NetnsNodes(types.SimpleNamespace(**globals()))


SERVICE_CIDR = "10.96.0.0/16"


def log(msg: str) -> None:
    print(f"[k8s {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ClusterError(RuntimeError):
    pass


# --- binaries and versions ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The pins of versions.sh, read by bash itself so there is one source of truth."""
    script = (
        f'source "{HERE / "versions.sh"}"; printf "%s\\n" "$K8S_VERSION" "$K8S_TOOLS_DIR" "$K8S_BIN_DIR" "$K8S_STAMP"'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    return dict(zip(("version", "tools_dir", "bin_dir", "stamp"), out, strict=True))


def bin_dir() -> Path:
    return Path(versions()["bin_dir"])


def missing_binaries() -> list[str]:
    v = versions()
    tools = Path(v["tools_dir"])
    names = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "etcd",
        "kwok",
        "multus",
        "crane",
        "coredns",
    ]
    missing = [n for n in names if not os.access(Path(v["bin_dir"]) / n, os.X_OK)]
    missing += [f"share/kwok/{f}" for f in ("stages.yaml", "crds.yaml") if not (tools / "share/kwok" / f).is_file()]
    return missing


def agent_python() -> str:
    venv = REPO / ".venv/bin/python"
    return str(venv) if venv.exists() else sys.executable


# --- processes --------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return fields[19]  # field 22, starttime


def _pidfile(name: str) -> Path:
    return STATE / "run" / f"{name}.pid"


def recorded(name: str) -> int | None:
    """The PID of component ``name`` if the very process this script started still runs."""
    try:
        pid_s, start = _pidfile(name).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if _start_time(pid) == start else None


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=STATE,
            env=env if env is not None else os.environ.copy(),
            start_new_session=True,
        )
    start = None
    for _ in range(50):
        start = _start_time(proc.pid)
        if start:
            break
        time.sleep(0.01)
    _pidfile(name).parent.mkdir(parents=True, exist_ok=True)
    _pidfile(name).write_text(f"{proc.pid} {start}\n")
    return proc.pid


def stop(name: str, timeout: float = 15.0) -> None:
    pid = recorded(name)
    if pid is not None:
        log(f"stopping {name} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and recorded(name) == pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if recorded(name) == pid:
            log(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _pidfile(name).unlink(missing_ok=True)


def tail(name: str, lines: int = 25) -> str:
    try:
        return "\n".join((STATE / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(what: str, check, timeout: float, component: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if component and recorded(component) is None:
            raise ClusterError(f"{component} exited while waiting for {what}; its log ends:\n{tail(component)}")
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    detail = f" (last error: {last})" if last else ""
    more = f"; {component}'s log ends:\n{tail(component)}" if component else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{more}")


# --- configuration ----------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], cwd=STATE / "pki", check=True, capture_output=True)


def make_pki() -> None:
    pki = STATE / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=lesson-scheduler-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    # One key and certificate for every component, as kwokctl does: the API server's serving cert (every
    # name and address it is reached by), the admin's client cert (system:masters), the kwok server's cert.
    sign(
        "admin",
        "/O=system:masters/CN=kube-admin",
        "serverAuth,clientAuth",
        "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
    )
    for key in pki.glob("*.key"):  # root's alone: an exec'd command (confined to nobody) must not read them
        key.chmod(0o600)


def sign(name: str, subject: str, usage: str, san: str | None) -> None:
    """A key and a certificate ``name``.crt for ``subject`` in .k8s/pki, signed by the cluster CA."""
    pki = STATE / "pki"
    ext = f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
    if san:
        ext += f"subjectAltName={san}\n"
    (pki / f"{name}.ext").write_text(ext)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")  # fmt: skip
    (pki / f"{name}.key").chmod(0o600)


def write_kubeconfig(api_port: int) -> Path:
    pki = STATE / "pki"

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lesson-test",
                "cluster": {"server": f"https://127.0.0.1:{api_port}", "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": "lesson-test", "context": {"cluster": "lesson-test", "user": "admin"}}],
        "current-context": "lesson-test",
    }
    path = STATE / "kubeconfig"
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    path.chmod(0o600)
    return path


def write_wrappers() -> Path:
    wrappers = STATE / "wrappers"
    wrappers.mkdir(parents=True, exist_ok=True)
    # what a confined command finds on its PATH: the real wrapped commands, nothing else
    confined = STATE / "confined-path"
    confined.mkdir(parents=True, exist_ok=True)
    for name in WRAPPED:
        real = shutil.which(name, path=REAL_PATH)
        link = confined / name
        if real is not None and not link.is_symlink():
            link.symlink_to(real)
    for stale in wrappers.iterdir():  # a wrapper no longer in WRAPPED (sh, bash) goes
        if stale.is_symlink() and stale.name not in WRAPPED:
            stale.unlink()
    caps = ",".join(f"+{c}" for c in CONFINED_CAPS.split(","))
    script = wrappers / "netns-exec"
    script.write_text(f"""#!/bin/sh
# `kubectl exec POD -- CMD` on a kwok node: the kwok controller runs CMD from this directory, with the
# env of the pod's Exec resource (written by tests/k8s/machinery/node_agent.py). Run CMD in the pod's network
# namespace, never in the root one, and confined like a container's process: as nobody, no_new_privs,
# CAP_NET_RAW only, with a PATH of wrapped commands only.
PATH={REAL_PATH}
export PATH
name=${{0##*/}}
netns=${{{NETNS_ENV}:-}}
case "$netns" in
  "")
    echo "$name: this pod has no network namespace (the node agent wires pods that have" \
         "a k8s.v1.cni.cncf.io/networks annotation)" >&2
    exit 126 ;;
  */*|.*)
    echo "$name: bad network namespace name" >&2
    exit 126 ;;
esac
if [ ! -e "/run/netns/$netns" ]; then
  echo "$name: network namespace $netns is gone" >&2
  exit 126
fi
real=$(command -v "$name") || {{ echo "$name: not found" >&2; exit 127; }}
cd /
exec nsenter --net="/run/netns/$netns" -- \
  setpriv --reuid={CONFINED_UID} --regid={CONFINED_UID} --clear-groups \
          --inh-caps=-all,{caps} --ambient-caps=-all,{caps} --bounding-set=-all,{caps} --no-new-privs -- \
  env -i PATH={confined} LANG=C.UTF-8 "$real" "$@"
""")
    script.chmod(0o755)
    for name in WRAPPED:
        link = wrappers / name
        if not link.is_symlink():
            link.symlink_to("netns-exec")
    return wrappers


def kwok_config(tools_dir: Path) -> Path:
    share = tools_dir / "share/kwok"
    path = STATE / "kwok.yaml"
    path.write_text(
        # kwok's own defaults, spelled out: a KwokConfiguration without them gets zeros.
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n"
        "  enableDebuggingHandlers: true\n  enableContentionProfiling: false\n  enableProfilingHandler: false\n"
        "  podPlayStageParallelism: 4\n  nodePlayStageParallelism: 4\n  nodeLeaseParallelism: 4\n"
        "  podsOnNodeSyncParallelism: 1\n  enablePodsOnNodeSyncListPager: true\n"
        "  enablePodsOnNodeSyncStreamWatch: false\n---\n" + (share / "stages.yaml").read_text()
    )
    return path


def node_manifest(i: int) -> dict:
    name = f"{NODE_PREFIX}{i}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "spec": {"taints": [KWOK_TAINT]},
    }


# --- API checks -------------------------------------------------------------------------------------------


def _ssl_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(STATE / "pki/ca.crt"))
    ctx.load_cert_chain(str(STATE / "pki/admin.crt"), str(STATE / "pki/admin.key"))
    return ctx


def api_get(path: str, timeout: float = 2.0) -> bytes:
    port = json.loads((STATE / "ports.json").read_text())["apiserver"]
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=_ssl_context(), timeout=timeout) as r:
        return r.read()


def api_ready() -> bool:
    try:
        return api_get("/readyz") == b"ok"
    except Exception:
        return False


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir() / "kubectl"), f"--kubeconfig={STATE / 'kubeconfig'}", *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise ClusterError(f"`kubectl {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def is_up() -> bool:
    return MARKER.exists() and all(recorded(c) for c in COMPONENTS) and api_ready()


# --- up / down --------------------------------------------------------------------------------------------


def up() -> int:
    started = time.monotonic()
    if is_up():
        log(f"already up: KUBECONFIG={STATE / 'kubeconfig'}")
        return 0
    if MARKER.exists() and all(recorded(c) for c in COMPONENTS if c != "node-agent") and api_ready():
        log("the control plane runs but the node agent does not: restarting the agent")
        start_agent()
        log(f"up in {time.monotonic() - started:.1f}s: export KUBECONFIG={STATE / 'kubeconfig'}")
        return 0
    if STATE.exists():
        log(f"{STATE} holds a stopped or partial cluster: cleaning it first")
        down(quiet=True)
    missing = missing_binaries()
    if missing:
        raise ClusterError(f"missing {', '.join(missing)} in {versions()['tools_dir']}: run `make k8s-tools`")
    for tool in ("openssl", "nsenter", "setpriv", "ip", "ss"):
        if shutil.which(tool) is None:
            raise ClusterError(f"`{tool}` is not on PATH")
    node_missing = real_node.missing_prerequisites()
    if node_missing:
        raise ClusterError("the real node needs " + ", ".join(node_missing))
    v = versions()
    bins, tools = Path(v["bin_dir"]), Path(v["tools_dir"])
    STATE.mkdir(parents=True, exist_ok=True)
    MARKER.write_text(f"{v['stamp']}\n")
    try:
        _up(bins, tools)
    except BaseException:
        log("start failed: stopping what was started (logs kept in .k8s/logs until `make k8s-down`)")
        dns().down()
        node().down()
        for c in reversed(COMPONENTS):
            stop(c)
        raise
    log(f"up in {time.monotonic() - started:.1f}s: export KUBECONFIG={STATE / 'kubeconfig'}")
    return 0


def _up(bins: Path, tools: Path) -> None:
    names = (
        "etcd",
        "etcd_peer",
        "apiserver",
        "controller_manager",
        "scheduler",
        "kwok",
        "registry",
        "kubelet",
        "kubelet_healthz",
    )
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    (STATE / "ports.json").write_text(json.dumps(ports, indent=2) + "\n")
    make_pki()
    kubeconfig = write_kubeconfig(ports["apiserver"])
    pki = STATE / "pki"

    log(f"etcd on 127.0.0.1:{ports['etcd']}")
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    spawn(
        "etcd",
        [
            str(bins / "etcd"),
            "--name=node0",
            f"--data-dir={STATE / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--auto-compaction-retention=1",
            "--quota-backend-bytes=2147483648",
        ],
    )

    def etcd_ok() -> bool:
        with urllib.request.urlopen(f"{etcd_url}/health", timeout=1) as r:
            return json.loads(r.read()).get("health") == "true"

    wait_for("etcd", etcd_ok, 30, "etcd")

    log(f"kube-apiserver on 127.0.0.1:{ports['apiserver']}")
    spawn(
        "kube-apiserver",
        [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'admin.crt'}",
            f"--tls-private-key-file={pki / 'admin.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'admin.key'}",
            f"--service-account-signing-key-file={pki / 'admin.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The API server dials nodes (exec, logs) at their InternalIP, 127.0.0.1, on kwok's port; never by
            # a node's name, which would be a DNS lookup.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            # Front-proxy settings, so the controller-manager and scheduler find a complete
            # extension-apiserver-authentication ConfigMap.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'admin.crt'}",
            f"--proxy-client-key-file={pki / 'admin.key'}",
            "--profiling=false",
            "--v=1",
        ],
    )
    wait_for("kube-apiserver /readyz", api_ready, 90, "kube-apiserver")

    common = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        f"--tls-cert-file={pki / 'admin.crt'}",
        f"--tls-private-key-file={pki / 'admin.key'}",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        "--profiling=false",
        "--v=1",
    ]
    log(f"kube-controller-manager on 127.0.0.1:{ports['controller_manager']}")
    spawn(
        "kube-controller-manager",
        [
            str(bins / "kube-controller-manager"),
            *common,
            f"--secure-port={ports['controller_manager']}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'admin.key'}",
            "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--concurrent-namespace-syncs=5",
            "--concurrent-gc-syncs=20",
        ],
    )
    log(f"kube-scheduler on 127.0.0.1:{ports['scheduler']}")
    spawn("kube-scheduler", [str(bins / "kube-scheduler"), *common, f"--secure-port={ports['scheduler']}"])

    # kwok's Exec CRDs and the project's manifests go in before the kwok controller watches them.
    log("installing kwok's CRDs and config/k8s/*.yaml")
    kubectl("apply", "-f", str(tools / "share/kwok/crds.yaml"))
    install_manifests()

    wrappers = write_wrappers()
    log(f"kwok controller on 127.0.0.1:{ports['kwok']} (exec wrappers in {wrappers})")
    env = {k: val for k, val in os.environ.items() if k not in ("PATH", NETNS_ENV)}
    env["PATH"] = str(wrappers)
    spawn(
        "kwok",
        [
            str(bins / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={kwok_config(tools)}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--tls-cert-file={pki / 'admin.crt'}",
            f"--tls-private-key-file={pki / 'admin.key'}",
            "--node-ip=127.0.0.1",
            f"--node-port={ports['kwok']}",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
            "--enable-crds=Exec,ClusterExec",
            "--cidr=10.244.0.1/16",
        ],
        env=env,
    )

    log(f"creating {NODES} kwok nodes")
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [node_manifest(i) for i in range(NODES)]}),
    )

    def nodes_ready() -> bool:
        out = kubectl("get", "nodes", "-o", "json").stdout
        ready = [
            n
            for n in json.loads(out)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) >= NODES

    wait_for(f"{NODES} Ready nodes", nodes_ready, 60, "kwok")

    node().up(bins, ports)
    # after the node: it removes a stale pod bridge at start, and the DNS plugs into that bridge
    dns().up(bins, ports)

    start_agent()
    for c in COMPONENTS:
        if recorded(c) is None:
            raise ClusterError(f"{c} exited; its log ends:\n{tail(c)}")
    wait_for("kube-apiserver /readyz", api_ready, 30, "kube-apiserver")


def start_agent() -> None:
    log("node agent")
    kubeconfig = STATE / "kubeconfig"
    agent_state = STATE / "agent"
    agent_state.mkdir(exist_ok=True)
    (agent_state / "ready").unlink(missing_ok=True)
    agent_env = os.environ.copy()
    agent_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), agent_env.get("PYTHONPATH")]))
    agent_env["PYTHONUNBUFFERED"] = "1"
    spawn(
        "node-agent",
        [
            agent_python(),
            str(HERE / "node_agent.py"),
            "run",
            f"--kubeconfig={kubeconfig}",
            f"--state-dir={agent_state}",
            f"--netns-prefix={NETNS_PREFIX}",
        ],
        env=agent_env,
    )
    wait_for("the node agent's first sync", (agent_state / "ready").exists, 30, "node-agent")


def install_manifests() -> None:
    cfg = REPO / "config/k8s"
    files = sorted(list(cfg.glob("*.yaml")) + list(cfg.glob("*.yml")))
    crds = [f for f in files if "kind: CustomResourceDefinition" in f.read_text()]
    for f in crds:
        kubectl("apply", "-f", str(f))
    if crds:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"--filename={f}" for f in crds))
    rest = [f for f in files if f not in crds]
    # Files are applied in name order; a later file may hold the Namespace an earlier one needs, so a
    # second pass settles that.
    for attempt in range(3):
        failed = [f for f in rest if kubectl("apply", "-f", str(f), check=False).returncode != 0]
        if not failed:
            return
        rest = failed
        time.sleep(1 + attempt)
    errors = "\n".join(kubectl("apply", "-f", str(f), check=False).stderr.strip() for f in rest)
    raise ClusterError(f"cannot apply {', '.join(str(f) for f in rest)}:\n{errors}")


def down(quiet: bool = False) -> int:
    started = time.monotonic()
    if not STATE.exists():
        if not quiet:
            log(f"already down (no {STATE})")
        return 0
    if not MARKER.exists() and any(STATE.iterdir()):
        raise ClusterError(f"{STATE} was not made by this script (no {MARKER.name}): not touching it")
    # The netns nodes first (their veths are ports of the DNS's bridge), then the DNS (its processes,
    # namespace and veth), then the real node while the API server still answers: the kubelets stop their
    # pods themselves.
    try:
        netns_left = netns().teardown()
    except Exception as exc:  # go on: the rest of the cluster still has to go
        log(f"netns nodes teardown failed: {exc}")
        netns_left = netns().leftovers()
    cluster_dns_ = dns()
    try:
        cluster_dns_.down()
    except Exception as exc:  # go on: the rest of the cluster still has to go
        log(f"cluster DNS teardown failed: {exc}")
    real = node()
    try:
        real.down()
    except Exception as exc:  # go on: the rest of the cluster still has to go
        log(f"real node teardown failed: {exc}")
    left = netns_left + cluster_dns_.leftovers() + real.leftovers()
    stop("node-agent")
    # The agent's namespaces, bridges, IPAM leases and CNI state: torn down by the agent's own code.
    agent_state = STATE / "agent"
    if agent_state.exists():
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [
                agent_python(),
                str(HERE / "node_agent.py"),
                "cleanup",
                f"--state-dir={agent_state}",
                f"--netns-prefix={NETNS_PREFIX}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            log(f"node agent cleanup failed:\n{proc.stdout}{proc.stderr}")
    # Whatever the agent's cleanup could not undo: its namespaces, by their prefix (bridges and veths in
    # them go too).
    netns_dir = Path("/run/netns")
    for ns in sorted(netns_dir.glob(f"{NETNS_PREFIX}-*")) if netns_dir.is_dir() else []:
        log(f"removing leftover network namespace {ns.name}")
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30, check=False)
    for c in reversed(COMPONENTS[:-1]):
        stop(c)
    if left:
        log("left behind on the host (remove by hand; .k8s/ is kept for its logs):\n  " + "\n  ".join(left))
        return 1
    shutil.rmtree(STATE)
    if not quiet:
        log(f"down in {time.monotonic() - started:.1f}s")
    return 0


def status() -> int:
    for c in COMPONENTS:
        print(f"{c:25} {recorded(c) or 'not running'}")
    ok = is_up()
    print("API:", "ready" if ok else "not ready")
    print("DNS:", dns().describe())
    for line in netns().describe():
        print("netns node", line)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    commands = ("up", "down", "status", "bin-dir", "nodes-up", "nodes-down")
    if len(argv) < 2 or argv[1] not in commands or (argv[1] != "nodes-up" and len(argv) != 2):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[1] == "bin-dir":
            print(bin_dir())
            return 0
        if argv[1] == "nodes-up":
            parser = argparse.ArgumentParser(prog=f"{argv[0]} nodes-up")
            parser.add_argument("--count", type=int, default=2, help="how many netns nodes (default 2)")
            parser.add_argument("--max-pods", type=int, default=110, help="each node's maxPods (default 110)")
            args = parser.parse_args(argv[2:])
            return netns().up(args.count, args.max_pods)
        if argv[1] == "nodes-down":
            return netns().down()
        return {"up": up, "down": down, "status": status}[argv[1]]()
    except (ClusterError, netns_nodes.NetnsNodeError, real_node.NodeError) as exc:
        print(f"[k8s] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
