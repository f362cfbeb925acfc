"""Pod attachments through CNI: ADD once, repair what a crash left half made, DEL on destroy.

Each ADD's result is kept in ``lessons/<id>/results/<endpoint>.<ifname>.json``, so addresses survive a
worker restart. An attachment counts as made only when its result, the pod-side address and the host
veth (still a port of our bridge) all agree; anything less is released and made again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from scheduler.core.errors import SchedulerError
from scheduler.core.plan import Attachment, Plan, Pod
from workers.backends.local.net import cni
from workers.backends.local.net.netns import NETNS_DIR
from workers.backends.local.net.rtnetlink import Link
from workers.backends.local.ownership import OwnedAttachment, OwnedNetwork, Ownership, read_json, write_json

__all__ = ["Attachments"]

log = structlog.get_logger("workers.backends.local")  # the local backend's events, under one logger name


class Attachments:
    def __init__(self, ownership: Ownership, *, ipam_dir: Path, cni_path: Path) -> None:
        self.ownership = ownership
        self.ipam_dir = ipam_dir
        self.cni_path = cni_path

    def result_file(self, livelesson: str, endpoint: str, ifname: str) -> Path:
        return self.ownership.folder(livelesson) / "results" / f"{endpoint}.{ifname}.json"

    def saved(self, livelesson: str, endpoint: str, ifname: str) -> Any:
        """The kept ADD result (``addresses``, ``mac``, ``raw``), or None."""
        return read_json(self.result_file(livelesson, endpoint, ifname))

    def _leased(self, cni_name: str, container_id: str) -> bool:
        """host-local still holds an address for this container on that network (one file per address)."""
        try:
            files = list((self.ipam_dir / cni_name).iterdir())
        except FileNotFoundError:
            return False
        for file in files:
            try:
                if file.read_text().split()[0:1] == [container_id]:
                    return True
            except (OSError, UnicodeDecodeError):
                continue
        return False

    def ensure(
        self, plan: Plan, pod: Pod, itf: Attachment, present: dict[str, list[str]], node_links: dict[str, Link]
    ) -> None:
        ifname, network = itf.name, plan.network(itf.network)
        path = self.result_file(plan.livelesson, pod.endpoint, ifname)
        saved = read_json(path)
        have = present.get(ifname)
        if saved is not None and have and set(saved.get("addresses") or ["-"]) <= set(have):
            # the pod side is right; so must the node side be: the host veth, still a port of our bridge
            hosts = [i.get("name") for i in saved.get("raw", {}).get("interfaces", []) if not i.get("sandbox")]
            if any(h in node_links and node_links[h].master == network.bridge for h in hosts):
                return
        config = plan.cni_config(pod, itf, str(self.ipam_dir))
        # on the pod's node, as the kubelet of the node a pod was scheduled to runs its CNI calls
        where: cni.Where = {
            "container_id": pod.netns,
            "netns": NETNS_DIR / pod.netns,
            "ifname": ifname,
            "node_netns": pod.node,
            "plugin_dir": self.cni_path,
        }
        if saved is not None or have is not None or self._leased(config["name"], pod.netns):
            # half made by a run that crashed (interface without result, result without interface, a lease
            # left behind): start this attachment over, as host-local refuses a second lease for one id
            path.unlink(missing_ok=True)
            cni.delete(config, **where)
        result = cni.add(config, **where)
        write_json(path, {"addresses": result.addresses, "mac": result.mac, "raw": result.raw})

    def release(self, network: OwnedNetwork, att: OwnedAttachment, node: str) -> None:
        """CNI DEL of one attachment named in an owner record, on its ``node``; a failure is logged, not raised."""
        # DEL releases the IPAM lease even when the namespace is already gone
        try:
            cni.delete(
                network.cni,
                container_id=att.netns,
                netns=NETNS_DIR / att.netns,
                ifname=att.ifname,
                node_netns=node,
                plugin_dir=self.cni_path,
            )
        except SchedulerError as exc:
            # what DEL leaves goes anyway: the veth with the pod's namespace, the lease with the IPAM folder
            log.warning("CNI DEL failed, cleaning up without it", ifname=att.ifname, error=str(exc))
