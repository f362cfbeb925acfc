"""Topology pictures of a lesson, or of a live lesson, as Mermaid, Graphviz dot or SVG: the one entry point
the CLI and the status page use. Pure.

    model        the Topology to draw: nodes, links, link states and their colours
    topologies   Topologies built from a plan and a live lesson's record
    mermaid, dot the text writers
    svg_layout   where the SVG writer puts everything (no Graphviz needed)
    svg          the SVG writer
"""

from __future__ import annotations

from scheduler.core.drawing.dot import to_dot
from scheduler.core.drawing.mermaid import to_mermaid
from scheduler.core.drawing.model import COLOURS, Edge, LinkState, Node, Topology
from scheduler.core.drawing.svg import to_svg
from scheduler.core.drawing.topologies import (
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
FORMATS = tuple(RENDERERS)  # ("mermaid", "dot", "svg"): what `lessonctl graph --format` offers


def draw(topology: Topology, fmt: str = "mermaid") -> str:
    """``topology`` in ``fmt``, one of FORMATS; ValueError naming them for any other."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return renderer(topology)
