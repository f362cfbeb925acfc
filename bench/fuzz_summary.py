"""Print the totals of a fuzz report (``FUZZ_REPORT=bench/results/fuzz.jsonl``, written by `make soak`).

    .venv/bin/python bench/fuzz_summary.py [bench/results/fuzz.jsonl]

docs/reliability.md quotes these lines.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def main(path: Path) -> int:
    properties: dict[str, Counter[str]] = {}
    responses: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["property"] == "api-schema":
            responses.update({str(k): int(v) for k, v in row["responses"].items()})
            continue
        counts = properties.setdefault(row["property"], Counter())
        counts.update({k: int(row[k]) for k in ("examples", "lessons", "errors")})

    def row(name: str, c: Counter[str]) -> str:
        return f"{name:<40} {c['examples']:>7} examples {c['lessons']:>6} valid lessons {c['errors']:>6} refused"

    total: Counter[str] = Counter()
    for name, counts in sorted(properties.items()):
        total.update(counts)
        print(row(name, counts))
    print(row("loader, all properties", total))
    if responses:
        by_code: Counter[str] = Counter()
        for key, n in responses.items():  # "POST /v1/livelessons 422"
            by_code[key.split()[-1]] += n
        answered = ", ".join(f"{n} x {code}" for code, n in sorted(by_code.items()))
        print(f"{'API requests (schemathesis)':<40} {sum(by_code.values()):>7} requests: {answered}")
        print(f"{'API 5xx':<40} {sum(n for code, n in by_code.items() if code.startswith('5')):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/fuzz.jsonl")))
