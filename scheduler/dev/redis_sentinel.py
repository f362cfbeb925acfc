"""A private Redis Sentinel group on loopback: a primary, replicas and sentinels, each on a free port.

For the tests, the failover soak and the benchmarks: what compose's ``sentinel`` profile runs, on one host.
Every process takes the one password from a file only this user can read (never a command line), and
every one is stopped by the PID this object started.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from scheduler.core.errors import PrerequisiteMissing, TemporaryError
from scheduler.dev.redis_server import PrivateRedis, free_port, stop_process

__all__ = ["SentinelGroup"]

MASTER = "lessons"


class SentinelGroup:
    """``start()`` (or ``with``) brings up the primary, ``replicas`` replicas and ``sentinels`` sentinels.

    ``down_after_ms`` is 3 s: with 1 s, a primary that was busy for a second on a loaded machine (a full
    resync's fork, just after its promotion) was declared down while it still served, and a second
    failover left two primaries for seconds (found by the failover soak)."""

    def __init__(
        self,
        *,
        password: str,
        directory: Path | None = None,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 3000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.password = password
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="lessons-sentinel-"))
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        primary = PrivateRedis(directory=self.directory / "redis-0", aof=True, password=password)
        self.servers = [primary] + [
            PrivateRedis(directory=self.directory / f"redis-{i}", aof=True, password=password, replica_of=primary.port)
            for i in range(1, replicas + 1)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    # --- what clients are given -----------------------------------------------------------------------

    @property
    def sentinels(self) -> str:
        """LESSON_REDIS_SENTINELS for this group."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    @property
    def url(self) -> str:
        """LESSON_REDIS_URL: with sentinels it gives the password and database only."""
        return f"redis://:{self.password}@127.0.0.1:{self.servers[0].port}/0"

    def settings(self) -> dict[str, Any]:
        """The Settings fields a process needs to use this group."""
        return {"redis_url": self.url, "redis_sentinels": self.sentinels, "redis_master": MASTER}

    def environment(self) -> dict[str, str]:
        return {f"LESSON_{key.upper()}": str(value) for key, value in self.settings().items()}

    # --- life -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise PrerequisiteMissing("redis-sentinel is not installed: apt-get install redis-sentinel")
        try:
            for server in self.servers:
                server.start()
            for index, port in enumerate(self.sentinel_ports):
                self._sentinels.append(self._start_sentinel(binary, index, port))
            self._wait_settled(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_sentinel(self, binary: str, index: int, port: int) -> subprocess.Popen[bytes]:
        folder = self.directory / f"sentinel-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # sentinel rewrites it with what it learns: it must be its own file
        config.touch(mode=0o600)
        pw = self.password
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"requirepass {pw}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.servers[0].port} {max(1, len(self.sentinel_ports) // 2 + 1)}\n"
            f"sentinel auth-pass {MASTER} {pw}\nsentinel sentinel-pass {pw}\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
        )
        return subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ask(self, port: int) -> redis.Redis[str]:
        return redis.Redis(port=port, password=self.password, socket_timeout=1, decode_responses=True)

    def primary_port(self) -> int | None:
        """The primary's port as a majority of the sentinels that answer name it; None while they disagree."""
        votes: dict[int, int] = {}
        for port in self.sentinel_ports:
            try:
                address = self._ask(port).sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            if address:
                votes[int(address[1])] = votes.get(int(address[1]), 0) + 1
        winner = max(votes, key=lambda k: votes[k], default=None)
        return winner if winner is not None and votes[winner] > len(self.sentinel_ports) // 2 else None

    def server(self, port: int) -> PrivateRedis:
        return next(s for s in self.servers if s.port == port)

    def _wait_settled(self, timeout: float) -> None:
        """Until the sentinels know each other and every replica, and the replicas are in sync."""
        deadline = time.monotonic() + timeout
        want_sentinels = len(self.sentinel_ports) - 1
        while time.monotonic() < deadline:
            try:
                views = [self._ask(p).sentinel_master(MASTER) for p in self.sentinel_ports]  # type: ignore[no-untyped-call]
                ready = all(
                    int(v["num-other-sentinels"]) >= want_sentinels and int(v["num-slaves"]) >= len(self.servers) - 1
                    for v in views
                )
                if ready and self.in_sync():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TemporaryError(f"the sentinel group in {self.directory} did not settle in {timeout:.0f}s")

    def in_sync(self) -> bool:
        """Every live replica of the current primary is connected and streaming."""
        port = self.primary_port()
        if port is None:
            return False
        role = self._ask(port).execute_command("ROLE")
        live = sum(1 for s in self.servers if s.proc is not None) - 1
        return bool(role[0] == "master" and len(role[2]) >= live)

    def kill_primary(self) -> int:
        """SIGKILL the current primary (the host lost); returns its port."""
        port = self.primary_port()
        if port is None:
            raise TemporaryError("the sentinels do not agree on a primary")
        self.server(port).kill()
        return port

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Until a majority of sentinels name a primary other than ``old`` and it accepts writes; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old:
                try:
                    if self._ask(port).execute_command("ROLE")[0] == "master":
                        return port
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        raise TemporaryError(f"no replica was promoted within {timeout:.0f}s of losing the primary on {old}")

    def restart(self, port: int) -> None:
        """Start a stopped server again on its port, with its data; sentinels make it a replica of the primary."""
        self.server(port).start()

    def role(self, port: int) -> str:
        return str(self._ask(port).execute_command("ROLE")[0])

    def stop(self) -> None:
        for proc in self._sentinels:
            stop_process(proc)
        self._sentinels = []
        for server in self.servers:
            server.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()
