"""Start and stop Celery worker and beat processes (the demo, the tests and the benchmarks use it)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from celery import Celery
from celery.utils.nodenames import host_format

__all__ = ["CeleryProcess", "WorkerNotReady"]


class WorkerNotReady(Exception):
    """The worker exited, or did not answer a control ping in time."""


class CeleryProcess:
    """One ``celery -A workers.app worker|beat`` process; stopped only by the PID it was started with."""

    def __init__(
        self,
        kind: str = "worker",
        *,
        env: Mapping[str, str],
        log_file: Path,
        concurrency: int = 2,
        name: str = "lessons",
        extra: list[str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.kind = kind
        self.name = name
        self.env = {**os.environ, **env}
        self.log_file = log_file
        argv = [sys.executable, "-m", "celery", "-A", "workers.app", "--quiet", kind, "--loglevel", "INFO"]
        if kind == "worker":
            argv += ["-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-E"]
        else:
            argv += ["--schedule", str(log_file.with_suffix(".schedule"))]
        self.argv = argv + (extra or [])
        if die_with_parent:
            # SIGTERM when the process that started it dies, even by SIGKILL: a demo killed mid-run leaves
            # no worker behind (util-linux's setpriv sets the parent-death signal, which exec keeps)
            self.argv = ["setpriv", "--pdeathsig", "TERM", *self.argv]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> CeleryProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        # its own process group, so a stop reaches the prefork children and nothing else
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def nodename(self) -> str:
        """The worker's Celery node name, ``<name>@<hostname>``, as the worker expands ``%h``."""
        return str(host_format(f"{self.name}@%h"))

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> float:
        """Block until this worker answers a control ping (Celery's control API, to its node name only).

        A worker answers once its consumer's event loop runs, which is when it takes tasks from the queue
        (the pool and the task consumer start before the control consumer). Returns the seconds waited;
        WorkerNotReady if the process exits or ``timeout`` passes first.
        """
        if self.kind != "worker":
            raise ValueError("only a worker answers control pings")
        started = time.monotonic()
        node = self.nodename
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise WorkerNotReady(f"worker {node} exited (code {code}) before it was ready")
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise WorkerNotReady(f"worker {node} did not answer a control ping within {timeout:.0f} s")
            # a ping sent before the worker declared its control queue is lost: ask again, briefly each time
            replies = app.control.ping(destination=[node], timeout=min(0.25, left))
            if any(node in reply for reply in replies or ()):
                return time.monotonic() - started

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def children(self) -> list[int]:
        """PIDs of the pool processes (the ones a test SIGKILLs mid-step)."""
        if self.proc is None:
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(p) for p in text.split()]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the main process only, as a crash would (its pool children notice and exit)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown of the main process and its pool
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        else:
            # the main process is gone: end any pool children it left in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
