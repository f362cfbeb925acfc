#!/usr/bin/env python3
"""The test cluster's node agent: what Multus and the kubelet's network setup do on a real node.

For every pod bound to a kwok node that carries a ``k8s.v1.cni.cncf.io/networks`` annotation it

* makes a "node" network namespace per kwok node (``<prefix>-<node>``, where the bridges live) and a
  namespace for the pod (``<prefix>-pod-<uid>``);
* runs the real CNI plugins (workers/backends/local/net/cni.py) with each NetworkAttachmentDefinition's
  ``spec.config``, interface ``net1``, ``net2``, ... or the one the annotation names;
* writes the ``k8s.v1.cni.cncf.io/network-status`` annotation in Multus's format;
* creates a kwok ``Exec`` (named after the pod, owned by it) whose env names the pod's namespace, so
  that ``kubectl exec POD -- ping ...`` runs ping inside it (see cluster.py's wrapper commands).

When the pod goes it runs CNI DEL, removes the pod's namespace and deletes bridges with no ports left.
State (one JSON file per wired pod, host-local IPAM leases) lives in --state-dir, so a restarted agent
and ``cleanup`` undo exactly what was done.

    node_agent.py run --kubeconfig K --state-dir D [--netns-prefix P]
    node_agent.py cleanup --state-dir D [--netns-prefix P]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import netns_tools as netns
from workers.backends.local.net import cni

log = logging.getLogger("node-agent")

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
KWOK_GROUP, KWOK_VERSION = "kwok.x-k8s.io", "v1alpha1"
NETNS_ENV = "LESSON_K8S_NETNS"
MANAGED_BY = "lesson-scheduler-test-node-agent"
DEFAULT_CNI_VERSION = "0.4.0"
RETRY_AFTER = 2.0
RESYNC_EVERY = 30.0


@dataclass(frozen=True)
class Network:
    namespace: str
    name: str
    interface: str


def parse_networks(value: str, pod_namespace: str) -> list[Network]:
    """Multus's two annotation forms: a JSON list of selection elements, or "ns/name@ifname,..."."""
    value = value.strip()
    items: list[dict[str, Any]] = []
    if value.startswith("["):
        doc = json.loads(value)
        if not isinstance(doc, list):
            raise ValueError("the networks annotation must be a JSON list")
        items = doc
    elif value:
        for part in value.split(","):
            part = part.strip()
            ns, _, rest = part.rpartition("/")
            name, _, ifname = rest.partition("@")
            items.append({"name": name, "namespace": ns or None, "interface": ifname or None})
    networks = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(f"network element {index} has no name: {item!r}")
        networks.append(
            Network(
                namespace=item.get("namespace") or pod_namespace,
                name=str(item["name"]),
                interface=item.get("interface") or f"net{index}",
            )
        )
    ifnames = [n.interface for n in networks]
    if len(set(ifnames)) != len(ifnames):
        raise ValueError(f"duplicate interface names in {ifnames}")
    return networks


class State:
    """One JSON file per wired (or half-wired) pod, written before each CNI ADD so DEL can follow."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods = root / "pods"
        self.pods.mkdir(parents=True, exist_ok=True)

    def load(self, uid: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.pods / f"{uid}.json").read_text())
        except (OSError, ValueError):
            return None

    def save(self, record: dict[str, Any]) -> None:
        path = self.pods / f"{record['uid']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)

    def remove(self, uid: str) -> None:
        (self.pods / f"{uid}.json").unlink(missing_ok=True)

    def all(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.pods.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def ipam_dir(self, node: str) -> Path:
        return self.root / "ipam" / node


def node_netns(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def pod_netns(prefix: str, uid: str) -> str:
    return f"{prefix}-pod-{uid}"


def prepare_config(raw: str, nad: str, ipam_dir: Path) -> dict[str, Any]:
    """The NAD's config as the plugin gets it: Multus fills in the name; cniVersion defaults to one whose
    result format carries interfaces and ips; host-local keeps its leases per node, in the agent's state."""
    conf = json.loads(raw)
    if not isinstance(conf, dict):
        raise ValueError(f"{nad}: spec.config is not a JSON object")
    if "plugins" in conf:
        raise ValueError(f'{nad}: CNI configuration lists ("plugins") are not supported by the test agent')
    if not conf.get("type"):
        raise ValueError(f'{nad}: spec.config has no plugin "type"')
    conf = copy.deepcopy(conf)
    conf.setdefault("name", nad.split("/", 1)[1])
    conf.setdefault("cniVersion", DEFAULT_CNI_VERSION)
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and ipam.get("type") == "host-local" and "dataDir" not in ipam:
        ipam["dataDir"] = str(ipam_dir)
    return conf


def remove_empty_bridges(ns: str) -> None:
    if not netns.exists(ns):
        return
    for bridge in netns.bridges(ns):
        if not netns.links(ns, "master", bridge):
            log.info("deleting bridge %s in %s: no ports left", bridge, ns)
            netns.ip("link", "del", bridge, netns=ns, check=False)


def teardown(record: dict[str, Any], plugin_dir: Path) -> None:
    """CNI DEL for each attachment (last first), then the pod's namespace, then bridges left empty."""
    pod_ns = record["pod_netns"]
    for att in reversed(record.get("attachments", [])):
        try:
            cni.delete(
                att["config"],
                container_id=record["uid"],
                netns=cni.netns_path(pod_ns),
                ifname=att["ifname"],
                node_netns=record["node_netns"],
                plugin_dir=plugin_dir,
            )
        except Exception as exc:  # best effort: the namespace goes anyway
            log.warning(
                "CNI DEL %s %s of %s/%s: %s", att["network"], att["ifname"], record["namespace"], record["name"], exc
            )
    netns.delete(pod_ns)
    remove_empty_bridges(record["node_netns"])


class Agent:
    def __init__(self, kubeconfig: Path, state_dir: Path, prefix: str, plugin_dir: Path) -> None:
        from kubernetes import client, config

        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.state = State(state_dir)
        self.prefix = prefix
        self.plugin_dir = plugin_dir
        self.kwok_nodes: set[str] = set()
        self.retry: dict[str, float] = {}  # "ns/name" -> when to try again
        self.failures: dict[str, int] = {}  # "ns/name" -> failed attempts in a row

    # --- API helpers ---------------------------------------------------------------------------------

    def refresh_nodes(self) -> None:
        nodes = self.core.list_node().items
        self.kwok_nodes = {
            n.metadata.name for n in nodes if (n.metadata.annotations or {}).get(KWOK_NODE_ANNOTATION) == "fake"
        }

    def is_kwok_node(self, name: str) -> bool:
        if name not in self.kwok_nodes:
            self.refresh_nodes()
        return name in self.kwok_nodes

    def event(self, pod: Any, reason: str, message: str, kind: str = "Warning") -> None:
        from kubernetes import client

        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pod.metadata.name}.", namespace=pod.metadata.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="Pod",
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                uid=pod.metadata.uid,
            ),
            reason=reason,
            message=message[:1000],
            type=kind,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="multus", host=pod.spec.node_name),
        )
        with contextlib.suppress(Exception):
            self.core.create_namespaced_event(pod.metadata.namespace, body)

    def put_exec(self, pod: Any, ns_name: str) -> None:
        from kubernetes.client.rest import ApiException

        meta = pod.metadata
        body = {
            "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
            "kind": "Exec",
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": meta.name, "uid": meta.uid}],
            },
            "spec": {"execs": [{"local": {"envs": [{"name": NETNS_ENV, "value": ns_name}]}}]},
        }
        args = (KWOK_GROUP, KWOK_VERSION, meta.namespace, "execs")
        try:
            self.custom.create_namespaced_custom_object(*args, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A same-named pod's leftover (its GC not done yet): replace it.
            self.custom.delete_namespaced_custom_object(*args, meta.name)
            self.custom.create_namespaced_custom_object(*args, body)

    # --- reconciliation ------------------------------------------------------------------------------

    def wants(self, pod: Any) -> bool:
        meta = pod.metadata
        return (
            meta.deletion_timestamp is None
            and NETWORKS_ANNOTATION in (meta.annotations or {})
            and bool(pod.spec.node_name)
            and pod.status.phase not in ("Succeeded", "Failed")
            and self.is_kwok_node(pod.spec.node_name)
        )

    def reconcile(self, pod: Any) -> None:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        record = self.state.load(pod.metadata.uid)
        if not self.wants(pod):
            if record is not None:
                self.forget(record)
            return
        if record is not None and record.get("wired"):
            return
        if record is not None:  # half-wired by an interrupted attempt: undo, then start over
            self.forget(record)
        try:
            self.wire(pod)
            self.retry.pop(key, None)
            self.failures.pop(key, None)
        except Exception as exc:
            count = self.failures[key] = self.failures.get(key, 0) + 1
            why = _describe(exc)
            log.warning("wiring %s failed (attempt %d, retrying in %.0fs): %s", key, count, RETRY_AFTER, why)
            if count == 1 or count % 30 == 0:  # as a kubelet would report it, without flooding
                self.event(pod, "FailedCreatePodSandBox", f"node agent (attempt {count}): {why}")
            record = self.state.load(pod.metadata.uid)
            if record is not None:
                self.forget(record)
            self.retry[key] = time.monotonic() + RETRY_AFTER

    def wire(self, pod: Any) -> None:
        meta = pod.metadata
        node = pod.spec.node_name
        networks = parse_networks(meta.annotations[NETWORKS_ANNOTATION], meta.namespace)
        node_ns, own_ns = node_netns(self.prefix, node), pod_netns(self.prefix, meta.uid)
        record: dict[str, Any] = {
            "uid": meta.uid,
            "namespace": meta.namespace,
            "name": meta.name,
            "node": node,
            "node_netns": node_ns,
            "pod_netns": own_ns,
            "attachments": [],
            "wired": False,
        }
        self.state.save(record)
        netns.add(node_ns)
        netns.add(own_ns)
        statuses: list[dict[str, Any]] = []
        for net in networks:
            nad_ref = f"{net.namespace}/{net.name}"
            nad = self.custom.get_namespaced_custom_object(NAD_GROUP, NAD_VERSION, net.namespace, NAD_PLURAL, net.name)
            conf = prepare_config(nad.get("spec", {}).get("config") or "{}", nad_ref, self.state.ipam_dir(node))
            record["attachments"].append({"network": nad_ref, "ifname": net.interface, "config": conf})
            self.state.save(record)
            result = cni.add(
                conf,
                container_id=meta.uid,
                netns=cni.netns_path(own_ns),
                ifname=net.interface,
                node_netns=node_ns,
                plugin_dir=self.plugin_dir,
            )
            statuses.append(
                _status_entry(nad_ref, net.interface, [a.split("/", 1)[0] for a in result.addresses], result.mac)
            )
        # Multus lists the cluster network (eth0) first, marked default; its address is the one kwok invents.
        status = [_status_entry("kwok", "eth0", _pod_ips(pod), None, default=True), *statuses]
        self.put_exec(pod, own_ns)
        self.core.patch_namespaced_pod(
            meta.name, meta.namespace, {"metadata": {"annotations": {STATUS_ANNOTATION: json.dumps(status, indent=4)}}}
        )
        record["wired"] = True
        self.state.save(record)
        summary = ", ".join(f"{s['interface']}={','.join(s['ips'])}" for s in statuses)
        log.info("wired %s/%s on %s: %s", meta.namespace, meta.name, node, summary or "no networks")
        self.event(pod, "AddedInterface", f"node agent: {summary or 'no networks'}", kind="Normal")

    def forget(self, record: dict[str, Any]) -> None:
        teardown(record, self.plugin_dir)
        self.state.remove(record["uid"])
        log.info("unwired %s/%s (%s)", record["namespace"], record["name"], record["uid"])

    def resync(self) -> str:
        """Reconcile every pod, undo records whose pod is gone; returns the list's resourceVersion."""
        self.refresh_nodes()
        listing = self.core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=")
        alive = {p.metadata.uid for p in listing.items}
        for record in self.state.all():
            if record["uid"] not in alive:
                self.forget(record)
        for pod in listing.items:
            self.reconcile(pod)
        return str(listing.metadata.resource_version)

    def retry_due(self) -> None:
        from kubernetes.client.rest import ApiException

        now = time.monotonic()
        for key, when in list(self.retry.items()):
            if when > now:
                continue
            namespace, name = key.split("/", 1)
            try:
                pod = self.core.read_namespaced_pod(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    self.retry.pop(key, None)
                    self.failures.pop(key, None)
                    continue
                raise
            self.reconcile(pod)

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        rv = self.resync()
        (self.state.root / "ready").write_text(f"{time.time()}\n")
        log.info("ready: watching pods on kwok nodes %s", sorted(self.kwok_nodes))
        last_resync = time.monotonic()
        while True:
            try:
                w = watch.Watch()
                for ev in w.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector="spec.nodeName!=",
                    resource_version=rv,
                    timeout_seconds=2,
                ):
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        raw = ev.get("raw_object") or {}
                        raise ApiException(status=raw.get("code", 500), reason=raw.get("message"))
                    rv = obj.metadata.resource_version
                    if ev["type"] == "DELETED":
                        record = self.state.load(obj.metadata.uid)
                        if record is not None:
                            self.forget(record)
                        self.retry.pop(f"{obj.metadata.namespace}/{obj.metadata.name}", None)
                        self.failures.pop(f"{obj.metadata.namespace}/{obj.metadata.name}", None)
                    else:
                        self.reconcile(obj)
                self.retry_due()
                if time.monotonic() - last_resync > RESYNC_EVERY:
                    rv = self.resync()
                    last_resync = time.monotonic()
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired: relisting")
                else:
                    log.warning("API error: %s; relisting", exc)
                    time.sleep(1)
                rv = self.resync()
                last_resync = time.monotonic()
            except Exception as exc:  # the API server restarting, a transient failure: relist and go on
                log.warning("watch failed: %s; relisting", exc)
                time.sleep(1)
                with contextlib.suppress(Exception):
                    rv = self.resync()
                    last_resync = time.monotonic()


def _describe(exc: Exception) -> str:
    """An API error's own message rather than the client's dump of headers and body."""
    body = getattr(exc, "body", None)
    if body:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return f"{json.loads(body)['message']} ({exc.status})"  # type: ignore[attr-defined]
    return str(exc)


def _status_entry(name: str, ifname: str, ips: list[str], mac: str | None, default: bool = False) -> dict[str, Any]:
    """One element of Multus's network-status (its NetworkStatus type: empty fields omitted, dns always)."""
    entry: dict[str, Any] = {"name": name, "interface": ifname}
    if ips:
        entry["ips"] = ips
    if mac:
        entry["mac"] = mac
    if default:
        entry["default"] = True
    entry["dns"] = {}
    return entry


def _pod_ips(pod: Any) -> list[str]:
    status = pod.status
    ips = [p.ip for p in (status.pod_ips or []) if p.ip] if status else []
    if not ips and status is not None and status.pod_ip:
        ips = [status.pod_ip]
    return ips


def cleanup(state_dir: Path, prefix: str, plugin_dir: Path) -> int:
    """Undo everything: each recorded pod's attachments and namespace, every <prefix>-* namespace (their
    bridges and veths go with them), the IPAM leases and the state."""
    failures = 0
    if state_dir.exists():
        state = State(state_dir)
        for record in state.all():
            try:
                teardown(record, plugin_dir)
                state.remove(record["uid"])
            except Exception as exc:
                failures += 1
                log.warning("cleanup of %s/%s: %s", record.get("namespace"), record.get("name"), exc)
    for name in sorted(netns.names()):
        if name.startswith(f"{prefix}-"):
            try:
                netns.delete(name)
            except Exception as exc:
                failures += 1
                log.warning("deleting namespace %s: %s", name, exc)
    if state_dir.exists():
        shutil.rmtree(state_dir / "ipam", ignore_errors=True)
        shutil.rmtree(state_dir / "pods", ignore_errors=True)
        (state_dir / "ready").unlink(missing_ok=True)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "cleanup"])
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--netns-prefix", default="k8sagent")
    parser.add_argument("--cni-plugin-dir", type=Path, default=Path("/usr/lib/cni"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if shutil.which("nsenter") is None or shutil.which("ip") is None:
        log.error("nsenter and ip are needed")
        return 1
    if args.command == "cleanup":
        return cleanup(args.state_dir, args.netns_prefix, args.cni_plugin_dir)
    if args.kubeconfig is None:
        parser.error("run needs --kubeconfig")
    Agent(args.kubeconfig, args.state_dir, args.netns_prefix, args.cni_plugin_dir).run()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
