"""Reading pods into :class:`PodStatus`: readiness, why not (and whether waiting can fix it), and the
addresses Multus reports in its network-status annotation. Pure: no API calls."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.core.plan import MAIN_INTERFACE, MAIN_NETWORK, Plan
from scheduler.core.render import NETWORK_STATUS_ANNOTATION
from workers.backends.base import InterfaceStatus, Observation, PodStatus

__all__ = ["FATAL_WAITING", "observation", "pod_status", "settled"]

# reasons waiting cannot fix: report them at once instead of at the provisioning deadline
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "CrashLoopBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
}


def observation(plan: Plan, items: Mapping[str, Any]) -> Observation:
    """Every planned pod's status from ``items`` (pod name -> pod); a missing pod is not ready."""
    statuses = {}
    for planned in plan.pods:
        pod = items.get(planned.name)
        statuses[planned.endpoint] = (
            pod_status(plan, pod)
            if pod is not None
            else PodStatus(planned.endpoint, planned.name, False, reason="pod does not exist")
        )
    return Observation(statuses)


def settled(observation: Observation) -> bool:
    """Nothing more to wait for: every pod is ready, or one of them never will be."""
    return observation.ready or any(p.fatal for p in observation.pods.values())


def pod_status(plan: Plan, pod: Any) -> PodStatus:
    """One pod: ready only once it runs, is Ready and has an address on every planned interface."""
    endpoint = pod.metadata.labels.get("lessons.io/endpoint", pod.metadata.name)
    planned = plan.pod(endpoint)
    annotations = pod.metadata.annotations or {}
    interfaces = _interfaces(plan, planned.interfaces, annotations.get(NETWORK_STATUS_ANNOTATION))
    node = pod.spec.node_name
    reason, fatal = _not_ready(pod)
    if reason is None and any(i.address is None for i in interfaces):
        reason = "network-status does not list every attachment with an address yet"
    # eth0 is the cluster's default network: its address is the pod's IP (the cluster's prefix is not ours
    # to know, so it is the bare address); the lesson's readiness does not wait for it
    pod_ip = pod.status.pod_ip if pod.status is not None else None
    main = InterfaceStatus(MAIN_INTERFACE, MAIN_NETWORK, pod_ip or None)
    return PodStatus(endpoint, pod.metadata.name, reason is None, (main, *interfaces), node, reason, fatal)


def _not_ready(pod: Any) -> tuple[str | None, bool]:
    """Why the pod is not ready (None if it is), and whether waiting can fix that."""
    status = pod.status
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return f"unschedulable: {cond.message}", True
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in FATAL_WAITING:
            return f"{waiting.reason}: {waiting.message or cs.image}{_last_exit(cs)}", True
        terminated = cs.state.terminated if cs.state else None
        if terminated is not None:  # a lesson's container runs until the lesson ends: an exit is a crash
            return f"container {cs.name} exited ({terminated.reason}, exit code {terminated.exit_code})", True
    if status.phase != "Running":
        return f"phase {status.phase}", False
    ready = next((c for c in status.conditions or [] if c.type == "Ready"), None)
    if ready is None or ready.status != "True":
        return "containers not ready", False
    return None, False


def _last_exit(cs: Any) -> str:
    """The kubelet's account of a restarted container's last run, e.g. " (last exit: Error, exit code 3)"."""
    last = cs.last_state.terminated if cs.last_state else None
    return f" (last exit: {last.reason}, exit code {last.exit_code})" if last is not None else ""


def _interfaces(plan: Plan, planned: Sequence[Any], raw: str | None) -> list[InterfaceStatus]:
    """Addresses from Multus's network-status, matched by network (``ns/name`` or bare ``name``)."""
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        entries = []
    by_key: dict[tuple[str, str], list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        network = str(entry.get("name", "")).split("/")[-1]
        by_key[(network, str(entry.get("interface", "")))] = [str(ip) for ip in entry.get("ips") or []]
    out = []
    for itf in planned:
        ips = by_key.get((itf.network, itf.name)) or []
        subnet = plan.network(itf.network).subnet
        address = next(
            (f"{ip}/{subnet.prefixlen}" for ip in ips if _in(ip, subnet)),
            None,
        )
        out.append(InterfaceStatus(itf.name, itf.network, address))
    return out


def _in(ip: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(ip) in subnet
    except ValueError:
        return False
