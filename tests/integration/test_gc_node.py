"""The node namespace outlives its last lesson, like a Kubernetes node, until a GC pass finds it empty;
`lessonctl gc` says when it removes it (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scheduler.core.plan import make_plan
from scheduler.core.records import new_id
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support import netns_tools as netns
from tests.support.lessons import TRIANGLE
from tests.support.processes import settings_env
from workers.backends.local import LocalBackend

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]


def _gc(settings: Settings) -> list[str]:
    lessonctl = Path(sys.executable).with_name("lessonctl")
    env = {**os.environ, **settings_env(settings), "LESSON_LOG_FORMAT": "console", "COLUMNS": "200"}
    proc = subprocess.run([str(lessonctl), "gc"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_gc_removes_the_empty_node_and_says_so(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for()
    store = Store.from_settings(settings)
    backend = LocalBackend(
        instance=settings.instance, state_dir=settings.state_dir, deployment=store.deployment(), pods="emulated"
    )
    lesson = next(iter(load_catalog(TRIANGLE)))
    plan = make_plan(lesson, new_id(), "s1", instance=settings.instance, deployment=store.deployment())
    node = plan.node_netns
    backend.apply_networks(plan)
    backend.apply_pods(plan)
    # a lesson with no record is an orphan: the pass destroys it, then finds the node empty and removes it
    first = _gc(settings)
    assert first[-1].split()[-2:] == ["orphan=1", "node_removed=1"], first
    assert "node namespace was removed" in " ".join(first)
    assert not netns.exists(node)
    again = _gc(settings)
    assert again[-1].endswith("node_removed=0") and len(again) == 1, again
