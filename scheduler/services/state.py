"""The live-lesson store in Redis.

Keys, all under ``lessons:<instance>:`` so two instances sharing a Redis never see each other:

    ll:<id>                    the record (JSON), one key per live lesson
    pair:<lesson>:<session>    the id of the one active live lesson of that pair
    session:<session>          set of the session's active ids (the per-session limit)
    active                     set of all active ids (the capacity limit)
    expiry                     sorted set id -> expires_at: GC reads only what has expired
    deadline                   sorted set id -> provisioning deadline, while provisioning
    lease                      sorted set id -> last progress + lease, while provisioning or deleting: a step whose
                               worker died stops renewing it, and GC re-drives the lesson
    created                    sorted set id -> created_at, for paged listing (newest first); ids whose record
                               is gone are dropped as a page meets them
    gauge:status               hash status -> count of non-terminal live lessons, kept by every write, so
                               ``/metrics`` reads one hash instead of every record
    deployment                 this deployment's id, made once (SET NX): labels and marks carry it, and GC
                               touches only what its own deployment made
    replicated                 a counter ``confirm`` increments before its WAIT (with replicas configured)
    lock:gc, lock:placement    Redis locks: one GC pass at a time; one placement on the nodes at a time

and one pub/sub channel, ``lessons:<instance>:status``: every status change of a record (its creation
included) is published there as ``{"id": ..., "status": ...}``, in the same MULTI/EXEC (or Lua script) as the
write, so a subscriber that reads the record on a message sees the new status. ``Client.wait`` and the
API's long-poll block on it instead of polling.

Creation is one Lua script (so fifty identical concurrent requests give one live lesson); every later
change is a WATCH/MULTI transition that re-reads the record, so a step that lost a race sees it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
import redis.lock
import redis.sentinel
import structlog
from redis.exceptions import LockError

from scheduler.core import naming
from scheduler.core.checks import check_id, is_id
from scheduler.core.errors import AtCapacity, LimitExceeded, NotFound, NotReplicated, TemporaryError
from scheduler.core.records import LiveLesson, new_id, now
from scheduler.core.steps import ACTIVE, LEASED, PROVISIONING, TERMINAL, Status
from scheduler.services.metrics import Metrics
from scheduler.services.redis_endpoint import PrimaryFollower, connect
from scheduler.settings import Settings

__all__ = [
    "RECHECK_SECONDS",
    "UNAVAILABLE",
    "Created",
    "Store",
    "parse_status_message",
    "release",
    "status_message",
    "unreachable",
]

# Redis cannot serve us right now, but may in a moment: down, slow, full (noeviction), a read-only replica
# after a failover, or still loading its AOF after a restart.
UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
)

# A waiter on the status channel (``Client.wait``, the API's long-poll) re-reads its record this often even
# without a message: the safety net for a message lost while its subscription was down (Redis restarted, a
# failover). Changes themselves arrive by push.
RECHECK_SECONDS = 5.0
# How long a lock's release rides out a Redis that cannot answer: a primary changing takes seconds.
RELEASE_PATIENCE_SECONDS = 16.0

log = structlog.get_logger(__name__)

_CREATE = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local record = redis.call('GET', ARGV[8] .. existing)
  if record then return {0, existing, record} end
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {-1} end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then return {-2} end
redis.call('SET', KEYS[4], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[7], ARGV[7], ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[1])
redis.call('HINCRBY', KEYS[9], 'requested', 1)
redis.call('PUBLISH', ARGV[10], ARGV[11])
return {1, ARGV[1], ARGV[2]}
"""


def unreachable(exc: Exception) -> TemporaryError:
    """The error for a Redis that cannot serve us, in words (redis-py's sentinel message is a client repr)."""
    if isinstance(exc, redis.sentinel.MasterNotFoundError):
        name = str(exc).split("'")[1] if str(exc).count("'") >= 2 else "?"
        return TemporaryError(
            f"Redis is unreachable: no sentinel of LESSON_REDIS_SENTINELS names a primary for {name!r}", delay=2.0
        )
    return TemporaryError(f"Redis is unreachable: {exc}", delay=2.0)


def status_message(livelesson: str, status: str) -> str:
    """What a status change publishes on ``Store.channel``."""
    return json.dumps({"id": livelesson, "status": status}, separators=(",", ":"))


def parse_status_message(data: object) -> tuple[str, str] | None:
    """(id, status) of a message from ``Store.channel``; None for anything else (anyone with Redis access can
    publish there, so a message is only a hint to re-read the record, never trusted as the record)."""
    try:
        message = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    livelesson, status = message.get("id"), message.get("status")
    if isinstance(livelesson, str) and is_id(livelesson) and isinstance(status, str):
        return livelesson, status
    return None


@dataclass(frozen=True)
class Created:
    record: LiveLesson
    new: bool


class Store:
    def __init__(
        self,
        client: redis.Redis[str],
        *,
        instance: str,
        ttl_seconds: int = 1800,
        provision_timeout_seconds: int = 300,
        lease_seconds: int = 20,
        max_per_session: int = 3,
        max_active: int = 200,
        max_lifetime_seconds: int = 4 * 3600,
        min_replicas: int = 0,
        replica_wait_ms: int = 1000,
    ) -> None:
        self.r = client
        self.instance = instance
        self.prefix = f"lessons:{instance}:"
        self.ttl = ttl_seconds
        self.provision_timeout = provision_timeout_seconds
        self.lease = lease_seconds
        self.max_per_session = max_per_session
        self.max_active = max_active
        self.max_lifetime = max_lifetime_seconds
        self.min_replicas = min_replicas
        self.replica_wait_ms = replica_wait_ms
        self._deployment: str | None = None
        self._create = client.register_script(_CREATE)
        self._follow = PrimaryFollower(client)
        self.metrics = Metrics(client, instance)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis[str] | None = None) -> Store:
        s = settings
        return cls(
            client or connect(s),
            instance=s.instance,
            ttl_seconds=s.ttl_seconds,
            provision_timeout_seconds=s.provision_timeout_seconds,
            lease_seconds=s.lease_seconds,
            max_per_session=s.max_per_session,
            max_active=s.max_active,
            max_lifetime_seconds=s.max_lifetime_seconds,
            min_replicas=s.min_replicas,
            replica_wait_ms=s.redis_wait_ms,
        )

    # --- keys ---------------------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def channel(self) -> str:
        """The pub/sub channel of every status change of this instance's records.

        One channel per instance rather than one per record: a process subscribes once and serves every
        waiter it has (the API's long-poll shares one subscription among all of them), with no SUBSCRIBE
        and UNSUBSCRIBE round trip per wait; the price, every subscriber seeing every change of the
        instance, is small, since a live lesson changes status about eight times in its life.
        """
        return self._k("status")

    def key(self, livelesson: str) -> str:
        # every key built from an id passes here: a hostile id never reaches Redis as a key or a pattern
        return self._k("ll", check_id(livelesson))

    def deployment(self) -> str:
        """This deployment's id: made by the first process that asks, then the same for every process that
        shares this Redis and instance. Another deployment (another Redis) gets another one."""
        if self._deployment is None:
            key = self._k("deployment")
            self._call(self.r.set, key, new_id()[:8], nx=True)
            self._deployment = str(self._call(self.r.get, key))
        return self._deployment

    # --- reads --------------------------------------------------------------------------------------

    def get(self, livelesson: str) -> LiveLesson | None:
        raw = self._call(self.r.get, self.key(livelesson))
        return LiveLesson.model_validate_json(raw) if raw else None

    def require(self, livelesson: str) -> LiveLesson:
        record = self.get(livelesson)
        if record is None:
            raise NotFound(f"live lesson {livelesson!r} does not exist")
        return record

    def many(self, ids: Iterable[str]) -> list[LiveLesson]:
        ids = list(ids)
        if not ids:
            return []
        raws = self._call(self.r.mget, [self.key(i) for i in ids])
        return [LiveLesson.model_validate_json(r) for r in raws if r]

    def page(self, *, limit: int = 100, before: float | None = None) -> tuple[list[LiveLesson], float | None]:
        """Up to ``limit`` records, newest first, created before ``before`` (a cursor: the ``next`` this
        returned last time). Returns the records and the next cursor (None: no more)."""
        limit = max(1, min(limit, 1000))
        top = f"({before}" if before is not None else "+inf"
        rows = self._call(self.r.zrevrangebyscore, self._k("created"), top, "-inf", start=0, num=limit, withscores=True)
        ids = [i for i, _ in rows]
        records = {r.id: r for r in self.many(ids)}
        gone = [i for i in ids if i not in records]
        if gone:  # expired by Redis (terminal records keep a TTL): drop them from the index too
            self._call(self.r.zrem, self._k("created"), *gone)
        found = [records[i] for i in ids if i in records]
        cursor = rows[-1][1] if len(rows) == limit else None
        return found, cursor

    def all(self) -> list[LiveLesson]:
        """Every record, oldest first, read a page at a time (for tools; services use ``page``)."""
        out: list[LiveLesson] = []
        cursor: float | None = None
        while True:
            records, cursor = self.page(limit=500, before=cursor)
            out += records
            if cursor is None:
                return sorted(out, key=lambda r: r.created_at)

    def active_count(self) -> int:
        return int(self._call(self.r.scard, self._k("active")))

    def active(self) -> list[LiveLesson]:
        """Every active live lesson's record (provisioning, ready or deleting)."""
        ids = self._call(self.r.smembers, self._k("active"))
        return self.many(sorted(i for i in ids if is_id(i)))

    def status_counts(self) -> dict[str, int]:
        """Active live lessons (provisioning, ready, deleting) by status: one hash read, kept by each write."""
        raw: dict[str, str] = self._call(self.r.hgetall, self._k("gauge", "status"))
        return {status: int(count) for status, count in raw.items() if int(count) > 0}

    def due(self, which: str, at: datetime | None = None) -> list[str]:
        """Ids whose ``expiry``, ``deadline`` or ``lease`` score has passed."""
        score = (at or now()).timestamp()
        ids = self._call(self.r.zrangebyscore, self._k(which), "-inf", score)
        return [i for i in ids if is_id(i)]  # anything else was not written by us

    def ping(self) -> bool:
        return bool(self._call(self.r.ping))

    # --- writes -------------------------------------------------------------------------------------

    def create(self, lesson: str, session: str, *, backend: str) -> Created:
        """Create the live lesson of (lesson, session), or return the active one. Atomic."""
        t = now()
        livelesson = new_id()
        record = LiveLesson(
            id=livelesson,
            lesson=lesson,
            session=session,
            instance=self.instance,
            backend=backend,
            namespace=naming.namespace(self.instance, livelesson),
            created_at=t,
            updated_at=t,
            expires_at=t + timedelta(seconds=min(self.ttl, self.max_lifetime)),
        )
        keys = [
            self._k("pair", lesson, session),
            self._k("session", session),
            self._k("active"),
            self.key(livelesson),
            self._k("expiry"),
            self._k("deadline"),
            self._k("lease"),
            self._k("created"),
            self._k("gauge", "status"),
        ]
        args = [
            livelesson,
            record.to_json(),
            self.max_per_session,
            self.max_active,
            record.expires_at.timestamp(),
            (t + timedelta(seconds=self.provision_timeout)).timestamp(),
            (t + timedelta(seconds=self.lease)).timestamp(),
            self._k("ll", ""),
            t.timestamp(),
            self.channel,
            status_message(livelesson, record.status),
        ]
        result = self._call(self._create, keys=keys, args=args)
        if result[0] == -1:
            raise LimitExceeded(f"session {session!r} already holds {self.max_per_session} live lessons (the limit)")
        if result[0] == -2:
            raise AtCapacity(f"this scheduler is at capacity ({self.max_active} live lessons)", retry_after=60)
        return Created(LiveLesson.model_validate_json(result[2]), new=result[0] == 1)

    def update(
        self,
        livelesson: str,
        change: Callable[[LiveLesson], LiveLesson | None],
    ) -> LiveLesson | None:
        """Apply ``change`` atomically. It returns the new record, or None to leave it as it is."""
        key = self.key(livelesson)
        self._follow()
        try:
            with self.r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw: str | None = pipe.get(key)  # type: ignore[assignment]
                        if raw is None:
                            pipe.unwatch()
                            return None
                        before = LiveLesson.model_validate_json(raw)
                        after = change(before.model_copy(deep=True))
                        if after is None:
                            pipe.unwatch()
                            return before
                        after.updated_at = now()
                        pipe.multi()
                        self._write(pipe, before, after)
                        pipe.execute()
                        return after
                    except redis.WatchError:
                        continue
        except UNAVAILABLE as exc:
            raise unreachable(exc) from exc

    def _write(self, pipe: redis.client.Pipeline[str], before: LiveLesson, after: LiveLesson) -> None:
        key = self.key(after.id)
        if after.status != before.status:  # the status gauges count non-terminal records
            # queued in the MULTI like the writes: delivered on EXEC, so a subscriber's read sees the new record
            pipe.publish(self.channel, status_message(after.id, after.status))
            if before.status not in TERMINAL:
                pipe.hincrby(self._k("gauge", "status"), before.status, -1)
            if after.status not in TERMINAL:
                pipe.hincrby(self._k("gauge", "status"), after.status, 1)
        if after.status in TERMINAL:
            # out of every index; the record itself stays for inspection until its TTL
            pair = self._k("pair", after.lesson, after.session)
            pipe.set(key, after.to_json(), ex=self.ttl)
            pipe.srem(self._k("session", after.session), after.id)
            pipe.srem(self._k("active"), after.id)
            for index in ("expiry", "deadline", "lease"):
                pipe.zrem(self._k(index), after.id)
            # only if the pair still points at this id (a newer live lesson may own it already)
            pipe.eval(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
                1,
                pair,
                after.id,
            )
            return
        pipe.set(key, after.to_json())
        if after.expires_at != before.expires_at and after.status in ACTIVE:
            pipe.zadd(self._k("expiry"), {after.id: after.expires_at.timestamp()})
        if after.status not in PROVISIONING:
            pipe.zrem(self._k("deadline"), after.id)
        if after.status in LEASED:
            if after.status != before.status or after.steps != before.steps:  # progress renews the lease
                pipe.zadd(self._k("lease"), {after.id: now().timestamp() + self.lease})
        else:
            pipe.zrem(self._k("lease"), after.id)
        if after.status == "deleting":
            pipe.zrem(self._k("expiry"), after.id)

    def confirm(self, what: str) -> None:
        """Return once every write this process made so far is on ``min_replicas`` replicas (none: at once).

        Redis replicates asynchronously, so a primary lost right after a write may take the write along.
        Sentinel promotes the replica that replicated the most, so a write one replica confirmed survives
        the primary's loss. WAIT counts the writes of its own connection, and a pool may hand us another
        one, so this makes one write of its own (a counter) on the connection that WAITs: replication is
        in order, so a replica that has it has every earlier write too. Raises TemporaryError when too few
        replicas confirm in ``replica_wait_ms`` (the request gets 503; every such write is idempotent).
        """
        if self.min_replicas <= 0:
            return
        pipe = self.r.pipeline(transaction=False)  # one connection for both commands
        pipe.incr(self._k("replicated"))
        pipe.execute_command("WAIT", self.min_replicas, self.replica_wait_ms)  # type: ignore[no-untyped-call]
        confirmed = int(self._call(pipe.execute)[1])
        if confirmed < self.min_replicas:
            raise NotReplicated(
                f"{what} reached {confirmed} of the {self.min_replicas} Redis replicas it must reach within "
                f"{self.replica_wait_ms} ms (LESSON_REDIS_MIN_REPLICAS); try again",
                delay=2.0,
            )

    def renew_lease(self, livelesson: str, seconds: float | None = None) -> None:
        at = now().timestamp() + (seconds if seconds is not None else self.lease)
        self._call(self.r.zadd, self._k("lease"), {livelesson: at}, xx=True)

    def keepalive(self, livelesson: str) -> LiveLesson:
        def extend(rec: LiveLesson) -> LiveLesson | None:
            if rec.status not in ACTIVE:
                return None
            # keepalives extend by the TTL, never past the lifetime cap (a tab left open does not hold
            # a lesson for ever)
            cap = rec.created_at + timedelta(seconds=self.max_lifetime)
            rec.expires_at = min(now() + timedelta(seconds=self.ttl), cap)
            return rec

        record = self.update(livelesson, extend)
        if record is None:
            raise NotFound(f"live lesson {livelesson!r} does not exist")
        self.confirm(f"the keepalive of {livelesson}")
        return record

    def transition(self, livelesson: str, allowed: Iterable[Status], to: Status) -> LiveLesson | None:
        """Move to ``to`` if the record is in ``allowed``; None if it is not (someone got there first)."""
        allowed = set(allowed)
        moved: list[bool] = []

        def change(rec: LiveLesson) -> LiveLesson | None:
            if rec.status not in allowed:
                return None
            rec.status = to
            moved.append(True)
            return rec

        record = self.update(livelesson, change)
        return record if moved else None

    def forget(self, livelesson: str) -> None:
        """Drop an id from every index (a record that vanished, e.g. expired by Redis itself)."""
        pipe = self.r.pipeline()
        for index in ("expiry", "deadline", "lease"):
            pipe.zrem(self._k(index), livelesson)
        pipe.srem(self._k("active"), livelesson)
        self._call(pipe.execute)

    def lock(self, name: str, timeout: float, wait: float | None = None) -> redis.lock.Lock:
        """A Redis lock of this instance, held at most ``timeout`` seconds. ``acquire`` does not wait, or
        waits up to ``wait`` seconds when given."""
        if wait is None:
            return self.r.lock(self._k("lock", name), timeout=timeout, blocking=False)
        return self.r.lock(self._k("lock", name), timeout=timeout, blocking=True, blocking_timeout=wait)

    # --- errors -------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._follow()
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise unreachable(exc) from exc


def release(lock: redis.lock.Lock, what: str) -> None:
    """Release ``lock``; never raises. The one release policy of every lock we take.

    A lock left behind stops every other holder until its timeout, so a Redis that cannot answer (a
    failover) is retried with backoff, for ``RELEASE_PATIENCE_SECONDS`` at most and never past the lock's
    own timeout, which frees it anyway. A lock that expired (or was taken over) while we worked is not
    ours any more: nothing to release."""
    patience = min(RELEASE_PATIENCE_SECONDS, lock.timeout or 0.0)
    deadline, delay = time.monotonic() + patience, 0.25
    while True:
        try:
            lock.release()
            return
        except LockError:
            log.warning("lock expired before release", lock=what)
            return
        except redis.RedisError as exc:
            if time.monotonic() + delay > deadline:
                log.warning("lock not released; it times out", lock=what, error=str(exc))
                return
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


def dump(record: LiveLesson) -> dict[str, object]:
    return json.loads(record.to_json())  # type: ignore[no-any-return]
