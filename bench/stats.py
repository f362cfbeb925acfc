"""Percentiles as the benchmarks print them: the nearest rank, so every figure is a measured value."""

from __future__ import annotations

__all__ = ["pct"]


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
