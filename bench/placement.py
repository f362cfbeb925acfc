"""Placement: crossing links of scheduler.core.placement against a link-blind spread, and the lower bound.

Run: `.venv/bin/python bench/placement.py`. Pure computation (no root, no Redis); prints a table.

For each topology of 40 endpoints on nodes that hold 16 each (and a few more shapes): the links that cross
nodes with `place` (the scheduler's) and with `spread` (each pod on the node with the most pods free, in
name order: what Kubernetes' default scheduler does without affinity), the lower bound no placement beats,
whether `place` is proven minimal, and its time.
"""

from __future__ import annotations

import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.core.placement import NodeRoom, place, spread

Links = list[tuple[str, str]]


def ring(n: int) -> tuple[list[str], Links]:
    names = [f"r{i:03d}" for i in range(n)]
    return names, [(names[i], names[(i + 1) % n]) for i in range(n)]


def line(n: int) -> tuple[list[str], Links]:
    names, links = ring(n)
    return names, links[:-1]


def grid(rows: int, cols: int) -> tuple[list[str], Links]:
    names = [f"g{r:02d}{c:02d}" for r in range(rows) for c in range(cols)]
    right = [(f"g{r:02d}{c:02d}", f"g{r:02d}{c + 1:02d}") for r in range(rows) for c in range(cols - 1)]
    down = [(f"g{r:02d}{c:02d}", f"g{r + 1:02d}{c:02d}") for r in range(rows - 1) for c in range(cols)]
    return names, right + down


def pods_of_four(n: int) -> tuple[list[str], Links]:
    """Routers in groups of four (a full mesh each), the groups joined in a ring: a campus of PoPs."""
    names = [f"p{i:03d}" for i in range(n)]
    links = [(names[g + a], names[g + b]) for g in range(0, n, 4) for a in range(4) for b in range(a + 1, 4)]
    links += [(names[g], names[(g + 4) % n]) for g in range(0, n, 4)]
    return names, links


def random_sparse(n: int, seed: int = 7) -> tuple[list[str], Links]:
    rnd = random.Random(seed)
    names = [f"x{i:03d}" for i in range(n)]
    links = [(names[i], names[rnd.randrange(i)]) for i in range(1, n)]  # a random tree, then a few more
    links += [tuple(rnd.sample(names, 2)) for _ in range(n // 4)]  # type: ignore[misc]
    return names, links


CASES = [
    ("ring of 40", ring(40), 16),
    ("line of 40", line(40), 16),
    ("grid 5x8", grid(5, 8), 16),
    ("10 meshes of 4 in a ring", pods_of_four(40), 16),
    ("random sparse 40", random_sparse(40), 16),
    ("ring of 12 (fits one node)", ring(12), 16),
    ("ring of 100", ring(100), 16),
]


def main() -> int:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# bench/placement.py: {when}, CPython {platform.python_version()}")
    print("# nodes: as many as needed plus one, 16 pods each; crossing = links whose ends are on different nodes")
    header = ("topology", "endpoints", "links", "nodes used", "crossing (place)", "bound", "minimal",
              "crossing (spread)", "place ms")  # fmt: skip
    rows = []
    for title, (endpoints, links), per_node in CASES:
        room = [NodeRoom(f"node-{i}", per_node, 10**6, 10**12) for i in range(len(endpoints) // per_node + 2)]
        t0 = time.perf_counter()
        chosen = place(endpoints, links, room)
        ms = (time.perf_counter() - t0) * 1000
        blind = spread(endpoints, links, room)
        rows.append((title, len(endpoints), len(links), len(chosen.used), len(chosen.crossing), chosen.bound,
                     "yes" if chosen.proven_minimal else "not proven", len(blind.crossing), f"{ms:.0f}"))  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
