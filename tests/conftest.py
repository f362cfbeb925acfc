"""Shared fixtures: a private redis-server per session, unique instances, real worker processes.

Tests that need root, a tool or a service skip with a reason when run by hand without it; under CI=true
such a skip is a failure (see ``needs``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scheduler import naming
from scheduler.redis_server import PrivateRedis
from scheduler.settings import Settings
from workers.backends import netns
from workers.launcher import CeleryProcess

REPO = Path(__file__).resolve().parent.parent
CURRICULUM = REPO / "tests" / "data" / "antidote-curriculum"
TRIANGLE = REPO / "config" / "lessons" / "busybox-triangle.yaml"
IN_CI = os.environ.get("CI", "").lower() == "true"


def needs(condition: bool, reason: str) -> None:
    """Skip without ``condition`` when run by hand; under CI=true a missing prerequisite fails the test."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI=true: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0 and Path("/usr/lib/cni/bridge").exists() and shutil.which("ip") is not None


@pytest.fixture
def root() -> None:
    needs(is_root(), "needs root, iproute2 and containernetworking-plugins")


def unique(prefix: str = "t") -> str:
    return prefix + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    needs(shutil.which("redis-server") is not None, "needs redis-server")
    # with a password, as every deployment has one: every test's client, worker and API must carry it
    server = PrivateRedis(directory=tmp_path_factory.mktemp("redis"), password=secrets.token_hex(16))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[str]:
    """A unique LESSON_INSTANCE; whatever it left in the kernel is removed after the test, pass or fail."""
    name = unique()
    yield name
    cleanup_instance(name, tmp_path / "state")


def cleanup_instance(name: str, state_dir: Path) -> None:
    from workers.backends.local import LocalBackend

    backend = LocalBackend(instance=name, state_dir=state_dir)
    for livelesson in backend.list():
        with contextlib.suppress(Exception):  # the sweep below removes what destroy could not
            backend.destroy(livelesson)
    # stop pod processes of this instance (their argv carries the mark), by PID
    mark = naming.instance_mark(name).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), 9)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    for ns in netns.names():
        if ns.startswith(f"{name}-"):
            netns.delete(ns)
    shutil.rmtree(state_dir / name, ignore_errors=True)


@pytest.fixture
def settings_for(redis_server: PrivateRedis, instance: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": redis_server.url,
            "instance": instance,
            "state_dir": tmp_path / "state",
            "catalog": REPO / "config" / "lessons",
            "log_format": "json",
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as LESSON_ variables, for worker processes."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LESSON_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., CeleryProcess]]:
    started: list[CeleryProcess] = []

    def start(settings: Settings, kind: str = "worker", concurrency: int = 2, **env: str) -> CeleryProcess:
        log = tmp_path / f"{kind}-{len(started)}.log"
        proc = CeleryProcess(
            kind, env={**settings_env(settings), **env}, log_file=log, concurrency=concurrency, name=unique("w")
        )
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()
