"""A lesson's or a live lesson's topology, as data to draw: endpoints with their addresses, links with the
state of their pings. Pure.

A :class:`Topology` is built from a plan (every subnet already decided) and, for a live lesson, its record:
then each endpoint carries its interface addresses and each link the state of its pings, ``ok`` (both
directions passed), ``failed`` (a ping on it failed) or ``unknown`` (not measured yet). The writers
(:mod:`scheduler.core.graph_text`, :mod:`scheduler.core.graph_svg`) only draw a Topology.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scheduler.core.errors import LessonError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.plan import MAIN_NETWORK, Plan, make_plan
from scheduler.core.records import LiveLesson

__all__ = [
    "COLOURS",
    "FORMATS",
    "Edge",
    "LinkState",
    "Node",
    "Topology",
    "from_plan",
    "from_record",
    "lesson_topology",
    "live_topology",
    "livelesson_topology",
]

LinkState = Literal["ok", "failed", "unknown"]
FORMATS = ("mermaid", "dot", "svg")
COLOURS: dict[LinkState, str] = {"ok": "#2e7d32", "failed": "#c62828", "unknown": "#9e9e9e"}


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[str, ...] = ()  # "10.10.12.2/24", in interface order (live lessons only)


@dataclass(frozen=True)
class Edge:
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
    links: tuple[Edge, ...]
    live: bool = False


# --- building ------------------------------------------------------------------------------------------


def from_plan(plan: Plan, title: str | None = None) -> Topology:
    """The lesson as planned: endpoints, one link per connection, each with its subnet."""
    return Topology(
        title or plan.lesson,
        tuple(Node(p.endpoint) for p in plan.pods),
        tuple(Edge(n.nad, n.a, n.b, str(n.subnet)) for n in plan.networks),
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
    # the links' addresses: eth0 (the main network every pod has) is not a link of the drawing
    return tuple(i.address for i in ep.interfaces if i.address and i.network != MAIN_NETWORK) if ep else ()


def live_topology(plan: Plan, record: LiveLesson, title: str | None = None) -> Topology:
    """The plan's topology with the record's addresses and each link coloured by its pings."""
    nodes = tuple(Node(p.endpoint, _addresses(record, p.endpoint)) for p in plan.pods)
    links = tuple(
        Edge(
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
            if itf.network != MAIN_NETWORK:
                members.setdefault(itf.network, []).append(name)
    for c in record.checks:
        if c.network == MAIN_NETWORK:
            continue
        for name in (c.source, c.target):
            if name not in members.setdefault(c.network, []):
                members[c.network].append(name)
    links = tuple(
        Edge(net, ends[0], ends[1], None, _address(record, ends[0], net), _address(record, ends[1], net),
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
