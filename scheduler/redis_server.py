"""A private ``redis-server`` on a free loopback port, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from scheduler.errors import PrerequisiteMissing, TemporaryError

__all__ = ["PrivateRedis", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """Start with :meth:`start` (or ``with``); :meth:`stop` ends only the process this object started."""

    def __init__(
        self, *, port: int | None = None, directory: Path | None = None, aof: bool = False, password: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="lessons-redis-"))
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise PrerequisiteMissing("redis-server is not installed: apt-get install redis-server")
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            # from a file only this user can read, never the command line (`ps` shows argv to everyone)
            self.directory.mkdir(parents=True, exist_ok=True)
            auth = self.directory / "auth.conf"
            auth.touch(mode=0o600)
            auth.write_text(f"requirepass {self.password}\n")
            argv += ["--include", str(auth)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-500:] if self._own_dir else ""
                self.stop()
                raise TemporaryError(f"redis-server on port {self.port} did not start: {log}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
