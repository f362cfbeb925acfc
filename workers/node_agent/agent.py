"""The node agent's loop: list the NADs and Nodes, reconcile this node's tunnel ends, then watch the NADs
and reconcile again at the first change (or after ``resync`` seconds, which also picks up Nodes' changes).

Level-triggered: every reconcile compares the whole wanted set with the devices here, so a missed event, a
restart or a device deleted by hand is mended at the next one. The agent writes nothing to the API.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from scheduler.core import naming
from scheduler.core.errors import SchedulerError, TemporaryError
from workers.backends.kubernetes.api import CONNECTION_ERRORS, REQUEST_TIMEOUT, call
from workers.node_agent import links, tunnels

__all__ = ["NodeAgent", "Pass"]

log = structlog.get_logger(__name__)

NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
OURS = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"


@dataclass
class Pass:
    """What one reconcile found and did."""

    ends: list[tunnels.End] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # devices ensured
    removed: list[str] = field(default_factory=list)
    problems: list[tunnels.Problem] = field(default_factory=list)
    version: str = ""  # the NAD list's resourceVersion, where the watch starts


class NodeAgent:
    """The tunnel ends of node ``node``, made in the namespace this process runs in."""

    def __init__(self, api: client.ApiClient, node: str, *, mtu: int = 1500, resync: float = 30.0) -> None:
        self.node = node
        self.mtu = mtu
        self.resync = resync
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.log = log.bind(node=node)

    def reconcile(self) -> Pass:
        """One pass: every wanted end made (each on its own: one broken link never blocks the others), then
        every marked device no end wants removed."""
        listing = call(self.custom.list_cluster_custom_object, *NAD, label_selector=OURS)
        nodes = call(self.core.list_node, label_selector=naming.LABEL_TUNNEL_ADDRESS).items
        where, problems = tunnels.addresses({"name": n.metadata.name, "labels": n.metadata.labels or {}} for n in nodes)
        local = where.get(self.node)
        if local is None:
            raise TemporaryError(
                f"node {self.node} has no valid {naming.LABEL_TUNNEL_ADDRESS} label (the address its VXLAN "
                "devices send from): label it, e.g. `kubectl label node NAME lessons.io/tunnel-address=IP`",
                delay=10.0,
            )
        ends, more = tunnels.ends(self.node, listing.get("items") or [], where)
        result = Pass(ends=ends, problems=problems + more, version=str(listing["metadata"]["resourceVersion"]))
        for end in ends:
            try:
                links.ensure(end, local, mtu=self.mtu)
                result.made.append(end.device)
            except SchedulerError as exc:
                result.problems.append(tunnels.Problem(end.mark[len(naming.TUNNEL_MARK) :], str(exc)))
        result.removed = links.remove_stale(ends)
        for problem in result.problems:
            self.log.warning("tunnel not made", where=problem.where, problem=problem.what)
        self.log.info("reconciled", tunnels=len(ends), made=len(result.made), removed=result.removed)
        return result

    def wait_for_change(self, version: str, stop: threading.Event) -> None:
        """Return at the first NAD event after ``version``, after ``resync`` seconds, or when stopped."""
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for _event in watcher.stream(  # type: ignore[no-untyped-call]
                self.custom.list_cluster_custom_object, *NAD, label_selector=OURS,
                resource_version=version, timeout_seconds=max(1, int(self.resync)),
                _request_timeout=(REQUEST_TIMEOUT[0], self.resync + 5),
            ):  # fmt: skip
                return
        except ApiException as exc:  # 410 Gone and the like: the next pass lists afresh
            self.log.info("watch ended", status=exc.status)
        except CONNECTION_ERRORS as exc:
            self.log.warning("watch broke off", error=str(exc))
            stop.wait(1.0)
        finally:
            watcher.stop()  # type: ignore[no-untyped-call]

    def run(self, stop: threading.Event, *, ready_file: Path | None = None) -> None:
        """Reconcile until ``stop`` is set. ``ready_file`` is written after the first complete pass."""
        backoff = 1.0
        while not stop.is_set():
            try:
                result = self.reconcile()
            except SchedulerError as exc:
                self.log.warning("reconcile failed", error=str(exc), transient=exc.transient)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            if ready_file is not None and not ready_file.exists():
                ready_file.write_text(f"{time.time()}\n")
            self.wait_for_change(result.version, stop)
