"""The one release policy of every lock the scheduler takes (GC, placement, ``lessonctl gc``): never raises,
rides out a Redis that cannot answer for a while, and gives up once the lock's own timeout frees it."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import LockError

from scheduler.services import state
from scheduler.services.state import release


class FakeLock:
    def __init__(self, timeout: float, failures: list[Exception]) -> None:
        self.timeout = timeout
        self.failures = failures
        self.calls = 0

    def release(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Sleeps are recorded and pass at once; the clock moves by them."""
    clock = [1000.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(state.time, "sleep", sleep)
    monkeypatch.setattr(state.time, "monotonic", lambda: clock[0])
    return sleeps


def test_a_lock_released_at_once_or_after_a_short_outage(slept: list[float]) -> None:
    lock = FakeLock(60, [])
    release(lock, "gc")  # type: ignore[arg-type]
    assert lock.calls == 1 and slept == []
    lock = FakeLock(60, [redis.ConnectionError("down"), redis.ConnectionError("down")])
    release(lock, "gc")  # type: ignore[arg-type]
    assert lock.calls == 3 and slept == [0.25, 0.5]


def test_an_expired_lock_is_not_ours_any_more(slept: list[float]) -> None:
    lock = FakeLock(60, [LockError("not owned")])
    release(lock, "gc")  # type: ignore[arg-type]
    assert lock.calls == 1 and slept == []


@pytest.mark.parametrize(("timeout", "patience"), [(60, state.RELEASE_PATIENCE_SECONDS), (10, 10)])
def test_a_lost_redis_is_waited_for_no_longer_than_the_lock_would_hold(
    slept: list[float], timeout: float, patience: float
) -> None:
    lock = FakeLock(timeout, [redis.ConnectionError("down")] * 100)
    release(lock, "placement")  # type: ignore[arg-type]
    assert 0 < sum(slept) <= patience and max(slept) <= 4.0
