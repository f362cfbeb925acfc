"""The local backend's owner record (``lessons/<id>/owner.json``): typed, written once per change, read by
one strict loader that refuses a malformed file by name instead of guessing what it owns. No root needed:
only the state folder is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from scheduler.core import naming
from scheduler.core.plan import Plan, make_plan
from tests.support.lessons import triangle
from workers.backends.local.ownership import MalformedOwnerRecord, OwnerRecord, Ownership

INSTANCE = "t26"
LIVELESSON = "abcde12345"


def recorded(tmp_path: Path, deployment: str = "d1") -> tuple[Ownership, Plan, Path]:
    owned = Ownership(instance=INSTANCE, root=tmp_path / INSTANCE, deployment=deployment)
    plan = make_plan(triangle(), LIVELESSON, "s1", instance=INSTANCE, deployment=deployment)
    owned.record(plan, node_netns=naming.node_netns(INSTANCE), ipam_dir=tmp_path / "ipam")
    return owned, plan, owned.folder(LIVELESSON) / "owner.json"


def test_a_record_reads_back_as_written_and_is_not_rewritten_unchanged(tmp_path: Path) -> None:
    owned, plan, path = recorded(tmp_path)
    owner = owned.owner(path.parent)
    assert isinstance(owner, OwnerRecord)
    assert owner.mark == owned.mark(LIVELESSON) and owner.deployment == "d1"
    assert owner.pods == {p.endpoint: p.netns for p in plan.pods}
    assert owner.pod_nodes() == {p.endpoint: p.node for p in plan.pods}
    assert {(a.endpoint, a.ifname) for a in owner.attachments} == {
        (p.endpoint, i.name) for p in plan.pods for i in p.attachments
    }
    assert all(a.network in owner.networks for a in owner.attachments)
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    owned.record(plan, node_netns=naming.node_netns(INSTANCE), ipam_dir=tmp_path / "ipam")
    assert path.stat().st_mtime_ns == before - 10**9  # the same record: left as it was
    assert owned.claim(LIVELESSON) == owner and owned.ours() == [LIVELESSON]
    assert sum(owned.pods_per_node().values()) == len(plan.pods)


def test_a_record_from_before_placement_puts_every_pod_on_the_first_node(tmp_path: Path) -> None:
    owned, _plan, path = recorded(tmp_path, deployment="")
    doc = json.loads(path.read_text())
    for key in ("nodes", "node_netns", "deployment"):
        del doc[key]
    for att in doc["attachments"]:
        del att["node"]
    path.write_text(json.dumps(doc))
    owner = owned.owner(path.parent)
    assert owner is not None and owner.deployment == ""
    first = naming.node_netns(INSTANCE)
    assert set(owner.pod_nodes().values()) == {first}
    assert {owner.node_of(a) for a in owner.attachments} == {first}


def _broken(doc: dict[str, Any]) -> None:
    doc["attachments"][0]["network"] = "no-such-network"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda doc: doc.pop("pods"), "pods: Field required"),
        (lambda doc: doc.update(mark=7), "mark: Input should be a valid string"),
        (lambda doc: doc.update(extra="x"), "extra: Extra inputs are not permitted"),
        (lambda doc: doc["networks"].update(bad={"bridge": "b"}), "networks.bad.cni: Field required"),
        (_broken, "names a network the record has not"),
    ],
    ids=["missing", "wrong-type", "unknown-key", "nested", "dangling"],
)
def test_a_malformed_record_is_refused_by_name(tmp_path: Path, change: Any, named: str) -> None:
    owned, _plan, path = recorded(tmp_path)
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(MalformedOwnerRecord, match="refusing to act on it") as caught:
        owned.claim(LIVELESSON)
    assert str(path) in str(caught.value) and named in str(caught.value)
    assert not caught.value.transient
    assert path.exists()  # nothing is removed on a guess
    # a look across every lesson skips it rather than failing for all of them
    assert owned.ours() == [] and sum(owned.pods_per_node().values()) == 0


def test_a_file_that_is_not_json_is_refused_too(tmp_path: Path) -> None:
    owned, _plan, path = recorded(tmp_path)
    path.write_text("{not json")
    with pytest.raises(MalformedOwnerRecord, match="Invalid JSON"):
        owned.claim(LIVELESSON)
    assert path.exists()
