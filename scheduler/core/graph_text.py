"""Topologies as text for other tools: Mermaid (renders on GitHub and in most Markdown viewers) and
Graphviz dot. Labels are escaped for each format, so a name can never break out of its label. Pure.
"""

from __future__ import annotations

import re

from scheduler.core.topology import COLOURS, Edge, Topology

__all__ = ["to_dot", "to_mermaid"]


# --- Mermaid -------------------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: its entity codes keep quotes and markup inert."""
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("|", "#124;")
        .replace("\n", " ")
    )


_MERMAID_PLAIN = re.compile(r"^[a-z][a-z0-9]*$")
_MERMAID_WORDS = frozenset(
    {"end", "graph", "flowchart", "subgraph", "style", "class", "classdef", "click", "linkstyle", "default",
     "direction", "call", "href", "callback", "interpolate"}
)  # fmt: skip


def _ids(topology: Topology) -> dict[str, str]:
    """Mermaid node ids: the endpoint's name where Mermaid reads it as a plain id; otherwise a neutral id
    (``end`` closes a subgraph, ``a--b`` is an edge) with the name as the label. DNS-1123 labels have no
    ``_``, so ``node_<i>`` never collides with a name."""
    return {
        node.name: node.name if _MERMAID_PLAIN.match(node.name) and node.name not in _MERMAID_WORDS else f"node_{i}"
        for i, node in enumerate(topology.nodes)
    }


def _link_text(link: Edge) -> str:
    return f"{link.name} {link.subnet}" if link.subnet else link.name


def to_mermaid(topology: Topology) -> str:
    ids = _ids(topology)
    lines = ["graph LR", f"  %% {_mermaid_text(topology.title)}"]
    for node in topology.nodes:
        label = "<br/>".join([_mermaid_text(node.name), *(_mermaid_text(a) for a in node.addresses)])
        lines.append(f'  {ids[node.name]}["{label}"]')
    for link in topology.links:
        label = _mermaid_text(_link_text(link))
        lines.append(f'  {ids[link.a]} ---|"{label}"| {ids[link.b]}')
    for i, link in enumerate(topology.links):
        if link.state is not None:
            lines.append(f"  linkStyle {i} stroke:{COLOURS[link.state]},stroke-width:3px")
    return "\n".join(lines) + "\n"


# --- Graphviz dot --------------------------------------------------------------------------------------


def _dot(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(topology: Topology) -> str:
    lines = [
        f"graph {_dot(topology.title)} {{",
        "  layout=circo;",
        '  node [shape=box, style="rounded,filled", fillcolor="#e3f2fd", fontname="sans-serif"];',
        '  edge [fontname="sans-serif", fontsize=10];',
    ]
    for node in topology.nodes:
        label = "\n".join([node.name, *node.addresses])
        lines.append(f"  {_dot(node.name)} [label={_dot(label)}];")
    for link in topology.links:
        attrs = [f"label={_dot(_link_text(link))}"]
        if link.a_address:
            attrs.append(f"taillabel={_dot(link.a_address)}")
        if link.b_address:
            attrs.append(f"headlabel={_dot(link.b_address)}")
        if link.state is not None:
            attrs += [f"color={_dot(COLOURS[link.state])}", "penwidth=2", f"tooltip={_dot(link.state)}"]
        lines.append(f"  {_dot(link.a)} -- {_dot(link.b)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
