"""``lessonctl demo`` as a user runs it: the installed console script in a subprocess, with its own private
Redis and a real Celery worker, on the local backend (root).

- Machine output never wraps: with COLUMNS=40 and no terminal, every worker log line the demo prints is one
  JSON event, and ``--json`` prints one JSON document. The lesson fails for a real reason: LESSON_CNI_PATH
  names a folder without the CNI plugins, so the worker's first step fails at once.
- "ready in" is request -> ready (the record's ``ready_at - created_at``), the request goes out only after
  the worker answered a control ping, and the worker's start-up is reported on a line of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lessonctl.demo import json_events
from tests.support.lessons import CURRICULUM

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]

LESSONCTL = Path(sys.executable).with_name("lessonctl")


def demo(
    tmp_path: Path, instance: str, *args: str, columns: int = 40, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``lessonctl demo ARGS`` without a terminal (stdin, stdout and stderr are not TTYs), COLUMNS as given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_") and k not in {"COLUMNS", "LINES"}}
    base.update(
        {
            "LESSON_INSTANCE": instance,
            "LESSON_STATE_DIR": str(tmp_path / "state"),
            "COLUMNS": str(columns),
            **(env or {}),
        }
    )
    return subprocess.run(
        [str(LESSONCTL), "demo", *args],
        env=base,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


def failing_env(tmp_path: Path) -> dict[str, str]:
    """A CNI plugin folder with no plugins in it: the worker's create_networks fails, permanently and at once."""
    empty = tmp_path / "no-cni-plugins"
    empty.mkdir(exist_ok=True)
    return {"LESSON_CNI_PATH": str(empty)}


def parse_events(lines: list[str]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        doc = json.loads(line)  # raises on a wrapped or partial line: the point of the test
        assert isinstance(doc, dict), line
        events.append(doc)
    return events


def test_worker_log_lines_stay_json_at_40_columns_without_a_terminal(tmp_path: Path, instance: str) -> None:
    proc = demo(tmp_path, instance, env=failing_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # without --json, people's output is on stdout, and stderr holds the worker's log: JSON, one event a line
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stdout
    events = parse_events(lines)
    failed = [e for e in events if e.get("event") == "live lesson failed"]
    assert len(failed) == 1, events
    assert "CNI plugin 'bridge' is missing" in failed[0]["error"], failed[0]
    assert failed[0]["step"] == "create_networks"
    assert any(len(line) > 40 for line in lines)  # longer than the console: written whole, not wrapped
    # the output for people (wrapped at 40 columns, which is fine for people) says why and where the log went
    words = " ".join(proc.stdout.split())
    assert "not ready" in words and "log events are on stderr" in words, proc.stdout


def test_json_output_is_one_document_and_the_log_lines_stay_json(tmp_path: Path, instance: str) -> None:
    proc = demo(tmp_path, instance, "--json", env=failing_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert record["status"] == "failed" and record["error"]["step"] == "create_networks", record
    assert "CNI plugin 'bridge' is missing" in record["error"]["message"]
    # with --json, people's output goes to stderr too (and may wrap); every log line there is whole JSON
    log_lines = [line for line in proc.stderr.splitlines() if line.startswith("{")]
    events = parse_events(log_lines)
    assert [e["livelesson"] for e in events if e.get("event") == "live lesson failed"] == [record["id"]]
    # every event of the worker's log tail: the lines of a worker event are never split
    assert all(line.rstrip().endswith("}") for line in log_lines), log_lines


def test_ready_in_is_request_to_ready_and_worker_start_up_is_reported_apart(tmp_path: Path, instance: str) -> None:
    # a lesson without connections: ready with nothing to ping, exit 0
    # its image (antidotelabs/utility) cannot be had here: busybox runs in its place, as the user asks
    substitute = {"LESSON_IMAGE_SUBSTITUTE": "busybox"}
    proc = demo(tmp_path, instance, str(CURRICULUM), "--lesson", "linux-basics", "--json", columns=200, env=substitute)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["lesson"] == "linux-basics" and record["checks"] == [] and record["status"] == "deleted"
    human = proc.stderr
    started = re.search(r"^worker (demo-[a-z0-9]{10}@\S+) started in (\d+) ms", human, re.MULTILINE)
    assert started, human
    ready = re.search(r"^ready in (\d+) ms: no links to ping$", human, re.MULTILINE)
    assert ready, human
    # the request goes out after the worker answered: its start-up line comes before the request's
    assert started.start() < human.index("requested linux-basics as live lesson")
    # "ready in" is the record's own request -> ready
    created = datetime.fromisoformat(record["created_at"])
    ready_at = datetime.fromisoformat(record["ready_at"])
    assert int(ready.group(1)) == round((ready_at - created).total_seconds() * 1000)
    assert int(started.group(2)) > 0  # reported apart, and not part of the figure above
    assert "nothing left behind" in human


def test_json_events_keeps_json_lines_and_wraps_other_output() -> None:
    """The tail as the demo prints it: JSON lines unchanged, a run of raw lines (a Python warning written
    before the worker's logging was set up) as one event carrying them."""
    lines = [
        "/x/celery/platforms.py:893: SecurityWarning: You're running the worker with superuser privileges",
        "  _warn_or_raise_security_error(egid, euid, gid, uid,",
        '{"event": "w@h ready.", "level": "info"}',
        "",
        '{"event": "step finished", "step": "create_networks"}',
        "Traceback (most recent call last):",
    ]
    events = json_events(lines)
    assert events[1] == lines[2] and events[2] == lines[4]
    docs = [json.loads(e) for e in events]
    assert len(docs) == 4
    assert docs[0]["output"] == "\n".join(lines[:2])
    assert docs[3]["output"] == "Traceback (most recent call last):"
