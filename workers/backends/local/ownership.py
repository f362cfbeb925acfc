"""What a live lesson owns on this host, and the locks that keep applies, destroy and observe apart.

Before creating anything, the backend writes ``<state>/<instance>/lessons/<id>/owner.json`` naming every
namespace, bridge and attachment it will make, and the deployment that made them. Destroy reads that
record back (:meth:`Ownership.claim`) and acts only on a record with the same mark, and only for its own
deployment; :meth:`Ownership.ours` reports only its own deployment's lessons.

The record is an :class:`OwnerRecord`, read in one place (:meth:`Ownership.owner`) by a strict loader: a
file that is not exactly such a record (bad JSON, a field missing, of the wrong type or unknown) raises
:class:`MalformedOwnerRecord` naming the file and each fault, and is never guessed at.

Ids arrive from the queue, where anyone with Redis access can write: every path built from one is checked
(a live-lesson id, and a path that resolves inside its folder of the state root) before it is used.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scheduler.core import naming
from scheduler.core.checks import check_id, is_id
from scheduler.core.errors import PermanentError
from scheduler.core.plan import Plan

__all__ = [
    "MalformedOwnerRecord",
    "OwnedAttachment",
    "OwnedNetwork",
    "OwnerRecord",
    "Ownership",
    "read_json",
    "write_json",
]

log = structlog.get_logger(__package__)  # the local backend's events, under one logger name


def write_json(path: Path, doc: Any) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


# --- the owner record ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    # no coercion and no unknown keys: a record is exactly what :meth:`Ownership.record` wrote
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class OwnedNetwork(_Strict):
    bridge: str
    cni: dict[str, Any]  # the CNI configuration DEL runs with; its ``name`` is the IPAM folder's


class OwnedAttachment(_Strict):
    endpoint: str
    netns: str
    ifname: str
    network: str  # a key of :attr:`OwnerRecord.networks`
    node: str = ""  # empty in records made before pods were placed: the record's default node


class OwnerRecord(_Strict):
    """What one live lesson owns on this host (``lessons/<id>/owner.json``)."""

    mark: str
    instance: str
    deployment: str = ""  # empty in records made before deployments were told apart
    livelesson: str
    lesson: str
    session: str
    node_netns: str = ""  # the node of a pod ``nodes`` does not name; empty: the instance's first node
    pods: dict[str, str]  # endpoint -> its network namespace
    nodes: dict[str, str] = Field(default_factory=dict)  # endpoint -> its node; empty before placement
    networks: dict[str, OwnedNetwork]  # by NAD name
    attachments: tuple[OwnedAttachment, ...]

    @model_validator(mode="after")
    def _consistent(self) -> OwnerRecord:
        """Every name one part uses is one another part defines, so destroy never meets a dangling one."""
        for att in self.attachments:
            if att.endpoint not in self.pods:
                raise ValueError(f"attachment {att.endpoint}.{att.ifname} names a pod the record has not")
            if att.network not in self.networks:
                raise ValueError(f"attachment {att.endpoint}.{att.ifname} names a network the record has not")
        if unknown := set(self.nodes) - set(self.pods):
            raise ValueError(f"nodes names pods the record has not: {sorted(unknown)}")
        return self

    @property
    def default_node(self) -> str:
        return self.node_netns or naming.node_netns(self.instance)

    def pod_nodes(self) -> dict[str, str]:
        """Each pod's node."""
        return {endpoint: self.nodes.get(endpoint) or self.default_node for endpoint in self.pods}

    def node_of(self, attachment: OwnedAttachment) -> str:
        return attachment.node or self.default_node


class MalformedOwnerRecord(PermanentError):
    """An ``owner.json`` that is not an :class:`OwnerRecord`: what it owns is unknown, so nothing is touched."""

    def __init__(self, path: Path, error: ValidationError) -> None:
        faults = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in error.errors())
        super().__init__(f"{path} is not a valid owner record ({faults}); refusing to act on it")
        self.path = path


class Ownership:
    """``<root>`` is ``<state_dir>/<instance>``: owner records, live-lesson folders and locks under it."""

    def __init__(self, *, instance: str, root: Path, deployment: str) -> None:
        self.instance = instance
        self.root = root
        self.deployment = deployment

    # --- marks and paths ---------------------------------------------------------------------------

    def mark(self, livelesson: str) -> str:
        return naming.mark(self.instance, livelesson)

    def folder(self, livelesson: str) -> Path:
        """``<root>/lessons/<id>``: the live lesson's owner record, CNI results, hosts file and its pods'
        pid files or container bundles."""
        return self.inside("lessons", livelesson)

    def hosts_file(self, livelesson: str) -> Path:
        """The live lesson's hosts file, every pod's /etc/hosts."""
        return self.folder(livelesson) / "hosts"

    def inside(self, folder: str, livelesson: str, suffix: str = "") -> Path:
        """``<root>/<folder>/<id><suffix>``, for a valid id only, and only if it resolves inside that folder
        (a symlink planted there cannot lead a remove elsewhere)."""
        base = self.root / folder
        path = base / f"{check_id(livelesson)}{suffix}"
        if path.resolve().parent != base.resolve():
            raise PermanentError(f"{path} resolves outside {base}; refusing to use it")
        return path

    # --- locks -------------------------------------------------------------------------------------

    @contextmanager
    def node_lock(self, exclusive: bool) -> Iterator[None]:
        """Shared while lessons use the node namespace, exclusive while it is pruned."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "node.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    @contextmanager
    def reading(self, livelesson: str) -> Iterator[None]:
        """A shared hold on the lesson's lock: observe never sees an apply half done. No file, no lock
        (nothing was applied yet, or it was destroyed), and none is created, so nothing is left behind."""
        try:
            fd = os.open(self.inside("locks", livelesson, ".lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def lesson_lock(self, livelesson: str, *, remove: bool = False) -> Iterator[None]:
        """Serialises applies and destroy of one live lesson (a redelivered task next to the original).

        ``remove`` unlinks the lock file before releasing it (destroy leaves nothing); a waiter that then
        wakes up on the unlinked file sees that and takes a fresh one.
        """
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        path = self.inside("locks", livelesson, ".lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.fstat(fd).st_ino == path.stat().st_ino
                except FileNotFoundError:
                    current = False
                if not current:
                    continue
                try:
                    yield
                finally:
                    if remove:
                        path.unlink(missing_ok=True)
                return
            finally:
                os.close(fd)

    # --- owner records -----------------------------------------------------------------------------

    def owner(self, folder: Path) -> OwnerRecord | None:
        """The owner record of a live-lesson folder; None when it has none. A file that is not a valid
        record raises :class:`MalformedOwnerRecord`."""
        path = folder / "owner.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return OwnerRecord.model_validate_json(text)
        except ValidationError as exc:
            raise MalformedOwnerRecord(path, exc) from None

    def record(self, plan: Plan, *, node_netns: str, ipam_dir: Path) -> None:
        """Written before anything is created, so even a crash mid-apply leaves a record to clean up by."""
        attachments = tuple(
            OwnedAttachment(endpoint=p.endpoint, netns=p.netns, ifname=i.name, network=i.network, node=p.node)
            for p in plan.pods
            for i in p.attachments
        )
        networks = {n.nad: OwnedNetwork(bridge=n.bridge, cni=n.cni_config(str(ipam_dir))) for n in plan.networks}
        if plan.main is not None:  # static addresses: DEL needs none of them
            networks[plan.main.nad] = OwnedNetwork(bridge=plan.main.bridge, cni=plan.main.cni_config(address=""))
        record = OwnerRecord(
            mark=self.mark(plan.livelesson),
            instance=plan.instance,
            deployment=self.deployment,
            livelesson=plan.livelesson,
            lesson=plan.lesson,
            session=plan.session,
            node_netns=node_netns,
            pods={p.endpoint: p.netns for p in plan.pods},
            nodes={p.endpoint: p.node for p in plan.pods},
            networks=networks,
            attachments=attachments,
        )
        folder = self.folder(plan.livelesson)
        try:
            current = self.owner(folder)
        except MalformedOwnerRecord:
            current = None  # this apply holds the lesson's lock and rewrites it
        if current is not None and current.deployment and current.deployment != self.deployment:
            # two deployments sharing a host and an instance name: the lesson is the other's, and taking its
            # record over would let this one destroy what it never made
            raise PermanentError(
                f"live lesson {plan.livelesson} was made by another deployment ({current.deployment}); "
                "refusing to use it"
            )
        if current != record:
            write_json(folder / "owner.json", record.model_dump(mode="json"))

    def claim(self, livelesson: str) -> OwnerRecord | None:
        """The owner record, when destroy may act on it; None when there is nothing (more) for it to do.

        No record: nothing was created before it, so the folder is removed here. A record without our mark,
        or not a valid record, is refused; another deployment's lesson (a shared host and instance name) is
        not ours to touch.
        """
        folder = self.folder(livelesson)
        owner = self.owner(folder)
        if owner is None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was created before the record
            return None
        mark = self.mark(livelesson)
        if owner.mark != mark:
            raise PermanentError(f"{folder} is not marked {mark!r}; refusing to destroy")
        if owner.deployment != self.deployment:
            # another deployment's lesson, on a shared host and instance name: not ours to touch
            log.warning("destroy refused: another deployment's live lesson", owner=owner.deployment)
            return None
        return owner

    def held(self) -> list[Path]:
        """Every live-lesson folder of this instance, whichever deployment made it."""
        folder = self.root / "lessons"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if is_id(p.name) and p.is_dir() and not p.is_symlink())

    def ours(self) -> list[str]:
        """This deployment's live lessons. A folder with no owner record (a crash before it was written)
        counts as ours once it is a minute old, so it is cleaned up rather than kept for ever; one with a
        malformed record is nobody's: logged and left alone."""
        ours = []
        for folder, owner in self._records(skipped="not listed"):
            if owner is None:
                try:
                    stale = time.time() - folder.stat().st_mtime > 60
                except FileNotFoundError:
                    continue
                if stale:
                    ours.append(folder.name)
            elif owner.deployment == self.deployment:
                ours.append(folder.name)
        return ours

    def pods_per_node(self) -> Counter[str]:
        """How many pods every live lesson of this instance (whichever deployment) has on each node."""
        used: Counter[str] = Counter()
        for _folder, owner in self._records(skipped="its pods not counted"):
            if owner is not None:
                used.update(owner.pod_nodes().values())
        return used

    def _records(self, *, skipped: str) -> Iterator[tuple[Path, OwnerRecord | None]]:
        """Every live-lesson folder with its record (None: none yet). A malformed record is logged, saying
        what is ``skipped``, and its folder left out, so one bad file cannot stop a look across them all."""
        for folder in self.held():
            try:
                owner = self.owner(folder)
            except MalformedOwnerRecord as exc:
                log.warning("malformed owner record skipped", skipped=skipped, error=str(exc))
                continue
            yield folder, owner
