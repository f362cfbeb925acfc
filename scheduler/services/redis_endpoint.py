"""Where Redis is: one server at ``LESSON_REDIS_URL``, or the primary a group of Redis Sentinels names.

Every process (API, workers, beat, the Python client, ``lessonctl``) asks here, so a deployment switches to
Sentinel with two settings and nothing else: redis-py's ``Sentinel`` for the store and the status channel,
kombu's ``sentinel://`` transport and Celery's sentinel result backend for the queue. With sentinels the URL
still gives the password (the primary's, its replicas' and the sentinels' own: one secret, so a sentinel
is never an unauthenticated way in) and the database; its host is not used.

Clients follow a failover by themselves: a connection to a lost primary fails, and the next one asks the
sentinels again (a primary turned replica answers writes with READONLY, which redis-py treats the same).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import parse_url

from scheduler.settings import Settings

__all__ = ["PrimaryFollower", "celery_endpoints", "connect", "connect_async"]

# short timeouts: a Redis outage must surface as an error (503, a retry), not a hung request
_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}


def _credentials(settings: Settings) -> dict[str, Any]:
    parsed = parse_url(settings.redis_url)
    return {k: parsed[k] for k in ("username", "password", "db") if parsed.get(k) is not None}


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    credentials = _credentials(settings)
    auth: dict[str, Any] = {k: credentials[k] for k in ("username", "password") if k in credentials}
    return {**auth, **_TIMEOUTS}


def connect(settings: Settings) -> redis.Redis[str]:
    """A client of the primary: of LESSON_REDIS_URL, or whichever server the sentinels name at each connect."""
    if not settings.sentinels:
        return redis.Redis.from_url(settings.redis_url, health_check_interval=15, decode_responses=True, **_TIMEOUTS)
    group = redis.sentinel.Sentinel(list(settings.sentinels), sentinel_kwargs=_sentinel_kwargs(settings), **_TIMEOUTS)
    return group.master_for(
        settings.redis_master,
        redis_class=redis.Redis,
        decode_responses=True,
        health_check_interval=15,
        **_credentials(settings),
    )


def connect_async(settings: Settings) -> redis.asyncio.Redis[str]:
    """The asyncio twin of :func:`connect` (the API's status subscription)."""
    if not settings.sentinels:
        return redis.asyncio.Redis.from_url(
            settings.redis_url, decode_responses=True, health_check_interval=15, socket_connect_timeout=2
        )
    group = redis.asyncio.sentinel.Sentinel(
        list(settings.sentinels), sentinel_kwargs=_sentinel_kwargs(settings), socket_connect_timeout=2
    )
    return group.master_for(
        settings.redis_master,
        redis_class=redis.asyncio.Redis,
        decode_responses=True,
        health_check_interval=15,
        **_credentials(settings),
    )


def celery_endpoints(settings: Settings) -> tuple[str, dict[str, Any]]:
    """(URL, transport options) for Celery's broker and result backend alike.

    With sentinels: one ``sentinel://`` URL per sentinel joined by ``;`` (kombu's and Celery's form), each
    carrying the password and database, and ``master_name`` plus the sentinels' own credentials.
    """
    options: dict[str, Any] = dict(_TIMEOUTS)
    if not settings.sentinels:
        return settings.redis_url, options
    credentials = _credentials(settings)
    user = quote(str(credentials.get("username", "")), safe="")
    password = quote(str(credentials.get("password", "")), safe="")
    auth = f"{user}:{password}@" if password or user else ""
    db = credentials.get("db", 0)
    # LESSON_REDIS_SENTINELS is normalised by its validator: host:port entries, IPv6 hosts in brackets
    url = ";".join(f"sentinel://{auth}{hostport}/{db}" for hostport in settings.redis_sentinels.split(","))
    options |= {"master_name": settings.redis_master, "sentinel_kwargs": _sentinel_kwargs(settings)}
    return url, options


class PrimaryFollower:
    """Asks the sentinels, at most every ``every`` seconds, whether the primary moved; if it did, the
    client's idle connections to the old one are dropped, so the next call goes to the new primary.

    redis-py asks the sentinels only when it opens a connection. A pooled connection to a primary that was
    demoted while it stayed up (a failover the sentinels made while it was slow, a partition) would go on
    serving stale reads, and taking writes that are lost once it becomes a replica. A no-op without sentinels.
    """

    def __init__(self, client: redis.Redis[str], every: float = 1.0) -> None:
        self.client = client
        self.every = every
        self._last = 0.0

    def __call__(self) -> None:
        pool = self.client.connection_pool
        if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now  # a race between threads costs one more question, no harm
        # no answer now: the call this precedes reports the outage if there is one
        with contextlib.suppress(redis.RedisError):
            pool.get_master_address()
