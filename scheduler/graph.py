"""Topology pictures of a lesson, or of a live lesson, as Mermaid, Graphviz dot or SVG. Pure.

A :class:`Topology` is built from a plan (every subnet already decided) and, for a live lesson, its record:
then each endpoint carries its interface addresses and each link the state of its pings, ``ok`` (both
directions passed), ``failed`` (a ping on it failed) or ``unknown`` (not measured yet). The three
renderers only draw a Topology; the SVG one lays nodes out on a circle by itself, so no Graphviz binary
is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Literal

from scheduler.errors import LessonError
from scheduler.lessons import ResolvedLesson
from scheduler.plan import Plan, make_plan
from scheduler.records import LiveLesson

__all__ = [
    "COLOURS",
    "FORMATS",
    "Link",
    "LinkState",
    "Node",
    "Topology",
    "from_plan",
    "from_record",
    "lesson_topology",
    "live_topology",
    "livelesson_topology",
    "render",
    "to_dot",
    "to_mermaid",
    "to_svg",
]

LinkState = Literal["ok", "failed", "unknown"]
FORMATS = ("mermaid", "dot", "svg")
COLOURS: dict[LinkState, str] = {"ok": "#2e7d32", "failed": "#c62828", "unknown": "#9e9e9e"}


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[str, ...] = ()  # "10.10.12.2/24", in interface order (live lessons only)


@dataclass(frozen=True)
class Link:
    name: str  # the network (NAD) name, "bb1-bb2"
    a: str
    b: str
    subnet: str | None = None
    a_address: str | None = None
    b_address: str | None = None
    state: LinkState | None = None  # None: a lesson, not a live lesson; nothing was measured


@dataclass(frozen=True)
class Topology:
    title: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    live: bool = False


# --- building ------------------------------------------------------------------------------------------


def from_plan(plan: Plan, title: str | None = None) -> Topology:
    """The lesson as planned: endpoints, one link per connection, each with its subnet."""
    return Topology(
        title or plan.lesson,
        tuple(Node(p.endpoint) for p in plan.pods),
        tuple(Link(n.nad, n.a, n.b, str(n.subnet)) for n in plan.networks),
    )


def lesson_topology(lesson: ResolvedLesson, *, subnet_pool: str = "10.10.0.0/16") -> Topology:
    """A lesson file's topology. Subnets left to the pool are shown as a live lesson would get them."""
    plan = make_plan(lesson, "0" * 10, "graph", instance="graph", subnet_pool=subnet_pool)
    return from_plan(plan, lesson.lesson.name or lesson.slug)


def _state(record: LiveLesson, network: str, a: str, b: str) -> LinkState:
    checks = [c for c in record.checks if c.network == network]
    if any(not c.ok for c in checks):
        return "failed"
    passed = {(c.source, c.target) for c in checks if c.ok}
    return "ok" if {(a, b), (b, a)} <= passed else "unknown"


def _address(record: LiveLesson, endpoint: str, network: str) -> str | None:
    ep = record.endpoints.get(endpoint)
    if ep is None:
        return None
    return next((i.address for i in ep.interfaces if i.network == network and i.address), None)


def _addresses(record: LiveLesson, endpoint: str) -> tuple[str, ...]:
    ep = record.endpoints.get(endpoint)
    return tuple(i.address for i in ep.interfaces if i.address) if ep else ()


def live_topology(plan: Plan, record: LiveLesson, title: str | None = None) -> Topology:
    """The plan's topology with the record's addresses and each link coloured by its pings."""
    nodes = tuple(Node(p.endpoint, _addresses(record, p.endpoint)) for p in plan.pods)
    links = tuple(
        Link(
            n.nad,
            n.a,
            n.b,
            str(n.subnet),
            _address(record, n.a, n.nad),
            _address(record, n.b, n.nad),
            _state(record, n.nad, n.a, n.b),
        )
        for n in plan.networks
    )
    return Topology(title or f"{record.lesson} ({record.id})", nodes, links, live=True)


def from_record(record: LiveLesson, title: str | None = None) -> Topology:
    """A live lesson's topology from its record alone (its lesson left the catalog): the networks that the
    endpoints' interfaces and the checks name. No subnets; the record does not keep them."""
    nodes = tuple(Node(name, _addresses(record, name)) for name in record.endpoints)
    members: dict[str, list[str]] = {}
    for name, ep in record.endpoints.items():
        for itf in ep.interfaces:
            members.setdefault(itf.network, []).append(name)
    for c in record.checks:
        for name in (c.source, c.target):
            if name not in members.setdefault(c.network, []):
                members[c.network].append(name)
    links = tuple(
        Link(net, ends[0], ends[1], None, _address(record, ends[0], net), _address(record, ends[1], net),
             _state(record, net, ends[0], ends[1]))
        for net, ends in members.items()
        if len(ends) == 2
    )  # fmt: skip
    known = {n.name for n in nodes}
    extra = tuple(Node(e) for link in links for e in (link.a, link.b) if e not in known)
    return Topology(title or f"{record.lesson} ({record.id})", nodes + tuple(dict.fromkeys(extra)), links, live=True)


def livelesson_topology(
    record: LiveLesson, lesson: ResolvedLesson | None, *, subnet_pool: str = "10.10.0.0/16"
) -> Topology:
    """A live lesson's picture: from its plan when its lesson is known (subnets included), otherwise, or when
    the plan can no longer be made (a changed pool), from what the record itself holds."""
    if lesson is not None:
        try:
            plan = make_plan(lesson, record.id, record.session, instance=record.instance, subnet_pool=subnet_pool)
        except LessonError:
            pass
        else:
            return live_topology(plan, record, title=f"{lesson.lesson.name or lesson.slug} ({record.id})")
    return from_record(record)


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


def _link_text(link: Link) -> str:
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


def _parallel_offsets(links: Iterable[Link]) -> list[float]:
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

    def angle_of(link: Link, end: str) -> float:
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

    def needed(i: int, link: Link) -> float:
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


RENDERERS = {"mermaid": to_mermaid, "dot": to_dot, "svg": to_svg}


def render(topology: Topology, fmt: str = "mermaid") -> str:
    try:
        return RENDERERS[fmt](topology)
    except KeyError as exc:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from exc
