"""Which node each endpoint of a lesson runs on. Pure and deterministic.

The seed keeps a lesson on one node (required pod affinity): its links are Linux bridges, which cannot
span hosts. A lesson that fits on one node still goes on one: the fitting node with the least room
left ("best fit"). The biggest free spaces then stay free for the lessons that need them. A lesson that
fits on no single node is split so that the fewest links cross nodes, since each crossing link becomes an
overlay segment. Choosing that split is graph partitioning with capacities, which is NP-hard in general.
So :func:`place` returns a good split, not always the best one, together with a lower bound that no split
can beat. When the two are equal, the split is proven minimal.

- **Split.** Greedy graph growing from several starting endpoints: fill the roomiest node first, always with
  the unplaced endpoint that has the most links into the node so far. Then a local search moves single
  endpoints, or swaps pairs, between nodes while that cuts fewer links and every node keeps room. Of the
  results, the one with the fewest crossing links wins (then the fewest nodes, then names).
- **Bound.** A connected component of the lesson whose demand needs at least ``q`` nodes (no single node
  holds it, or the ``q - 1`` roomiest nodes in pods, CPU or memory do not add up to it), with edge
  connectivity ``λ`` (the fewest links whose removal disconnects it), loses at least
  ``max(q - 1, ⌈q·λ/2⌉)`` links to any split into ``q`` or more parts. Each part has at least λ links
  leaving it, and each crossing link leaves two parts. Components share no links, so their bounds add up.

:func:`spread` is what a link-blind scheduler does, the Kubernetes default (least allocated node first):
the baseline the benchmark compares against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.core.errors import TemporaryError
from scheduler.core.lessons import ResolvedLesson
from scheduler.core.plan import POD_REQUESTS, Resources

__all__ = [
    "Demand",
    "Links",
    "NoRoom",
    "NodeRoom",
    "Placement",
    "crossing_links",
    "lower_bound",
    "place",
    "place_lesson",
    "pod_room",
    "spread",
]

# Greedy growth is tried from this many starting endpoints (the best-connected first). More starts rarely
# find a better split and cost one growth and one local search each.
STARTS = 32

Links = Sequence[tuple[str, str]]  # a lesson's links as (a, b) endpoint names
Demand = Resources | Mapping[str, Resources]  # what each pod requests: one for all, or per endpoint


class NoRoom(TemporaryError):
    """The nodes together have no room for the lesson now; room may free up as other lessons end."""


@dataclass(frozen=True)
class NodeRoom:
    """What a node can still take: pods, and CPU and memory requests."""

    name: str
    pods: int
    cpu_millicores: int
    memory_bytes: int

    def holds(self, load: _Load) -> bool:
        return load.pods <= self.pods and load.cpu <= self.cpu_millicores and load.memory <= self.memory_bytes


def pod_room(capacity: int | None, node_max_pods: int, held: int) -> int:
    """The pods a node can still take: its own capacity (None: no limit of its own) capped by
    LESSON_NODE_MAX_PODS (0: no cap), less the ``held`` pods already on it; never below 0. The one clamp
    both backends' :meth:`rooms` ask."""
    limit = capacity if capacity is not None else 1 << 30
    if node_max_pods:
        limit = min(limit, node_max_pods)
    return max(0, limit - held)


@dataclass(frozen=True)
class _Load:
    pods: int = 0
    cpu: int = 0
    memory: int = 0

    def __add__(self, other: _Load) -> _Load:
        return _Load(self.pods + other.pods, self.cpu + other.cpu, self.memory + other.memory)

    def __sub__(self, other: _Load) -> _Load:
        return _Load(self.pods - other.pods, self.cpu - other.cpu, self.memory - other.memory)


@dataclass(frozen=True)
class Placement:
    """``nodes``: endpoint -> node. ``crossing``: the indexes (in the given links) of links between nodes."""

    nodes: Mapping[str, str]
    crossing: tuple[int, ...]
    bound: int  # no placement on these nodes crosses fewer links

    @property
    def proven_minimal(self) -> bool:
        return len(self.crossing) == self.bound

    @property
    def used(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.nodes.values())))


def crossing_links(nodes: Mapping[str, str], links: Links) -> tuple[int, ...]:
    return tuple(i for i, (a, b) in enumerate(links) if nodes[a] != nodes[b])


def _loads(endpoints: Sequence[str], demand: Demand) -> dict[str, _Load]:
    def load(r: Resources) -> _Load:
        return _Load(1, r.cpu_millicores, r.memory_bytes)

    if isinstance(demand, Resources):
        return {e: load(demand) for e in endpoints}
    return {e: load(demand.get(e, POD_REQUESTS)) for e in endpoints}


def _checked_loads(
    endpoints: Sequence[str], links: Links, nodes: Sequence[NodeRoom], demand: Demand
) -> dict[str, _Load]:
    """Each endpoint's load; ValueError when the input is inconsistent (an endpoint or a node listed twice, a
    link to an endpoint the lesson does not have)."""
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("an endpoint is listed twice")
    known = set(endpoints)
    for a, b in links:
        if a not in known or b not in known:
            raise ValueError(f"link {a}-{b} names an endpoint the lesson does not have")
    if len({n.name for n in nodes}) != len(nodes):
        raise ValueError("a node is listed twice")
    return _loads(endpoints, demand)


def place(
    endpoints: Sequence[str], links: Links, nodes: Sequence[NodeRoom], demand: Demand = POD_REQUESTS
) -> Placement:
    """One node when the lesson fits on one (best fit), else a split with few crossing links (see above).

    Deterministic: the same lesson and nodes, in any order, give the same placement. Raises NoRoom when no
    placement fits, ValueError when the input is inconsistent.
    """
    loads = _checked_loads(endpoints, links, nodes, demand)
    total = sum(loads.values(), _Load())
    ordered = sorted(nodes, key=lambda n: n.name)
    fitting = [n for n in ordered if n.holds(total)]
    if fitting:
        best = min(fitting, key=lambda n: (n.pods - total.pods, n.cpu_millicores - total.cpu, n.name))
        return Placement({e: best.name for e in endpoints}, (), 0)
    graph = _Graph(sorted(endpoints), links)
    candidates = []
    for start in graph.starts(STARTS):
        grown = _grow(graph, start, ordered, loads)
        if grown is not None:
            candidates.append(_refine(graph, grown, ordered, loads))
    if not candidates:
        raise NoRoom(
            f"no placement of {len(endpoints)} endpoints fits on {len(nodes)} nodes "
            f"({_pods(sum(n.pods for n in nodes))} free in all)",
            delay=30.0,
        )
    best_nodes = min(candidates, key=lambda c: (graph.cut(c), len(set(c.values())), sorted(c.items())))
    return Placement(dict(best_nodes), crossing_links(best_nodes, links), lower_bound(endpoints, links, nodes, demand))


def place_lesson(lesson: ResolvedLesson, nodes: Sequence[NodeRoom]) -> Placement:
    """:func:`place` for a lesson: its endpoints, and its links as (a, b) pairs."""
    links = [(link.a.name, link.b.name) for link in lesson.links]
    return place([ep.name for ep in lesson.endpoints], links, nodes)


def _pods(count: int) -> str:
    return f"{count} pod" if count == 1 else f"{count} pods"


def spread(
    endpoints: Sequence[str], links: Links, nodes: Sequence[NodeRoom], demand: Demand = POD_REQUESTS
) -> Placement:
    """A link-blind placement: each endpoint, in name order, on the node with the most pods free."""
    loads = _checked_loads(endpoints, links, nodes, demand)
    used = {n.name: _Load() for n in nodes}
    room = {n.name: n for n in nodes}
    out: dict[str, str] = {}
    for endpoint in sorted(endpoints):
        fits = [n for n in sorted(room) if room[n].holds(used[n] + loads[endpoint])]
        if not fits:
            raise NoRoom(f"no node has room for endpoint {endpoint}", delay=30.0)
        node = min(fits, key=lambda n: (used[n].pods - room[n].pods, n))  # the most pods free; then by name
        used[node] = used[node] + loads[endpoint]
        out[endpoint] = node
    return Placement(out, crossing_links(out, links), lower_bound(endpoints, links, nodes, demand))


def lower_bound(
    endpoints: Sequence[str], links: Links, nodes: Sequence[NodeRoom], demand: Demand = POD_REQUESTS
) -> int:
    """Links that every placement on ``nodes`` crosses, at least (module docstring)."""
    loads = _loads(endpoints, demand)
    graph = _Graph(sorted(endpoints), links)
    bound = 0
    for component in graph.components():
        need = sum((loads[e] for e in component), _Load())
        parts = max(
            _nodes_needed(need.pods, [n.pods for n in nodes]),
            _nodes_needed(need.cpu, [n.cpu_millicores for n in nodes]),
            _nodes_needed(need.memory, [n.memory_bytes for n in nodes]),
            1 if any(n.holds(need) for n in nodes) else 2,
        )
        if parts >= 2:
            bound += max(parts - 1, math.ceil(parts * graph.edge_connectivity(component) / 2))
    return bound


def _nodes_needed(need: int, rooms: list[int]) -> int:
    """The fewest nodes whose room in one dimension adds up to ``need`` (a lower bound on the parts)."""
    total = 0
    for count, room in enumerate(sorted(rooms, reverse=True), start=1):
        total += room
        if total >= need:
            return count
    return len(rooms) + 1


class _Graph:
    """The lesson as a multigraph: endpoints, and each link as one edge (parallel links count twice)."""

    def __init__(self, endpoints: list[str], links: Links) -> None:
        self.endpoints = endpoints
        self.weight: dict[str, dict[str, int]] = {e: {} for e in endpoints}
        for a, b in links:
            if a != b:
                self.weight[a][b] = self.weight[a].get(b, 0) + 1
                self.weight[b][a] = self.weight[b].get(a, 0) + 1

    def degree(self, e: str) -> int:
        return sum(self.weight[e].values())

    def starts(self, count: int) -> list[str]:
        """Where greedy growth may start: the ``count`` best-connected endpoints."""
        return sorted(self.endpoints, key=lambda e: (-self.degree(e), e))[:count]

    def cut(self, nodes: Mapping[str, str]) -> int:
        return sum(w for a in self.endpoints for b, w in self.weight[a].items() if a < b and nodes[a] != nodes[b])

    def components(self) -> list[list[str]]:
        seen: set[str] = set()
        out = []
        for start in self.endpoints:
            if start in seen:
                continue
            stack, part = [start], []
            seen.add(start)
            while stack:
                e = stack.pop()
                part.append(e)
                for f in self.weight[e]:
                    if f not in seen:
                        seen.add(f)
                        stack.append(f)
            out.append(sorted(part))
        return out

    def edge_connectivity(self, component: list[str]) -> int:
        """Stoer-Wagner's global minimum cut of a connected component (0 for a single endpoint)."""
        if len(component) < 2:
            return 0
        groups = {e: {f: w for f, w in self.weight[e].items()} for e in component}
        best = math.inf
        while len(groups) > 1:
            order = sorted(groups)
            added = [order[0]]
            attached = {e: groups[order[0]].get(e, 0) for e in order[1:]}
            while attached:
                nxt = max(sorted(attached), key=lambda e: attached[e])
                last_weight = attached.pop(nxt)
                added.append(nxt)
                for f, w in groups[nxt].items():
                    if f in attached:
                        attached[f] += w
            best = min(best, last_weight)
            s, t = added[-2], added[-1]
            for f, w in groups.pop(t).items():  # merge t into s
                if f == s:
                    continue
                groups[s][f] = groups[s].get(f, 0) + w
                groups[f][s] = groups[f].get(s, 0) + w
                del groups[f][t]
            groups[s].pop(t, None)
        return int(best)


def _grow(graph: _Graph, start: str, nodes: list[NodeRoom], loads: dict[str, _Load]) -> dict[str, str] | None:
    """Fill the roomiest nodes first, each with a region grown by links: from ``start`` on the first node, and
    on each next one from where the last left off (the endpoint with the most links to placed ones)."""
    placed: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: (-n.pods, -n.cpu_millicores, n.name)):
        load = _Load()
        members: set[str] = set()
        while len(placed) < len(graph.endpoints):
            free = [e for e in graph.endpoints if e not in placed and node.holds(load + loads[e])]
            if not free:
                break

            chosen = min(free, key=lambda e: _growth_key(graph, e, start, placed, members))
            placed[chosen] = node.name
            members.add(chosen)
            load = load + loads[chosen]
    return placed if len(placed) == len(graph.endpoints) else None


def _growth_key(graph: _Graph, e: str, start: str, placed: dict[str, str], members: set[str]) -> tuple[int, int, str]:
    """Which free endpoint joins the node next: the least key."""
    links = graph.weight[e].items()
    unplaced = sum(w for f, w in links if f not in placed)
    if members:  # grow: the links it brings inside, less those it leaves dangling to unplaced endpoints
        return (-(sum(w for f, w in links if f in members) - unplaced), 0, e)
    if placed:  # start a node next to what is placed already
        return (-sum(w for f, w in links if f in placed), unplaced, e)
    return (int(e != start), 0, e)


def _refine(graph: _Graph, nodes: dict[str, str], room: list[NodeRoom], loads: dict[str, _Load]) -> dict[str, str]:
    """Moves and swaps that each cross fewer links and overfill no node, until none is left."""
    capacity = {n.name: n for n in room}
    used = {n.name: _Load() for n in room}
    for e, n in nodes.items():
        used[n] = used[n] + loads[e]

    def gain(e: str, to: str) -> int:  # links of e that stop crossing minus links that start to
        return sum(w if nodes[f] == to else -w if nodes[f] == nodes[e] else 0 for f, w in graph.weight[e].items())

    improved = True
    while improved:
        improved = False
        for e in graph.endpoints:
            for to in sorted(capacity):
                if to != nodes[e] and gain(e, to) > 0 and capacity[to].holds(used[to] + loads[e]):
                    used[nodes[e]], used[to] = used[nodes[e]] - loads[e], used[to] + loads[e]
                    nodes[e] = to
                    improved = True
        if improved:
            continue
        for i, e in enumerate(graph.endpoints):
            for f in graph.endpoints[i + 1 :]:
                ne, nf = nodes[e], nodes[f]
                if ne == nf:
                    continue
                between = graph.weight[e].get(f, 0)
                if gain(e, nf) + gain(f, ne) - 2 * between <= 0:
                    continue
                after_e, after_f = used[ne] - loads[e] + loads[f], used[nf] - loads[f] + loads[e]
                if capacity[ne].holds(after_e) and capacity[nf].holds(after_f):
                    used[ne], used[nf] = after_e, after_f
                    nodes[e], nodes[f] = nf, ne
                    improved = True
    return nodes
