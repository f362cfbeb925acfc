"""The real processes a test or benchmark runs: ``lessonctl serve``, Flower, Celery workers and beat.

Each starts on a free loopback port (where it has one), waits until it answers, and is stopped by its own
PID; ``settings_env`` hands a test's settings to a process as LESSON_ variables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from lessonctl.celery_process import CeleryProcess
from scheduler.dev.redis_server import free_port
from scheduler.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as LESSON_ variables, for worker processes."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"LESSON_{name.upper()}"] = str(value)
    return env


def start_celery(
    settings: Settings, log_file: Path, kind: str = "worker", concurrency: int = 2, name: str = "lessons", **env: str
) -> CeleryProcess:
    """A started Celery ``kind`` (worker or beat) with ``settings`` and ``env`` in its environment."""
    proc = CeleryProcess(
        kind, env={**settings_env(settings), **env}, log_file=log_file, concurrency=concurrency, name=name
    )
    return proc.start()


class ApiServer:
    """``lessonctl serve`` as a subprocess on a free loopback port."""

    def __init__(self, settings: Settings, log_file: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        lessonctl = Path(sys.executable).with_name("lessonctl")
        self.log_file = log_file
        self._log = log_file.open("ab")
        self.proc = subprocess.Popen(
            [str(lessonctl), "serve", "--port", str(self.port)],
            env={**os.environ, **settings_env(settings), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"API did not start: {log_file.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Flower:
    """``celery -A workers.app flower`` on a free loopback port, with basic auth; stopped by its own PID."""

    def __init__(self, settings: Settings, log_file: Path, auth: tuple[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        self.log_file = log_file
        self._log = log_file.open("ab")
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "flower", f"--port={self.port}",
                "--address=127.0.0.1"]  # fmt: skip
        # credentials from the environment, as compose.yaml gives them: never on a command line
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        env["FLOWER_BASIC_AUTH"] = f"{auth[0]}:{auth[1]}"
        self.proc = subprocess.Popen(
            argv, env={**env, **settings_env(settings)}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"flower did not start: {log_file.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, auth=self.auth, timeout=15)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
