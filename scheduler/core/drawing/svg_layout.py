"""Where an SVG topology puts everything, so no Graphviz binary is needed: nodes on a circle (a star's hub in
the middle), a radius wide enough that no two labels touch, parallel links bowed apart, and each end's
address along its link just clear of its node. Pure geometry; :mod:`~scheduler.core.drawing.svg` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scheduler.core.drawing.model import Edge, Topology

__all__ = ["FONT", "NODE_H", "PLATE_H", "SMALL", "Curve", "Layout", "Point", "layout", "text_width"]

FONT = 13  # px; an average glyph is ~0.6 em wide in a sans-serif face
SMALL = 11
NODE_H = 30.0
PLATE_H = SMALL + 5  # the white plate under a small label
_MIDDLE_H = 2 * PLATE_H + 2  # a link's name over its subnet
_NODE_W_MIN = 56.0

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def text_width(text: str, size: int = FONT) -> float:
    return len(text) * size * 0.62


@dataclass(frozen=True)
class Curve:
    """A link drawn as a quadratic Bézier curve from its ``a`` end to its ``b`` end."""

    link: Edge
    start: Point
    control: Point
    end: Point
    length: float  # of the straight line between the ends

    def at(self, t: float) -> Point:
        u = 1 - t
        p0, c, p2 = self.start, self.control, self.end
        return (
            u * u * p0[0] + 2 * u * t * c[0] + t * t * p2[0],
            u * u * p0[1] + 2 * u * t * c[1] + t * t * p2[1],
        )


@dataclass(frozen=True)
class Layout:
    node_width: Mapping[str, float]
    position: Mapping[str, Point]  # each node's centre
    curves: tuple[Curve, ...]  # one per link, in the topology's order
    # how far each end's address plate sits from its node's centre along its link: (link index, end)
    address_distance: Mapping[tuple[int, str], float]


def layout(topology: Topology) -> Layout:
    node_width = {n.name: max(text_width(n.name) + 24, _NODE_W_MIN) for n in topology.nodes}
    hub = _hub(topology)
    unit = _unit_positions(topology, hub)
    distance = _address_distances(topology, unit, node_width)
    radius = _radius(topology, unit, hub, node_width, distance)
    position = {name: (x * radius, y * radius) for name, (x, y) in unit.items()}
    return Layout(node_width, position, _curves(topology.links, position), distance)


# --- on a unit circle ----------------------------------------------------------------------------------


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


def _circle(names: list[str], radius: float) -> dict[str, Point]:
    if len(names) == 1:
        return {names[0]: (0.0, 0.0)}
    step = 2 * math.pi / len(names)
    # start at the top; two nodes sit left and right, so their link is horizontal
    start = -math.pi / 2 if len(names) != 2 else math.pi
    return {
        name: (radius * math.cos(start + i * step), radius * math.sin(start + i * step)) for i, name in enumerate(names)
    }


def _unit_positions(topology: Topology, hub: str | None) -> dict[str, Point]:
    """Positions on a unit circle (a star's hub in the middle); the radius scales them later."""
    names = [n.name for n in topology.nodes]
    if hub is not None:
        return {hub: (0.0, 0.0), **_circle([n for n in names if n != hub], 1.0)}
    return _circle(names, 1.0 if len(names) > 1 else 0.0)


def _angle(unit: Mapping[str, Point], link: Edge, end: str) -> float:
    """The direction in which a link leaves one of its ends (it does not change with the radius)."""
    (x0, y0), (x2, y2) = (unit[link.a], unit[link.b]) if end == link.a else (unit[link.b], unit[link.a])
    return math.atan2(y2 - y0, x2 - x0)


# --- clearances ----------------------------------------------------------------------------------------


def _exit(w: float, h: float, ux: float, uy: float) -> float:
    """How far a ray from the centre of a w x h box, in direction (ux, uy), runs before it leaves the box."""
    return min(w / 2 / abs(ux) if ux else math.inf, h / 2 / abs(uy) if uy else math.inf)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _plate(d: float, ux: float, uy: float, w: float) -> Box:
    """The box an address plate ``w`` wide covers at distance ``d`` along (ux, uy), with a margin."""
    return (d * ux - w / 2 - 3, d * uy - PLATE_H / 2 - 1, d * ux + w / 2 + 3, d * uy + PLATE_H / 2 + 1)


def _address_distances(
    topology: Topology, unit: Mapping[str, Point], node_width: Mapping[str, float]
) -> dict[tuple[int, str], float]:
    """Where each end's address plate sits, as a distance from its node's centre along the link: just clear
    of the node box, and pushed further out until it clears the plates already placed around that node."""
    distance: dict[tuple[int, str], float] = {}
    for node in topology.nodes:
        placed: list[Box] = []
        for angle, i, text in _addressed_ends(topology, unit, node.name):
            ux, uy = math.cos(angle), math.sin(angle)
            w = text_width(text, SMALL) + 6
            d = _exit(node_width[node.name] + w, NODE_H + PLATE_H, ux, uy) + 4
            while any(_overlap(_plate(d, ux, uy, w), other) for other in placed) and d < 5000:
                d += 2
            placed.append(_plate(d, ux, uy, w))
            distance[(i, node.name)] = d
    return distance


def _addressed_ends(topology: Topology, unit: Mapping[str, Point], name: str) -> list[tuple[float, int, str]]:
    """The link ends at node ``name`` that carry an address: (angle, link index, address), by angle."""
    return sorted(
        (_angle(unit, link, name), i, text)
        for i, link in enumerate(topology.links)
        for end, text in ((link.a, link.a_address), (link.b, link.b_address))
        if end == name and text
    )


def _radius(
    topology: Topology,
    unit: Mapping[str, Point],
    hub: str | None,
    node_width: Mapping[str, float],
    distance: Mapping[tuple[int, str], float],
) -> float:
    """The circle's radius: neighbours on it never touch, even without a link between them, and every link is
    as long as its labels need."""
    count = len(topology.nodes)
    if count <= 1:
        return 0.0
    around = count - 1 if hub is not None else count
    widest = max([*node_width.values(), _NODE_W_MIN])
    radius = max(80.0, (widest + 30) / (2 * math.sin(math.pi / max(around, 2))))
    for i, link in enumerate(topology.links):
        (x0, y0), (x2, y2) = unit[link.a], unit[link.b]
        radius = max(radius, _needed(i, link, unit, node_width, distance) / (math.hypot(x2 - x0, y2 - y0) or 1.0))
    return radius


def _needed(
    i: int,
    link: Edge,
    unit: Mapping[str, Point],
    node_width: Mapping[str, float],
    distance: Mapping[tuple[int, str], float],
) -> float:
    """The length a link needs: its name and subnet in the middle, each end's address between that and the
    end's node, none of them touching."""
    angle = _angle(unit, link, link.a)
    ux, uy = math.cos(angle), math.sin(angle)
    middle = max(text_width(t, SMALL) + 6 for t in (link.name, link.subnet or ""))
    halves = []
    for text, end in ((link.a_address, link.a), (link.b_address, link.b)):
        if text:
            w = text_width(text, SMALL) + 6
            halves.append(distance[(i, end)] + _exit(w + middle, PLATE_H + _MIDDLE_H, ux, uy) + 4)
        else:
            halves.append(_exit(node_width[end] + middle, NODE_H + _MIDDLE_H, ux, uy) + 4)
    return 2 * max(halves)


# --- links ---------------------------------------------------------------------------------------------


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


def _curves(links: tuple[Edge, ...], position: Mapping[str, Point]) -> tuple[Curve, ...]:
    curves = []
    for link, bow in zip(links, _parallel_offsets(links), strict=True):
        p0, p2 = position[link.a], position[link.b]
        dx, dy = p2[0] - p0[0], p2[1] - p0[1]
        length = math.hypot(dx, dy) or 1.0
        mid = ((p0[0] + p2[0]) / 2, (p0[1] + p2[1]) / 2)
        control = (mid[0] - dy / length * bow * 2, mid[1] + dx / length * bow * 2)
        curves.append(Curve(link, p0, control, p2, length))
    return tuple(curves)
