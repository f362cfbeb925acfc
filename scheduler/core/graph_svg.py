"""Topologies as SVG, laid out here (nodes on a circle, a hub in the middle, parallel links bowed apart),
so no Graphviz binary is needed. Every text is escaped. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from html import escape

from scheduler.core.topology import COLOURS, Edge, LinkState, Topology

__all__ = ["to_svg"]


# --- SVG -----------------------------------------------------------------------------------------------

_FONT = 13  # px; an average glyph is ~0.6 em wide in a sans-serif face
_SMALL = 11
_NODE_H = 30.0
_PAD = 12.0


def _width(text: str, size: int = _FONT) -> float:
    return len(text) * size * 0.62


def _hub(topology: Topology) -> str | None:
    """The centre of a star (one endpoint linked to each of three or more others, which link nowhere else)."""
    if len(topology.nodes) < 4:
        return None
    degree: dict[str, set[str]] = {n.name: set() for n in topology.nodes}
    for link in topology.links:
        degree[link.a].add(link.b)
        degree[link.b].add(link.a)
    for name, peers in degree.items():
        if len(peers) == len(degree) - 1 and all(degree[p] == {name} for p in peers):
            return name
    return None


def _circle(names: list[str], radius: float) -> dict[str, tuple[float, float]]:
    if len(names) == 1:
        return {names[0]: (0.0, 0.0)}
    step = 2 * math.pi / len(names)
    # start at the top; two nodes sit left and right, so their link is horizontal
    start = -math.pi / 2 if len(names) != 2 else math.pi
    return {
        name: (radius * math.cos(start + i * step), radius * math.sin(start + i * step)) for i, name in enumerate(names)
    }


def _bezier(p0: tuple[float, float], c: tuple[float, float], p2: tuple[float, float], t: float) -> tuple[float, float]:
    u = 1 - t
    return (
        u * u * p0[0] + 2 * u * t * c[0] + t * t * p2[0],
        u * u * p0[1] + 2 * u * t * c[1] + t * t * p2[1],
    )


def _exit(w: float, h: float, ux: float, uy: float) -> float:
    """How far a ray from the centre of a w x h box, in direction (ux, uy), runs before it leaves the box."""
    return min(w / 2 / abs(ux) if ux else math.inf, h / 2 / abs(uy) if uy else math.inf)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _parallel_offsets(links: Iterable[Edge]) -> list[float]:
    """How far each link's curve bows out: 0 for a single link, spread apart for parallel ones."""
    pairs: dict[frozenset[str], list[int]] = {}
    links = list(links)
    for i, link in enumerate(links):
        pairs.setdefault(frozenset((link.a, link.b)), []).append(i)
    offsets = [0.0] * len(links)
    for members in pairs.values():
        for k, i in enumerate(members):
            shift = (k - (len(members) - 1) / 2) * 46
            # orient the bow by a fixed endpoint order, so a-b and b-a parallel links spread apart too
            offsets[i] = shift if links[i].a <= links[i].b else -shift
    return offsets


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
        w, h = _width(text, _SMALL) + 6, _SMALL + 5
        self.cover(x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        self.parts += [
            f'<rect class="plate" x="{x - w / 2:.1f}" y="{y - h / 2:.1f}" width="{w:.1f}" height="{h}" rx="3"/>',
            f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" dominant-baseline="central" text-anchor="middle">'
            f"{escape(text)}</text>",
        ]


def to_svg(topology: Topology) -> str:
    names = [n.name for n in topology.nodes]
    node_w = {n.name: max(_width(n.name) + 24, 56.0) for n in topology.nodes}
    widest = max([*node_w.values(), 56.0])
    count = len(names)
    hub = _hub(topology)
    # positions on a unit circle (a star's hub in the middle); the radius is chosen below
    if hub is not None:
        unit = {hub: (0.0, 0.0), **_circle([n for n in names if n != hub], 1.0)}
    else:
        unit = _circle(names, 1.0 if count > 1 else 0.0)

    plate_h = _SMALL + 5
    middle_h = 2 * plate_h + 2  # a link's name over its subnet

    def angle_of(link: Edge, end: str) -> float:
        """The direction in which a link leaves one of its ends (it does not change with the radius)."""
        (x0, y0), (x2, y2) = (unit[link.a], unit[link.b]) if end == link.a else (unit[link.b], unit[link.a])
        return math.atan2(y2 - y0, x2 - x0)

    # where each end's address plate sits, as a distance from its node's centre along the link: just clear
    # of the node box, and pushed further out until it clears the plates already placed around that node
    distance: dict[tuple[int, str], float] = {}
    for name in names:
        ends = [
            (angle_of(link, name), i, text)
            for i, link in enumerate(topology.links)
            for end, text in ((link.a, link.a_address), (link.b, link.b_address))
            if end == name and text
        ]
        placed: list[tuple[float, float, float, float]] = []
        for angle, i, text in sorted(ends):
            ux, uy = math.cos(angle), math.sin(angle)
            w = _width(text, _SMALL) + 6
            d = _exit(node_w[name] + w, _NODE_H + plate_h, ux, uy) + 4

            def plate(d: float, ux: float = ux, uy: float = uy, w: float = w) -> tuple[float, float, float, float]:
                return (d * ux - w / 2 - 3, d * uy - plate_h / 2 - 1, d * ux + w / 2 + 3, d * uy + plate_h / 2 + 1)

            while any(_overlap(plate(d), other) for other in placed) and d < 5000:
                d += 2
            placed.append(plate(d))
            distance[(i, name)] = d

    def needed(i: int, link: Edge) -> float:
        """The length a link needs: its name and subnet in the middle, each end's address between that and
        the end's node, none of them touching."""
        angle = angle_of(link, link.a)
        ux, uy = math.cos(angle), math.sin(angle)
        middle = max(_width(t, _SMALL) + 6 for t in (link.name, link.subnet or ""))
        halves = []
        for text, end in ((link.a_address, link.a), (link.b_address, link.b)):
            if text:
                w = _width(text, _SMALL) + 6
                halves.append(distance[(i, end)] + _exit(w + middle, plate_h + middle_h, ux, uy) + 4)
            else:
                halves.append(_exit(node_w[end] + middle, _NODE_H + middle_h, ux, uy) + 4)
        return 2 * max(halves)

    radius = 0.0
    if count > 1:
        # nodes next to each other on the circle must not touch, even without a link between them
        around = count - 1 if hub is not None else count
        radius = max(80.0, (widest + 30) / (2 * math.sin(math.pi / max(around, 2))))
        for i, link in enumerate(topology.links):
            (x0, y0), (x2, y2) = unit[link.a], unit[link.b]
            radius = max(radius, needed(i, link) / (math.hypot(x2 - x0, y2 - y0) or 1.0))
    pos = {name: (x * radius, y * radius) for name, (x, y) in unit.items()}

    curves = []
    for link, bow in zip(topology.links, _parallel_offsets(topology.links), strict=True):
        p0, p2 = pos[link.a], pos[link.b]
        dx, dy = p2[0] - p0[0], p2[1] - p0[1]
        length = math.hypot(dx, dy) or 1.0
        mid = ((p0[0] + p2[0]) / 2, (p0[1] + p2[1]) / 2)
        curves.append((link, p0, (mid[0] - dy / length * bow * 2, mid[1] + dx / length * bow * 2), p2, length))

    canvas = _Canvas()
    labels = _Canvas()
    for i, (link, p0, control, p2, length) in enumerate(curves):
        colour = COLOURS[link.state or "unknown"] if topology.live else "#546e7a"
        state = f' data-state="{link.state}"' if link.state else ""
        words = f"{link.name}: {link.a} - {link.b}" + (f" {link.subnet}" if link.subnet else "")
        words += f" ({link.state})" if link.state else ""
        canvas.parts.append(
            f'<path class="link" data-link="{escape(link.name)}"{state} stroke="{colour}" '
            f'd="M{p0[0]:.1f},{p0[1]:.1f} Q{control[0]:.1f},{control[1]:.1f} {p2[0]:.1f},{p2[1]:.1f}">'
            f"<title>{escape(words)}</title></path>"
        )
        x, y = _bezier(p0, control, p2, 0.5)
        if link.subnet:
            labels.label(x, y - 8, link.name, "subnet")
            labels.label(x, y + 8, link.subnet, "subnet")
        else:
            labels.label(x, y, link.name, "subnet")
        # each end's address sits on the link just outside its endpoint's box
        for address, end, here in ((link.a_address, link.a, p0), (link.b_address, link.b, p2)):
            if not address:
                continue
            t = min(0.45, distance[(i, end)] / length)
            ax, ay = _bezier(p0, control, p2, t if here is p0 else 1 - t)
            labels.label(ax, ay, address, "address")
    nodes = _Canvas()
    for node in topology.nodes:
        x, y = pos[node.name]
        w = node_w[node.name]
        nodes.cover(x - w / 2, y - _NODE_H / 2, x + w / 2, y + _NODE_H / 2)
        tip = escape(", ".join(node.addresses) or node.name)
        nodes.parts.append(
            f'<g class="node" data-endpoint="{escape(node.name)}"><title>{tip}</title>'
            f'<rect x="{x - w / 2:.1f}" y="{y - _NODE_H / 2:.1f}" width="{w:.1f}" height="{_NODE_H}" rx="6"/>'
            f'<text x="{x:.1f}" y="{y:.1f}" dominant-baseline="central" text-anchor="middle">'
            f"{escape(node.name)}</text></g>"
        )
    box = [
        min(labels.box[0], nodes.box[0]) - _PAD,
        min(labels.box[1], nodes.box[1]) - _PAD,
        max(labels.box[2], nodes.box[2]) + _PAD,
        max(labels.box[3], nodes.box[3]) + _PAD,
    ]
    legend: list[str] = []
    if topology.live:
        items: tuple[tuple[LinkState, str], ...] = (
            ("ok", "both directions ok"),
            ("failed", "ping failed"),
            ("unknown", "not measured"),
        )
        x, y = box[0] + 4, box[3] + 10
        for state, words in items:
            legend.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 22:.1f}" y2="{y:.1f}" stroke="{COLOURS[state]}" '
                'stroke-width="3"/>'
                f'<text class="legend" x="{x + 28:.1f}" y="{y:.1f}" dominant-baseline="central">{words}</text>'
            )
            x += 28 + _width(words, _SMALL) + 22
        box[2] = max(box[2], x)
        box[3] += 24
    width, height = box[2] - box[0], box[3] - box[1]
    title = escape(topology.title)
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="topology" role="img" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="{box[0]:.1f} {box[1]:.1f} {width:.1f} {height:.1f}" aria-label="{title}">',
        f"<title>{title}</title>",
        "<style>"
        f".topology text{{font-family:sans-serif;font-size:{_FONT}px;fill:#212121}}"
        f".topology .subnet,.topology .address,.topology .legend{{font-size:{_SMALL}px}}"
        ".topology .subnet{fill:#424242}.topology .address{fill:#0d47a1}"
        ".topology .plate{fill:#fff;fill-opacity:.85}"
        ".topology .node rect{fill:#e3f2fd;stroke:#1565c0;stroke-width:1.5}"
        ".topology .node text{font-weight:bold}"
        ".topology .link{fill:none;stroke-width:3}"
        "</style>",
    ]
    return "\n".join([*head, *canvas.parts, *labels.parts, *nodes.parts, *legend, "</svg>"]) + "\n"
