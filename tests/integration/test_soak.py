"""The short soak (about 60 s of load, then the drain): bench/soak.py with the same stack and faults.

25 lessons of every topology in config/lessons, keepalives, deletes and TTL expiries, SIGKILLed
workers and one Redis restart (AOF). Nothing may be lost and nothing may leak; the long run (`make soak`,
200 lessons over 10 minutes) is recorded in docs/reliability.md.

The short failover soak does the same on a Redis Sentinel group (a primary, 2 replicas, 3 sentinels): 20
lessons, the primary SIGKILLed twice (once at 45 % of the run, once right after a request's 202), a replica
promoted each time and the old primary back as a replica; its long run is in docs/reliability.md too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.lessons import REPO

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_short_soak_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    soak = load_soak()
    config = soak.Config(duration=60, count=25, kill_min=12, kill_max=18, redis_at=0.45, redis_down=3.0, seed=8)
    lines: list[str] = []
    result = soak.run(config, log=lines.append)
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n" + "\n".join(lines) + "\n\n" + soak.table(result))
    assert result["requested"] == 25 and result["accepted"] == 25, result["counters"]
    # a kill waits (up to 10 s) for a moment when some lesson is in flight, so at least one, usually three
    assert result["worker_kills"] >= 1 and result["redis_restarts"] == 1, result["faults"]
    assert result["lost"] == 0, result["lost_detail"]
    # a worker may die only by our SIGKILL: one that exits by itself (e.g. on the Redis restart) is a bug
    assert result["unexpected_exits"] == [], result["unexpected_exits"]
    assert result["leaked"] == 0, result["leak_detail"]
    # every lesson is accounted for: ready, deleted by its intent before it was ready, or failed with a reason
    assert result["ready"] + result["deleted_before_ready"] + result["failed"] == result["accepted"], result
    assert result["ready"] >= 15, result
    assert all(reason != "?" for reason in result["failed_reasons"]), result["failed_reasons"]
    # while Redis restarts the API answers 503 (retried); never any other 5xx, and no load action broke
    errors = [
        k for k in result["counters"] if k.startswith("action error") or (k.startswith("api 5") and "503" not in k)
    ]
    assert errors == [], result["counters"]
    assert result["counters"].get("api transport errors", 0) == 0, result["counters"]
    assert result["final_gc"] and result["final_gc"][-1].split() == [
        "expired=0", "stuck=0", "redriven=0", "orphan=0", "node_removed=0"
    ]  # fmt: skip


def test_short_sentinel_soak_survives_two_primary_kills(tmp_path: Path) -> None:
    soak = load_soak()
    config = soak.Config(
        duration=60, count=20, kill_min=12, kill_max=18, redis_at=0.45, redis_down=3.0, seed=17, sentinel=True
    )
    lines: list[str] = []
    result = soak.run(config, log=lines.append, logs=tmp_path / "logs")
    (tmp_path / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n" + "\n".join(lines) + "\n\n" + soak.table(result))
    kills = result["primary_kills"]
    # the 20 planned lessons, and each kill's probe: all accepted
    assert result["requested"] == 20 + len(kills) and result["accepted"] == result["requested"], result["counters"]
    # a lesson that got its 202 and then vanished or never settled counts as lost
    assert result["lost"] == 0, result["lost_detail"]
    assert result["leaked"] == 0, result["leak_detail"]
    assert result["unexpected_exits"] == [], result["unexpected_exits"]
    assert result["worker_kills"] >= 1 and result["redis_restarts"] == 0, result["faults"]
    assert len(kills) == 2, result["faults"]
    assert kills[1]["cause"].startswith("right after the 202 of"), kills
    for kill in kills:
        assert kill["failover_s"] is not None and kill["new_port"] != kill["old_port"], kill
        # measured: a POST sent after the kill got its 202 (the probe's, sent every 0.1 s from the kill)
        assert kill["kill_to_first_202_s"] is not None, kill
        # the old primary came back as a connected replica of the current primary
        assert kill["old_primary_role"] == "slave" and kill["replicas_in_sync"], kill
    assert result["ready"] + result["deleted_before_ready"] + result["failed"] == result["accepted"], result
    assert all(reason != "?" for reason in result["failed_reasons"]), result["failed_reasons"]
    # during a failover the API answers 503 (retried); never any other 5xx, and no load action broke
    errors = [
        k for k in result["counters"] if k.startswith("action error") or (k.startswith("api 5") and "503" not in k)
    ]
    assert errors == [], result["counters"]
    assert result["final_gc"] and result["final_gc"][-1].split() == [
        "expired=0", "stuck=0", "redriven=0", "orphan=0", "node_removed=0"
    ]  # fmt: skip
