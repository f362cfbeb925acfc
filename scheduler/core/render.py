"""Kubernetes objects for a plan, as plain dicts. Pure: the kubernetes backend and `lessonctl render` share it."""

from __future__ import annotations

import json
from typing import Any

import yaml

from scheduler.core.naming import ANNOTATION_PLACEMENT, ANNOTATION_TUNNEL, LABEL_ENDPOINT, LABEL_LIVELESSON
from scheduler.core.plan import POD_LIMITS, POD_REQUESTS, UNTRUSTED_CAPABILITIES, Plan, Pod

__all__ = [
    "LESSON_ROLE",
    "NETWORKS_ANNOTATION",
    "NETWORK_STATUS_ANNOTATION",
    "ROLE_BINDING",
    "namespace",
    "network_attachment_definitions",
    "network_policy",
    "pods",
    "render",
    "role_binding",
    "services",
    "subject_for",
    "to_yaml",
]

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"

Obj = dict[str, Any]

# The ClusterRole holding every namespaced verb the worker needs (config/k8s/rbac.yaml), and the name of the
# RoleBinding that grants it to the worker inside one lesson namespace.
LESSON_ROLE = "lesson-scheduler-lesson"
ROLE_BINDING = "lesson-scheduler-worker"
RBAC_GROUP = "rbac.authorization.k8s.io"
_SERVICE_ACCOUNT = "system:serviceaccount:"

RESOURCES = {
    "requests": {"cpu": f"{POD_REQUESTS.cpu_millicores}m", "memory": f"{POD_REQUESTS.memory_bytes >> 20}Mi"},
    "limits": {"cpu": f"{POD_LIMITS.cpu_millicores}m", "memory": f"{POD_LIMITS.memory_bytes >> 20}Mi"},
}


def namespace(plan: Plan) -> Obj:
    metadata: Obj = {"name": plan.namespace, "labels": dict(plan.labels)}
    if plan.placed:  # what the lesson holds on each node, read back for the room left (KubernetesBackend.rooms)
        placement = {p.endpoint: p.node for p in plan.pods}
        metadata["annotations"] = {ANNOTATION_PLACEMENT: json.dumps(placement, sort_keys=True)}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def network_attachment_definitions(plan: Plan) -> list[Obj]:
    """One NAD per link. A link whose ends run on different nodes carries its tunnel in an annotation (the
    node agent on each of those nodes makes the VXLAN device), and takes each end's address from the pod's
    network selection (``ips``, through the static IPAM plugin) rather than from each node's host-local."""
    nads = []
    for n in plan.networks:
        metadata: Obj = {"name": n.nad, "namespace": plan.namespace, "labels": dict(plan.labels)}
        config = n.cni_config()
        if n.tunnel is not None:
            tunnel = {"device": n.tunnel.device, "vni": n.tunnel.vni, "nodes": list(n.tunnel.nodes)}
            metadata["annotations"] = {ANNOTATION_TUNNEL: json.dumps(tunnel, sort_keys=True)}
            config["ipam"] = {"type": "static"}
            config["capabilities"] = {"ips": True}
        nads.append(
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": metadata,
                "spec": {"config": json.dumps(config, sort_keys=True)},
            }
        )
    return nads


def _security_context(pod: Pod) -> Obj:
    if pod.flavor == "trusted":
        # virtual routers (vQFX, Cumulus) need /dev/net/tun, KVM and sysctls: Antidote ran them privileged
        return {"privileged": True}
    return {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {
            "drop": ["ALL"],
            "add": list(UNTRUSTED_CAPABILITIES),
        },
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod(plan: Plan, pod: Pod) -> Obj:
    networks: list[Obj] = []
    for i in pod.interfaces:
        selection: Obj = {"name": i.network, "namespace": plan.namespace, "interface": i.name}
        address = plan.network(i.network).spanning_address(pod.endpoint)
        if address is not None:
            selection["ips"] = [address]
        networks.append(selection)
    container: Obj = {
        "name": pod.endpoint,
        "image": pod.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": p, "protocol": "TCP"} for p in pod.ports],
        "resources": RESOURCES,
        "securityContext": _security_context(pod),
    }
    if pod.command:
        container["command"] = list(pod.command)
    if pod.args:
        container["args"] = list(pod.args)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": plan.namespace,
            "labels": dict(pod.labels),
            "annotations": {NETWORKS_ANNOTATION: json.dumps(networks)} if networks else {},
        },
        "spec": {
            "affinity": _affinity(plan, pod),
            # the seed's names: the pod calls itself by its endpoint's name, which its Service resolves to
            "hostname": pod.endpoint,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 5,
            "containers": [container],
        },
    }


def _affinity(plan: Plan, pod: Pod) -> Obj:
    """The seed's rule, a lesson's pods on one node (required pod affinity), while the lesson is on one node.
    A placed plan also pins each pod to its node by name (``matchFields``, as a DaemonSet's pods are); a split
    lesson keeps only that pin, since its pods are on several nodes by design."""
    affinity: Obj = {}
    if len(plan.nodes) == 1:
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchExpressions": [{"key": LABEL_LIVELESSON, "operator": "In", "values": [plan.livelesson]}]
                    },
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    if plan.placed:
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [pod.node]}]}
                ]
            }
        }
    return affinity


def pods(plan: Plan) -> list[Obj]:
    return [_pod(plan, p) for p in plan.pods]


def _port_name(pod: Pod, port: int) -> str:
    """A Service port's name (unique, at most 15 characters): the presentation's type, or ``port``."""
    kind = next((p.type for p in pod.presentations if p.port == port), "port")
    return f"{kind}-{port}"


def _service(plan: Plan, pod: Pod) -> Obj:
    """The endpoint's Service, named after it: ``<endpoint>`` resolves inside the namespace (the seed's DNS).

    Headless (no cluster IP): the name resolves to the pod's own eth0 address, so a ping by name reaches
    the pod (a virtual IP answers no ICMP and needs kube-proxy); ``publishNotReadyAddresses``, because a lab
    device is reachable, and addressed by name, before it reports Ready."""
    spec: Obj = {
        "clusterIP": "None",
        "selector": {LABEL_LIVELESSON: plan.livelesson, LABEL_ENDPOINT: pod.endpoint},
        "publishNotReadyAddresses": True,
    }
    if pod.ports:
        spec["ports"] = [
            {"name": _port_name(pod, port), "port": port, "targetPort": port, "protocol": "TCP"} for port in pod.ports
        ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": pod.endpoint, "namespace": plan.namespace, "labels": dict(pod.labels)},
        "spec": spec,
    }


def services(plan: Plan) -> list[Obj]:
    """One Service per endpoint, exposing its presentations' ports and its additionalPorts."""
    return [_service(plan, p) for p in plan.pods]


def network_policy(plan: Plan) -> Obj:
    """Traffic stays inside the namespace; DNS is the one way out."""
    same_namespace: list[Obj] = [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "isolate", "namespace": plan.namespace, "labels": dict(plan.labels)},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": same_namespace}],
            "egress": [
                {"to": same_namespace},
                {
                    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        },
    }


def subject_for(username: str) -> Obj:
    """The RBAC subject that names exactly this authenticated user: a ServiceAccount's username is
    ``system:serviceaccount:<namespace>:<name>``, anything else a User."""
    if username.startswith(_SERVICE_ACCOUNT):
        sa_namespace, sep, name = username[len(_SERVICE_ACCOUNT) :].partition(":")
        if sep and sa_namespace and name and ":" not in name:
            return {"kind": "ServiceAccount", "name": name, "namespace": sa_namespace}
    if not username:
        raise ValueError("an RBAC subject needs a user name")
    return {"kind": "User", "apiGroup": RBAC_GROUP, "name": username}


def role_binding(plan: Plan, subject: Obj) -> Obj:
    """The lesson namespace's grant of LESSON_ROLE to the worker (``subject``, from ``subject_for``)."""
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ROLE_BINDING, "namespace": plan.namespace, "labels": dict(plan.labels)},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": LESSON_ROLE},
        "subjects": [dict(subject)],
    }


def render(plan: Plan, *, subject: Obj | None = None) -> list[Obj]:
    """Every object, in the order they are applied. With ``subject`` (the worker's identity), the
    RoleBinding that grants it the lesson role follows the namespace."""
    grant = [role_binding(plan, subject)] if subject is not None else []
    return [
        namespace(plan),
        *grant,
        *network_attachment_definitions(plan),
        network_policy(plan),
        *services(plan),
        *pods(plan),
    ]


def to_yaml(objects: list[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
