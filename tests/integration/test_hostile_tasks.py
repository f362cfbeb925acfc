"""Hostile task arguments through the real queue (issue 11): anyone who can write to Redis can send any
``lessons.*`` task with any JSON arguments. Each is refused with a logged error, and nothing outside the
state root (or inside it) is touched: canary files and folders prove it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.core.records import new_id
from scheduler.services.queue import sender
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.lessons import TRIANGLE
from tests.support.waits import wait_for
from workers.backends.local import LocalBackend

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

STEP_TASKS = ["lessons.create_networks", "lessons.schedule_pods", "lessons.wait_ready", "lessons.verify_connectivity",
              "lessons.teardown"]  # fmt: skip


def hostile_ids(canary: Path, state_root: Path) -> list[Any]:
    return [
        "/",
        "..",
        ".",
        "../../x",
        str(canary),  # an absolute path outside the state root
        os.path.relpath(canary, state_root / "lessons"),  # the same, relative to where ids are joined
        "../ipam",  # inside the state root, but not a live lesson
        "abc\0defghi",
        "abcdefghi\n",
        "ABCDEFGHIJ",
        "x" * 10_000,
        "",
        123,
        None,
        ["abcdefghij"],
        {"id": "abcdefghij"},
        True,
    ]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


def test_hostile_task_arguments_are_refused_and_touch_nothing(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], tmp_path: Path
) -> None:
    settings = settings_for()
    state_root = settings.state_dir / settings.instance
    # canaries: a folder and a file outside the state root, and things inside it that are no live lesson
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "sub" / "precious.txt").write_text("keep me")
    canary_file = tmp_path / "canary.txt"
    canary_file.write_text("keep me too")
    (state_root / "lessons").mkdir(parents=True)
    (state_root / "ipam" / "lsnsomething").mkdir(parents=True)
    (state_root / "ipam" / "lsnsomething" / "lease").write_text("x")
    # a symlink planted where a live-lesson folder would be, under a valid id: destroy must not follow it
    planted = new_id()
    (state_root / "lessons" / planted).symlink_to(canary, target_is_directory=True)
    before_outside = _snapshot(canary) | {"file": canary_file.read_text()}
    before_inside = _snapshot(state_root)

    worker = start_worker(settings)
    app = sender(settings)
    results = []
    for task in STEP_TASKS:
        for value in [*hostile_ids(canary, state_root), str(canary_file), planted]:
            results.append((task, value, app.send_task(task, args=[value])))
    # lessons.request with hostile lesson and session values: refused as answers, no record made
    bad_requests = [([1], "s1"), ("busybox-triangle", {"a": 1}), ("x" * 10_000, "s1"), ("busybox-triangle", "../x"),
                    ("busybox-triangle", "s" * 10_000), (None, None)]  # fmt: skip
    answers = [app.send_task("lessons.request", args=list(args)).get(timeout=60) for args in bad_requests]
    for task, value, result in results:
        result.get(timeout=60, propagate=False)  # every message was consumed and finished (no retry loop)
        assert result.state in {"SUCCESS", "FAILURE"}, (task, value, result.state)

    assert all(answer["ok"] is False for answer in answers), answers
    assert {a["error"]["kind"] for a in answers} == {"InvalidRequest"}, answers
    assert all(len(a["error"]["message"]) < 400 for a in answers), "an error echoes a huge value"
    store = Store.from_settings(settings)
    assert store.all() == [], "a hostile request made a record"

    assert canary.is_dir() and _snapshot(canary) | {"file": canary_file.read_text()} == before_outside
    assert _snapshot(state_root) == before_inside
    assert (state_root / "lessons" / planted).is_symlink()

    # every refusal is logged as one JSON line naming the task
    refused = [json.loads(line) for line in worker.log_file.read_text().splitlines()
               if line.startswith("{") and "task argument refused" in line]  # fmt: skip
    # the planted id is valid: it is refused later (no record, and the backend does not list it)
    invalid = len(STEP_TASKS) * (len(hostile_ids(canary, state_root)) + 1)
    assert len(refused) == invalid, worker.log_tail(40)
    assert all(r["level"] == "error" and r["task"].startswith("lessons.") for r in refused)
    assert all(len(line) < 1000 for line in worker.log_file.read_text().splitlines() if "refused" in line)


def test_a_real_lesson_still_runs_beside_hostile_messages(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], tmp_path: Path
) -> None:
    """Refusals do not disturb real work: a lesson requested between hostile messages comes up, and a
    hostile teardown naming an absolute path to its state folder does not take it down."""
    settings = settings_for(catalog=TRIANGLE)
    start_worker(settings)
    app = sender(settings)
    answer = app.send_task("lessons.request", args=["busybox-triangle", "s1"]).get(timeout=60)
    assert answer["ok"], answer
    livelesson = answer["record"]["id"]
    folder = settings.state_dir / settings.instance / "lessons" / livelesson
    for value in (str(folder), f"../lessons/{livelesson}", f"{livelesson}/..", f"./{livelesson}"):
        app.send_task("lessons.teardown", args=[value])
    store = Store.from_settings(settings)
    record = wait_for(store, livelesson, {"ready", "failed"}, timeout=90)
    assert record.status == "ready", record.error
    assert folder.is_dir()
    app.send_task("lessons.teardown", args=[livelesson]).get(timeout=60)
    assert wait_for(store, livelesson, {"deleted"}).status == "deleted"
    assert not folder.exists()


def test_backend_and_store_refuse_hostile_ids_directly(settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    """The last line of defence, for callers that skip the task layer (the CLI, the demo, a future task)."""
    from scheduler.core.errors import InvalidRequest, PermanentError

    settings = settings_for()
    backend = LocalBackend(instance=settings.instance, state_dir=settings.state_dir)
    store = Store.from_settings(settings)
    canary = tmp_path / "canary"
    canary.mkdir()
    for value in ("/", "..", "../../x", str(canary), "a" * 11, "abc/defghi"):
        with pytest.raises(InvalidRequest):
            backend.destroy(value)
        with pytest.raises(InvalidRequest):
            store.get(value)
    # a valid id whose folder is a symlink out of the state root: refused, nothing followed
    planted = new_id()
    lessons = settings.state_dir / settings.instance / "lessons"
    lessons.mkdir(parents=True)
    (lessons / planted).symlink_to(canary, target_is_directory=True)
    (canary / "x").write_text("x")
    with pytest.raises(PermanentError, match="outside"):
        backend.destroy(planted)
    assert (canary / "x").read_text() == "x"
    assert planted not in backend.list()
