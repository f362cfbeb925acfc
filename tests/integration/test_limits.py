"""Closed by default and bounded (issue 11): the API off loopback only with a token, Redis only with its
password, a lifetime no keepalive extends, listing by pages, and /metrics from kept gauges."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from scheduler.client import Client
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.leftovers import cleanup_instance
from tests.support.prereqs import needs
from tests.support.processes import settings_env

LESSONCTL = str(Path(sys.executable).with_name("lessonctl"))


def _serve(settings: Settings, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    env.pop("LESSON_API_TOKEN", None)
    if token is not None:
        env["LESSON_API_TOKEN"] = token
    return subprocess.run([LESSONCTL, "serve", *args], env=env, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_serve_refuses_a_non_loopback_bind_without_a_token(settings_for: Callable[..., Settings], host: str) -> None:
    proc = _serve(settings_for(), "--host", host, "--port", "1")
    assert proc.returncode == 2, proc.stderr
    assert "LESSON_API_TOKEN" in proc.stderr and host in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_with_a_token_binds_anywhere_and_without_one_on_loopback(settings_for: Callable[..., Settings]) -> None:
    """The refusal is about the token only: with one, a non-loopback bind serves; without, loopback does."""
    from scheduler.dev.redis_server import free_port

    for host, token in (("0.0.0.0", "t0ken"), ("127.0.0.1", None), ("::1", None), ("localhost", None)):
        env = {**os.environ, **settings_env(settings_for())}
        env.pop("LESSON_API_TOKEN", None)
        if token:
            env["LESSON_API_TOKEN"] = token
        port = free_port()
        proc = subprocess.Popen([LESSONCTL, "serve", "--host", host, "--port", str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            time.sleep(1.5)
            assert proc.poll() is None, (host, proc.stderr.read() if proc.stderr else "")
        finally:
            proc.terminate()
            proc.wait(10)


def test_redis_refuses_clients_without_its_password(tmp_path: Path) -> None:
    with PrivateRedis(directory=tmp_path / "redis", password="0123abcd") as server:
        assert "0123abcd" not in " ".join(Path(f"/proc/{server.proc.pid}/cmdline").read_text().split("\0"))  # type: ignore[union-attr]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port).set("x", 1)
        assert redis.Redis.from_url(server.url).set("x", 1)


def test_keepalive_never_extends_past_the_lifetime(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(ttl_seconds=60, max_lifetime_seconds=90)
    store = Store.from_settings(settings)
    record = store.create("busybox-triangle", "life", backend="local").record
    cap = record.created_at + timedelta(seconds=90)
    assert record.expires_at == record.created_at + timedelta(seconds=60)
    for _ in range(3):
        record = store.keepalive(record.id)
        assert record.expires_at <= cap

    # pretend time has moved on: the keepalive clamps to the cap, GC's expiry index holds the same
    def older(rec):  # type: ignore[no-untyped-def]
        rec.created_at -= timedelta(seconds=45)
        return rec

    store.update(record.id, older)
    record = store.keepalive(record.id)
    assert record.expires_at == record.created_at + timedelta(seconds=90)
    score = store.r.zscore(store._k("expiry"), record.id)
    assert score == pytest.approx(record.expires_at.timestamp())
    # a lifetime shorter than the TTL: the first expiry is already the cap
    short = Store.from_settings(settings.model_copy(update={"max_lifetime_seconds": 30}))
    rec2 = short.create("busybox-triangle", "short", backend="local").record
    assert rec2.expires_at == rec2.created_at + timedelta(seconds=30)


def test_listing_is_paged_and_status_gauges_follow_every_write(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(max_per_session=100)
    store = Store.from_settings(settings)
    made = [store.create("busybox-triangle", f"p{i}", backend="local").record for i in range(25)]
    seen, cursor, pages = [], None, 0
    while True:
        records, cursor = store.page(limit=10, before=cursor)
        seen += [r.id for r in records]
        pages += 1
        if cursor is None:
            break
    assert pages == 3 and seen == [r.id for r in reversed(made)]  # newest first, each once
    assert store.status_counts() == {"requested": 25}
    for r in made[:5]:
        store.transition(r.id, {"requested"}, "creating_networks")
    for r in made[5:8]:
        store.transition(r.id, {"requested"}, "failed")
    assert store.status_counts() == {"requested": 17, "creating_networks": 5}
    # the gauges agree with the records themselves
    actual: dict[str, int] = {}
    for r in store.all():
        if r.status not in {"failed", "deleted"}:
            actual[r.status] = actual.get(r.status, 0) + 1
    assert store.status_counts() == actual
    # records that Redis expired drop out of the index as a page meets them
    store.r.delete(store.key(made[0].id))
    assert made[0].id not in [r.id for r in store.page(limit=100)[0]]
    assert store.r.zscore(store._k("created"), made[0].id) is None


@pytest.mark.slow
@pytest.mark.usefixtures("root")
def test_a_whole_lesson_over_tls_redis(
    settings_for: Callable[..., Settings], start_worker: Callable[..., object], tmp_path: Path
) -> None:
    """`rediss://` end to end: the client, the worker's broker and result backend, the store."""
    needs(shutil.which("openssl") is not None, "needs openssl")
    with PrivateRedis(directory=tmp_path / "redis-tls", password="0123abcd", tls=True) as server:
        assert server.url.startswith("rediss://")
        with pytest.raises(redis.ConnectionError):  # plain text to the TLS port
            redis.Redis(port=server.port, password="0123abcd", socket_timeout=2).ping()
        settings = settings_for(redis_url=server.url)
        start_worker(settings)
        client = Client(settings)
        try:
            record = client.request_lesson("busybox-triangle", "tls")
            record = client.wait(record.id, 90)
            assert record.status == "ready", record.error
            client.delete(record.id)
            assert client.wait(record.id, 60, until=frozenset({"deleted"})).status == "deleted"
        finally:
            cleanup_instance(settings.instance, settings.state_dir)
