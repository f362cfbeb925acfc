"""Topologies as Graphviz dot. Labels are escaped, so a name can never break out of its label. Pure."""

from __future__ import annotations

from scheduler.core.drawing.model import COLOURS, Edge, Topology

__all__ = ["to_dot"]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _link_attributes(link: Edge) -> list[str]:
    attrs = [f"label={_quoted(link.caption)}"]
    if link.a_address:
        attrs.append(f"taillabel={_quoted(link.a_address)}")
    if link.b_address:
        attrs.append(f"headlabel={_quoted(link.b_address)}")
    if link.state is not None:
        attrs += [f"color={_quoted(COLOURS[link.state])}", "penwidth=2", f"tooltip={_quoted(link.state)}"]
    return attrs


def to_dot(topology: Topology) -> str:
    lines = [
        f"graph {_quoted(topology.title)} {{",
        "  layout=circo;",
        '  node [shape=box, style="rounded,filled", fillcolor="#e3f2fd", fontname="sans-serif"];',
        '  edge [fontname="sans-serif", fontsize=10];',
    ]
    for node in topology.nodes:
        label = "\n".join([node.name, *node.addresses])
        lines.append(f"  {_quoted(node.name)} [label={_quoted(label)}];")
    for link in topology.links:
        lines.append(f"  {_quoted(link.a)} -- {_quoted(link.b)} [{', '.join(_link_attributes(link))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
