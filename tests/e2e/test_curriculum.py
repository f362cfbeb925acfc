"""The whole NRE Labs curriculum (tests/data/antidote-curriculum, a copy of ../shared/antidote-curriculum) on the
local backend, as a user would run it, as root:

- every lesson through ``lessonctl demo CATALOG --lesson SLUG`` (its own private Redis and worker each time):
  exit 0, ``ready``, every link pinged both ways, or "no links to ping" for a lesson without connections;
- every lesson through the HTTP API (``lessonctl serve`` and a real Celery worker, one stack): POST, ready,
  DELETE, deleted, and nothing left in the kernel, on disk or running.

On the local backend pods are stand-in processes (emulated), so the curriculum's images (vqfx, crpd, ...)
need not run here. tests/k8s/test_curriculum_k8s.py walks the same corpus through the API on the
kubernetes backend.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.settings import Settings
from tests.support.curriculum import LESSONS, walk_through_api
from tests.support.leftovers import leftovers
from tests.support.lessons import CURRICULUM
from tests.support.processes import ApiServer

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("root")]

LESSONCTL = Path(sys.executable).with_name("lessonctl")


def test_the_corpus_is_the_whole_curriculum() -> None:
    """Every lesson folder loads (none is dropped on the way), with and without connections."""
    folders = sorted(p.parent.name for p in (CURRICULUM / "lessons").glob("*/lesson.meta.yaml"))
    assert sorted(LESSONS) == folders
    assert len(folders) == 17
    assert any(not lesson.connections for lesson in LESSONS.values())
    assert any(lesson.connections for lesson in LESSONS.values())


@pytest.mark.parametrize("slug", list(LESSONS))
def test_every_curriculum_lesson_passes_lessonctl_demo(
    slug: str, tmp_path: Path, instance: str, image_dir: Path
) -> None:
    lesson = LESSONS[slug]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    env.update({"LESSON_INSTANCE": instance, "LESSON_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"})
    # real containers; the lessons' images cannot be had here, so busybox runs in their place, as asked
    env.update({"LESSON_IMAGE_DIR": str(image_dir), "LESSON_IMAGE_SUBSTITUTE": "busybox"})
    proc = subprocess.run(
        [str(LESSONCTL), "demo", str(CURRICULUM), "--lesson", slug],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pings = 2 * len(lesson.connections)
    pairs = len({(c.a, c.b) for c in lesson.connections} | {(c.b, c.a) for c in lesson.connections})
    summary = "no links to ping" if pings == 0 else f"{pings}/{pings} pings passed, {pairs}/{pairs} by name"
    assert re.search(rf"^ready in \d+ ms: {re.escape(summary)}$", proc.stdout, re.MULTILINE), proc.stdout
    assert "torn down: status deleted, nothing left behind" in proc.stdout, proc.stdout
    for endpoint in lesson.endpoints:
        assert endpoint.name in proc.stdout, (endpoint.name, proc.stdout)


# --- through the HTTP API ----------------------------------------------------------------------------------


def test_every_curriculum_lesson_through_the_http_api(
    settings_for: Callable[..., Settings],
    start_worker: Callable[..., CeleryProcess],
    instance: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(catalog=CURRICULUM, image_substitute="busybox")
    start_worker(settings)
    server = ApiServer(settings, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            listed = api.get("/v1/lessons")
            assert listed.status_code == 200
            assert sorted(item["slug"] for item in listed.json()) == sorted(LESSONS)
            finals = walk_through_api(api, LESSONS, backend="local", timeout=90, in_flight=4)
    finally:
        server.stop()
    assert len(finals) == len(LESSONS)
    for final in finals:
        assert leftovers(instance, final["id"], settings.state_dir) == [], final["lesson"]


def test_a_curriculum_image_that_cannot_be_had_fails_fast_naming_it(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess], tmp_path: Path
) -> None:
    """Without the substitution, never silently: the lesson fails at schedule_pods, naming the image and the
    ways to provide it, within seconds (no registry is reachable here; a pull that cannot connect ends)."""
    settings = settings_for(catalog=CURRICULUM)
    start_worker(settings)
    server = ApiServer(settings, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            created = api.post("/v1/livelessons", json={"lesson": "linux-basics", "session": "s-noimage"})
            assert created.status_code == 202, created.text
            livelesson = created.json()["id"]
            final = api.get(f"/v1/livelessons/{livelesson}", params={"wait_for": "failed", "timeout": 60}).json()
    finally:
        server.stop()
    assert final["status"] == "failed", final
    assert final["error"]["step"] == "schedule_pods"
    message = final["error"]["message"]
    assert "image docker.io/antidotelabs/utility:latest is not available" in message, message
    assert "lessonctl images import" in message and "LESSON_IMAGE_SUBSTITUTE=busybox" in message
