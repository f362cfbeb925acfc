"""The whole NRE Labs curriculum through the HTTP API on the kubernetes backend: ``lessonctl serve`` and a real
Celery worker (LESSON_BACKEND=kubernetes, the worker's ServiceAccount, never cluster-admin) on a real Redis,
against the test cluster. Every lesson, with or without connections: POST, ready, DELETE, deleted, and no
namespace of the instance left. The pods run as real containers on the test cluster's real node, with the
local busybox image in place of the curriculum's (LESSON_IMAGE_SUBSTITUTE, which the record reports).

tests/e2e/test_curriculum.py walks the same corpus on the local backend (and through ``lessonctl demo``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.settings import Settings
from tests.support.curriculum import LESSONS, walk_through_api
from tests.support.k8s import Kubectl, namespaces_of
from tests.support.lessons import CURRICULUM
from tests.support.processes import ApiServer

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_every_curriculum_lesson_through_the_http_api_on_kubernetes(
    settings_for: Callable[..., Settings],
    start_worker: Callable[..., CeleryProcess],
    direct_worker_kubeconfig: Path,
    k8s_kubectl: Kubectl,
    instance: str,
    k8s_cleanup: list[str],
    tmp_path: Path,
) -> None:
    settings = settings_for(
        backend="kubernetes",
        kubeconfig=direct_worker_kubeconfig,
        catalog=CURRICULUM,
        provision_timeout_seconds=180,
        image_substitute="busybox",
    )
    start_worker(settings, concurrency=4)
    server = ApiServer(settings, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            # four lessons at a time, as learners arrive together: the node starts their pods side by side
            finals = walk_through_api(api, LESSONS, backend="kubernetes", timeout=150, in_flight=4)
    finally:
        server.stop()
    assert [final["lesson"] for final in finals] == list(LESSONS)
    assert all(final["namespace"].startswith(f"{instance}-") for final in finals)
    assert namespaces_of(k8s_kubectl, instance) == []
