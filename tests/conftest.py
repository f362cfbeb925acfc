"""Shared fixtures: a private redis-server per session, unique instances, real worker processes.

Only fixtures live here (pytest finds them here); their helpers, and every helper a test or a benchmark
imports, are in tests/support (see tests/README.md). Tests that need root, a tool or a service skip with a
reason when run by hand without it; under CI=true such a skip is a failure (see ``tests.support.prereqs``).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.dev.redis_server import PrivateRedis
from scheduler.settings import Settings
from tests.support.ids import unique
from tests.support.leftovers import cleanup_instance
from tests.support.lessons import CATALOG
from tests.support.prereqs import is_root, needs
from tests.support.processes import start_celery


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the test cluster's fixtures ``cluster``, so a run can take them apart
    (`-m cluster`, `-m "not cluster"`). The contract suite's kubernetes param, which asks for them at run
    time, carries the mark itself (tests/contract/conftest.py)."""
    for item in items:
        if "k8s_kubeconfig" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
def root() -> None:
    needs(is_root(), "needs root, iproute2 and containernetworking-plugins")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    needs(shutil.which("redis-server") is not None, "needs redis-server")
    # with a password, as every deployment has one: every test's client, worker and API must carry it
    server = PrivateRedis(directory=tmp_path_factory.mktemp("redis"), password=secrets.token_hex(16))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image store with busybox, built once per session from Debian's busybox-static (as `make demo` does).

    Every test's settings use it: the lessons in config/lessons run busybox as real containers."""
    from workers.backends.local.image_store import ImageStore

    for tool in ("runc", "umoci", "skopeo", "busybox"):
        needs(shutil.which(tool) is not None, f"needs {tool} (apt-get install runc umoci skopeo busybox-static)")
    path = tmp_path_factory.mktemp("images")
    ImageStore(path).build_busybox()
    return path


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[str]:
    """A unique LESSON_INSTANCE; whatever it left in the kernel is removed after the test, pass or fail."""
    name = unique()
    yield name
    cleanup_instance(name, tmp_path / "state")


@pytest.fixture
def settings_for(
    redis_server: PrivateRedis, instance: str, tmp_path: Path, image_dir: Path
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": redis_server.url,
            "instance": instance,
            "state_dir": tmp_path / "state",
            "image_dir": image_dir,
            "catalog": CATALOG,
            "log_format": "json",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., CeleryProcess]]:
    started: list[CeleryProcess] = []

    def start(settings: Settings, kind: str = "worker", concurrency: int = 2, **env: str) -> CeleryProcess:
        log = tmp_path / f"{kind}-{len(started)}.log"
        started.append(start_celery(settings, log, kind, concurrency, name=unique("w"), **env))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()
