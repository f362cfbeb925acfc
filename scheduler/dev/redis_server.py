"""A private ``redis-server`` on a free loopback port, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from scheduler.core.errors import PrerequisiteMissing, TemporaryError

__all__ = ["PrivateRedis", "free_port", "stop_process"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process this object started, SIGKILL after ``grace`` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PrivateRedis:
    """Start with :meth:`start` (or ``with``); :meth:`stop` ends only the process this object started."""

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: Path | None = None,
        aof: bool = False,
        password: str | None = None,
        tls: bool = False,
        replica_of: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.replica_of = replica_of
        self.password = password
        self.tls = tls
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="lessons-redis-"))
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            # redis-py, kombu and Celery's result backend all read these from the URL
            query = f"ssl_cert_reqs=required&ssl_ca_certs={self.directory / 'tls' / 'ca.crt'}"
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _make_certificates(self) -> list[str]:
        """A throw-away CA and a server certificate for 127.0.0.1 (openssl); the options that serve TLS only."""
        folder = self.directory / "tls"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=lesson-scheduler test CA"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext"],
        ]  # fmt: skip
        openssl = shutil.which("openssl")
        if openssl is None:
            raise PrerequisiteMissing("openssl is not installed: apt-get install openssl")
        for step in steps:
            subprocess.run([openssl, *step], cwd=folder, check=True, capture_output=True, timeout=60)
        return [
            "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(folder / "server.crt"),
            "--tls-key-file", str(folder / "server.key"), "--tls-ca-cert-file", str(folder / "ca.crt"),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

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
            # a replica authenticates to its primary, and any of them may be promoted: same password both ways
            auth.write_text(f"requirepass {self.password}\nmasterauth {self.password}\n")
            argv += ["--include", str(auth)]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.tls:
            argv = [a for i, a in enumerate(argv) if not (a == "--port" or (i > 0 and argv[i - 1] == "--port"))]
            argv += self._make_certificates()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
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
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the host lost, no shutdown save (the AOF keeps what its last fsync wrote)."""
        if self.proc is not None and self.proc.poll() is None:
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
