"""Topologies built from a plan (every subnet already decided) and, for a live lesson, its record: then each
endpoint carries its interface addresses and each link the state of its pings. Pure.

The plan of a live lesson comes from :func:`scheduler.core.plan_inputs.plan_for`, so the picture is of the
plan that runs.
"""

from __future__ import annotations

from scheduler.core.drawing.model import Edge, LinkState, Node, Topology
from scheduler.core.errors import LessonError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.plan import MAIN_NETWORK, SUBNET_POOL, Plan
from scheduler.core.plan_inputs import Draft, PlanOptions, PlanSettings, plan_for
from scheduler.core.records import LiveLesson

__all__ = ["from_plan", "from_record", "lesson_topology", "live_topology", "livelesson_topology"]

# the live lesson a lesson file's picture is planned as: its names are never shown, only its subnets
_PICTURE = Draft(id="0" * 10, session="graph", instance="graph")
_DEFAULT_SETTINGS = PlanOptions()


def from_plan(plan: Plan, title: str | None = None) -> Topology:
    """The lesson as planned: endpoints, one link per connection, each with its subnet."""
    return Topology(
        title or plan.lesson,
        tuple(Node(p.endpoint) for p in plan.pods),
        tuple(Edge(n.nad, n.a, n.b, str(n.subnet)) for n in plan.networks),
    )


def lesson_topology(lesson: ResolvedLesson, *, subnet_pool: str = SUBNET_POOL) -> Topology:
    """A lesson file's topology. Subnets left to the pool are shown as a live lesson would get them; of the
    deployment's settings only the subnet pool changes the picture."""
    plan = plan_for(_PICTURE, lesson, PlanOptions(subnet_pool=subnet_pool))
    return from_plan(plan, lesson.lesson.name or lesson.slug)


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
    links = tuple(
        Edge(net, ends[0], ends[1], None, _address(record, ends[0], net), _address(record, ends[1], net),
             _state(record, net, ends[0], ends[1]))
        for net, ends in _members(record).items()
        if len(ends) == 2
    )  # fmt: skip
    known = {n.name for n in nodes}
    extra = tuple(Node(e) for link in links for e in (link.a, link.b) if e not in known)
    return Topology(title or f"{record.lesson} ({record.id})", nodes + tuple(dict.fromkeys(extra)), links, live=True)


def livelesson_topology(
    record: LiveLesson,
    lesson: ResolvedLesson | None,
    settings: PlanSettings = _DEFAULT_SETTINGS,
    *,
    deployment: str = "",
) -> Topology:
    """A live lesson's picture: from its plan (:func:`~scheduler.core.plan_inputs.plan_for` with the
    deployment's ``settings``) when its lesson is known, subnets included; otherwise, or when the plan can no
    longer be made (a changed pool), from what the record itself holds."""
    if lesson is not None:
        try:
            plan = plan_for(record, lesson, settings, deployment=deployment)
        except LessonError:
            pass
        else:
            return live_topology(plan, record, title=f"{lesson.lesson.name or lesson.slug} ({record.id})")
    return from_record(record)


def _members(record: LiveLesson) -> dict[str, list[str]]:
    """Each network the record names (besides the main one) and the endpoints on it, in order of appearance."""
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
    return members


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
