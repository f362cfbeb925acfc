"""Placement (scheduler/core/placement.py): one node while the lesson fits, else few crossing links; and a
lower bound that holds, checked against every placement of small lessons (hypothesis)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.core.placement import NodeRoom, NoRoom, crossing_links, lower_bound, place, spread
from scheduler.core.plan import Resources

ROOMY = (10**6, 10**12)  # CPU and memory that never bind, where a test is about pods


def nodes(*pods: int) -> list[NodeRoom]:
    return [NodeRoom(f"node-{i}", p, *ROOMY) for i, p in enumerate(pods)]


def ring(n: int) -> tuple[list[str], list[tuple[str, str]]]:
    names = [f"e{i:02d}" for i in range(n)]
    return names, [(names[i], names[(i + 1) % n]) for i in range(n)]


@st.composite
def lessons(draw: st.DrawFn, max_endpoints: int = 7) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(2, max_endpoints))
    names = [f"e{i}" for i in range(n)]
    pairs = st.tuples(st.sampled_from(names), st.sampled_from(names)).filter(lambda p: p[0] != p[1])
    return names, draw(st.lists(pairs, max_size=2 * n))


def best_possible(endpoints: list[str], links: list[tuple[str, str]], room: list[NodeRoom]) -> int | None:
    """The fewest crossing links of any placement (every one is tried), or None if none fits."""
    best = None
    for choice in itertools.product(room, repeat=len(endpoints)):
        if all(sum(1 for c in choice if c is n) <= n.pods for n in room):
            cut = len(crossing_links({e: c.name for e, c in zip(endpoints, choice, strict=True)}, links))
            best = cut if best is None else min(best, cut)
    return best


def test_a_lesson_that_fits_stays_on_one_node_the_fullest_that_fits() -> None:
    endpoints, links = ring(10)
    placement = place(endpoints, links, nodes(40, 12, 10, 9, 30))
    assert placement.used == ("node-2",) and placement.crossing == () and placement.proven_minimal


def test_forty_endpoints_on_nodes_of_sixteen_cross_the_minimum_and_a_link_blind_spread_far_more() -> None:
    endpoints, links = ring(40)
    room = nodes(16, 16, 16, 16)
    placement = place(endpoints, links, room)
    assert len(placement.used) == 3 and len(placement.crossing) == 3 == placement.bound
    assert placement.proven_minimal
    blind = spread(endpoints, links, room)
    assert len(blind.crossing) > 10 * len(placement.crossing)


def test_cpu_and_memory_bind_as_well_as_pods() -> None:
    endpoints, links = ring(6)
    heavy = Resources(cpu_millicores=500, memory_bytes=1 << 30)
    room = [
        NodeRoom("a", 100, 1000, 100 << 30), NodeRoom("b", 100, 2000, 100 << 30), NodeRoom("c", 100, 4000, 1 << 30)
    ]
    placement = place(endpoints, links, room, demand=heavy)
    per_node = {n: sum(1 for v in placement.nodes.values() if v == n) for n in placement.used}
    assert per_node["a"] <= 2 and per_node["b"] <= 4 and per_node.get("c", 0) <= 1
    assert len(placement.crossing) == 2 == placement.bound


def test_no_room_is_a_temporary_error_and_bad_input_is_named() -> None:
    endpoints, links = ring(10)
    with pytest.raises(NoRoom, match="10 endpoints"):
        place(endpoints, links, nodes(4, 4))
    with pytest.raises(ValueError, match="link e00-zz"):
        place(endpoints, [("e00", "zz")], nodes(20))
    with pytest.raises(ValueError, match="node is listed twice"):
        place(endpoints, links, [NodeRoom("a", 5, *ROOMY), NodeRoom("a", 5, *ROOMY)])


@settings(max_examples=150, deadline=None)
@given(lessons(), st.lists(st.integers(1, 4), min_size=2, max_size=3))
def test_the_bound_holds_and_the_placement_is_valid(
    lesson: tuple[list[str], list[tuple[str, str]]], pods: list[int]
) -> None:
    endpoints, links = lesson
    room = nodes(*pods)
    optimum = best_possible(endpoints, links, room)
    if optimum is None:
        with pytest.raises(NoRoom):
            place(endpoints, links, room)
        return
    placement = place(endpoints, links, room)
    # every endpoint placed, no node over its room, crossings counted right
    assert sorted(placement.nodes) == sorted(endpoints)
    for node in room:
        assert sum(1 for v in placement.nodes.values() if v == node.name) <= node.pods
    assert placement.crossing == crossing_links(placement.nodes, links)
    # the bound is a bound: no placement does better (every one was tried)
    assert lower_bound(endpoints, links, room) <= optimum <= len(placement.crossing)
    if placement.proven_minimal:
        assert len(placement.crossing) == optimum
    # one node whenever one holds the lesson
    if any(n.pods >= len(endpoints) for n in room):
        assert len(placement.used) == 1


@settings(max_examples=60, deadline=None)
@given(lessons(max_endpoints=14), st.lists(st.integers(2, 8), min_size=2, max_size=4), st.randoms())
def test_deterministic_whatever_the_order_and_never_worse_than_link_blind(
    lesson: tuple[list[str], list[tuple[str, str]]], pods: list[int], rnd: random.Random
) -> None:
    endpoints, links = lesson
    room = nodes(*pods)
    try:
        placement = place(endpoints, links, room)
    except NoRoom:
        return
    shuffled_room, shuffled_endpoints = room[:], endpoints[:]
    rnd.shuffle(shuffled_room)
    rnd.shuffle(shuffled_endpoints)
    assert place(shuffled_endpoints, links, shuffled_room).nodes == placement.nodes
    assert len(placement.crossing) <= len(spread(endpoints, links, room).crossing)


@pytest.mark.parametrize(("size", "node_pods", "expected"), [(40, 16, 3), (33, 16, 3), (32, 16, 2), (100, 16, 7)])
def test_rings_split_into_arcs(size: int, node_pods: int, expected: int) -> None:
    endpoints, links = ring(size)
    placement = place(endpoints, links, nodes(*[node_pods] * 8))
    assert len(placement.crossing) == expected and placement.proven_minimal
