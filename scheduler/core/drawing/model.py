"""A topology as data to draw: endpoints with their addresses, links with the state of their pings. Pure.

A live lesson's links carry the state of their pings: ``ok`` (both directions passed), ``failed`` (a ping
on it failed) or ``unknown`` (not measured yet); a lesson's carry none. The writers
(:mod:`~scheduler.core.drawing.mermaid`, :mod:`~scheduler.core.drawing.dot`, :mod:`~scheduler.core.drawing.svg`)
only draw a :class:`Topology`; :mod:`~scheduler.core.drawing.topologies` builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["COLOURS", "Edge", "LinkState", "Node", "Topology"]

LinkState = Literal["ok", "failed", "unknown"]
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

    @property
    def caption(self) -> str:
        """The link's one-line label: its name, then its subnet when known."""
        return f"{self.name} {self.subnet}" if self.subnet else self.name


@dataclass(frozen=True)
class Topology:
    title: str
    nodes: tuple[Node, ...]
    links: tuple[Edge, ...]
    live: bool = False
