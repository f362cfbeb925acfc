"""Topologies as SVG, drawn where :mod:`~scheduler.core.drawing.svg_layout` puts things. Every text is
escaped. Pure.

The picture is the links, then their labels (each on a white plate, so it stays legible where it crosses a
link), then the nodes on top, and for a live lesson a legend of link colours below; it is cropped to what
the labels and nodes cover.
"""

from __future__ import annotations

import math
from html import escape

from scheduler.core.drawing.model import COLOURS, Edge, LinkState, Topology
from scheduler.core.drawing.svg_layout import FONT, NODE_H, PLATE_H, SMALL, Curve, Layout, layout, text_width

__all__ = ["to_svg"]

_PAD = 12.0
_LEGEND: tuple[tuple[LinkState, str], ...] = (
    ("ok", "both directions ok"),
    ("failed", "ping failed"),
    ("unknown", "not measured"),
)
_STYLE = (
    "<style>"
    f".topology text{{font-family:sans-serif;font-size:{FONT}px;fill:#212121}}"
    f".topology .subnet,.topology .address,.topology .legend{{font-size:{SMALL}px}}"
    ".topology .subnet{fill:#424242}.topology .address{fill:#0d47a1}"
    ".topology .plate{fill:#fff;fill-opacity:.85}"
    ".topology .node rect{fill:#e3f2fd;stroke:#1565c0;stroke-width:1.5}"
    ".topology .node text{font-weight:bold}"
    ".topology .link{fill:none;stroke-width:3}"
    "</style>"
)


def to_svg(topology: Topology) -> str:
    where = layout(topology)
    links = [_link(topology, curve) for curve in where.curves]
    labels = _labels(where)
    nodes = _nodes(topology, where)
    box = _crop(labels, nodes)
    legend = _legend(box) if topology.live else []
    return "\n".join([*_head(topology, box), *links, *labels.parts, *nodes.parts, *legend, "</svg>"]) + "\n"


class _Canvas:
    """SVG fragments and the box they cover, so the picture is cropped to what it draws."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.box = [math.inf, math.inf, -math.inf, -math.inf]

    def cover(self, x0: float, y0: float, x1: float, y1: float) -> None:
        b = self.box
        self.box = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]

    def label(self, x: float, y: float, text: str, cls: str) -> None:
        """Small text on a white plate, so it stays legible where it crosses a link."""
        w, h = text_width(text, SMALL) + 6, PLATE_H
        self.cover(x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        self.parts += [
            f'<rect class="plate" x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h}" rx="3"/>',
            f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" dominant-baseline="central" text-anchor="middle">'
            f"{escape(text)}</text>",
        ]


def _link(topology: Topology, curve: Curve) -> str:
    """The link's path, coloured by its pings on a live lesson, with its description as a tooltip."""
    link, (x0, y0), (cx, cy), (x2, y2) = curve.link, curve.start, curve.control, curve.end
    colour = COLOURS[link.state or "unknown"] if topology.live else "#546e7a"
    state = f' data-state="{link.state}"' if link.state else ""
    return (
        f'<path class="link" data-link="{escape(link.name)}"{state} stroke="{colour}" '
        f'd="M{x0:.1f},{y0:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}">'
        f"<title>{escape(_words(link))}</title></path>"
    )


def _words(link: Edge) -> str:
    words = f"{link.name}: {link.a} - {link.b}" + (f" {link.subnet}" if link.subnet else "")
    return words + (f" ({link.state})" if link.state else "")


def _labels(where: Layout) -> _Canvas:
    """Each link's name (over its subnet) at its middle, and each end's address just outside its node."""
    labels = _Canvas()
    for i, curve in enumerate(where.curves):
        link = curve.link
        x, y = curve.at(0.5)
        if link.subnet:
            labels.label(x, y - 8, link.name, "subnet")
            labels.label(x, y + 8, link.subnet, "subnet")
        else:
            labels.label(x, y, link.name, "subnet")
        for address, end, from_b in ((link.a_address, link.a, False), (link.b_address, link.b, True)):
            if address:
                t = min(0.45, where.address_distance[(i, end)] / curve.length)
                labels.label(*curve.at(1 - t if from_b else t), address, "address")
    return labels


def _nodes(topology: Topology, where: Layout) -> _Canvas:
    nodes = _Canvas()
    for node in topology.nodes:
        x, y = where.position[node.name]
        w = where.node_width[node.name]
        nodes.cover(x - w / 2, y - NODE_H / 2, x + w / 2, y + NODE_H / 2)
        tip = escape(", ".join(node.addresses) or node.name)
        nodes.parts.append(
            f'<g class="node" data-endpoint="{escape(node.name)}"><title>{tip}</title>'
            f'<rect x="{x - w / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{w:.1f}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x:.1f}" y="{y:.1f}" dominant-baseline="central" text-anchor="middle">'
            f"{escape(node.name)}</text></g>"
        )
    return nodes


def _crop(labels: _Canvas, nodes: _Canvas) -> list[float]:
    """The box the labels and nodes cover, with a margin (x0, y0, x1, y1)."""
    return [
        min(labels.box[0], nodes.box[0]) - _PAD,
        min(labels.box[1], nodes.box[1]) - _PAD,
        max(labels.box[2], nodes.box[2]) + _PAD,
        max(labels.box[3], nodes.box[3]) + _PAD,
    ]


def _legend(box: list[float]) -> list[str]:
    """What each link colour means, in a row under the picture; ``box`` grows to hold it."""
    legend: list[str] = []
    x, y = box[0] + 4, box[3] + 10
    for state, words in _LEGEND:
        legend.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 22:.1f}" y2="{y:.1f}" stroke="{COLOURS[state]}" '
            'stroke-width="3"/>'
            f'<text class="legend" x="{x + 28:.1f}" y="{y:.1f}" dominant-baseline="central">{words}</text>'
        )
        x += 28 + text_width(words, SMALL) + 22
    box[2] = max(box[2], x)
    box[3] += 24
    return legend


def _head(topology: Topology, box: list[float]) -> list[str]:
    width, height = box[2] - box[0], box[3] - box[1]
    title = escape(topology.title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="topology" role="img" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="{box[0]:.1f} {box[1]:.1f} {width:.1f} {height:.1f}" aria-label="{title}">',
        f"<title>{title}</title>",
        _STYLE,
    ]
