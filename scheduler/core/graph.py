"""Topology pictures of a lesson, or of a live lesson, as Mermaid, Graphviz dot or SVG: the one entry
point the CLI and the status page use. The model and its builders live in :mod:`scheduler.core.topology`, the
writers in :mod:`scheduler.core.graph_text` and :mod:`scheduler.core.graph_svg`. Pure.
"""

from __future__ import annotations

from scheduler.core.graph_svg import to_svg
from scheduler.core.graph_text import to_dot, to_mermaid
from scheduler.core.topology import (
    COLOURS,
    FORMATS,
    Edge,
    LinkState,
    Node,
    Topology,
    from_plan,
    from_record,
    lesson_topology,
    live_topology,
    livelesson_topology,
)

__all__ = [
    "COLOURS",
    "FORMATS",
    "Edge",
    "LinkState",
    "Node",
    "Topology",
    "draw",
    "from_plan",
    "from_record",
    "lesson_topology",
    "live_topology",
    "livelesson_topology",
    "to_dot",
    "to_mermaid",
    "to_svg",
]


RENDERERS = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}


def draw(topology: Topology, fmt: str = "mermaid") -> str:
    try:
        return RENDERERS[fmt](topology)
    except KeyError as exc:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from exc
