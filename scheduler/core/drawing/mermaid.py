"""Topologies as Mermaid (renders on GitHub and in most Markdown viewers). Labels are escaped, so a name can
never break out of its label. Pure.
"""

from __future__ import annotations

import re

from scheduler.core.drawing.model import COLOURS, Topology

__all__ = ["to_mermaid"]


def _text(text: str) -> str:
    """Text inside a quoted Mermaid label: its entity codes keep quotes and markup inert."""
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("|", "#124;")
        .replace("\n", " ")
    )


_PLAIN = re.compile(r"[a-z][a-z0-9]*")
_WORDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "style", "class", "classdef", "click", "linkstyle", "default",
     "direction", "call", "href", "callback", "interpolate"}
)  # fmt: skip


def _ids(topology: Topology) -> dict[str, str]:
    """Mermaid node ids: the endpoint's name where Mermaid reads it as a plain id; otherwise a neutral id
    (``end`` closes a subgraph, ``a--b`` is an edge) with the name as the label. DNS-1123 labels have no
    ``_``, so ``node_<i>`` never collides with a name."""
    return {
        node.name: node.name if _PLAIN.fullmatch(node.name) and node.name not in _WORDS else f"node_{i}"
        for i, node in enumerate(topology.nodes)
    }


def to_mermaid(topology: Topology) -> str:
    ids = _ids(topology)
    lines = ["graph LR", f"  %% {_text(topology.title)}"]
    for node in topology.nodes:
        label = "<br/>".join([_text(node.name), *(_text(a) for a in node.addresses)])
        lines.append(f'  {ids[node.name]}["{label}"]')
    for link in topology.links:
        lines.append(f'  {ids[link.a]} ---|"{_text(link.caption)}"| {ids[link.b]}')
    for i, link in enumerate(topology.links):
        if link.state is not None:
            lines.append(f"  linkStyle {i} stroke:{COLOURS[link.state]},stroke-width:3px")
    return "\n".join(lines) + "\n"
