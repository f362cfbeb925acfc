"""Independent calls of one apply, observe or destroy, run at once (each pod's or node's)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["parallel"]

T = TypeVar("T")


def parallel(fn: Callable[..., T], items: Sequence[Any]) -> list[T]:
    """Run independent calls concurrently; the first error (in item order) is raised after all finish.
    A tuple item is the call's arguments, anything else its one argument."""
    if len(items) <= 1:
        return [fn(*i) if isinstance(i, tuple) else fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        # each call in a copy of the caller's context: its log lines keep the task's bound context
        futures = [
            pool.submit(contextvars.copy_context().run, fn, *(i if isinstance(i, tuple) else (i,))) for i in items
        ]
    return [f.result() for f in futures]
