"""Polling with a deadline: every wait in the tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from scheduler.core.records import LiveLesson
from scheduler.services.state import Store


def wait_for(
    store: Store,
    livelesson: str,
    statuses: set[str],
    timeout: float = 60,
    *,
    interval: float = 0.05,
    error: type[Exception] = AssertionError,
) -> LiveLesson:
    """Until the record's status is one of ``statuses``; ``error`` (AssertionError) with the record after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(livelesson)
        if record is not None and record.status in statuses:
            return record
        if time.monotonic() > deadline:
            raise error(f"{livelesson} not in {statuses} after {timeout}s: {record}")
        time.sleep(interval)


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.25,
    *,
    retry_on: tuple[type[Exception], ...] = (),
) -> Any:
    """``check()`` until it returns something truthy (an exception in ``retry_on`` counts as not yet); an
    AssertionError naming ``what`` and the last result or error after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except retry_on as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """``check()`` until it returns something truthy without raising an assertion, HTTP or key error."""
    return wait_until(what, check, timeout, 0.25, retry_on=(AssertionError, httpx.HTTPError, KeyError))
