"""``lessonctl exec`` and ``lessonctl shell`` on the local backend (issue 15): the installed console script in
a subprocess, against a lesson a real Celery worker made ready on real Redis, and ``shell`` under a real
pseudo-terminal. Both kinds of local pods (container: runc exec in the image; emulated: the host's programs
in the pod's network namespace): nothing asserted here differs between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scheduler.settings import Settings
from tests.support.processes import settings_env
from tests.support.terminal import run_in_terminal
from workers.celery_process import CeleryProcess

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("root")]

LESSONCTL = str(Path(sys.executable).with_name("lessonctl"))
LESSON = "busybox-line"  # h1 - h2 - h3 - h4: h1 has one link, net1


def env_of(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    return {**env, **settings_env(settings)}


def lessonctl(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``lessonctl ARGS`` with ``stdin`` piped in (not a terminal), stdout and stderr captured apart."""
    return subprocess.run(
        [LESSONCTL, *args], input=stdin, env=env_of(settings), capture_output=True, text=True, timeout=60
    )


def up(settings: Settings, session: str, *, wait: bool) -> str:
    """A live lesson of LESSON for ``session``, as a user asks for it; its id."""
    proc = subprocess.run(
        [LESSONCTL, "up", LESSON, "--session", session, "--json", *(["--wait", "--timeout", "90"] if wait else [])],
        env=env_of(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "ready" or not wait, record
    return str(record["id"])


@pytest.fixture(params=["container", "emulated"])
def ready(
    request: pytest.FixtureRequest, settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess]
) -> tuple[Settings, str]:
    """Settings and the id of a ready live lesson, made by a real worker, with each kind of local pod."""
    settings = settings_for(local_pods=request.param)
    start_worker(settings)
    return settings, up(settings, "exec", wait=True)


def test_exec_passes_the_exit_status_output_and_stdin_through(ready: tuple[Settings, str]) -> None:
    settings, livelesson = ready
    failed = lessonctl(settings, "exec", livelesson, "h1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert failed.returncode == 3, failed.stderr
    assert failed.stdout == "out\n"  # the pod command's output and nothing else
    assert "err" in failed.stderr and "Traceback" not in failed.stderr

    addresses = lessonctl(settings, "exec", livelesson, "h1", "--", "ip", "-o", "addr")
    assert addresses.returncode == 0, addresses.stderr
    net1 = [line for line in addresses.stdout.splitlines() if " net1 " in f"{line} "]
    assert net1 and " inet " in net1[0], addresses.stdout

    echoed = lessonctl(settings, "exec", livelesson, "h1", "--", "sh", "-c", "read line; echo got:$line", stdin="hi\n")
    assert (echoed.returncode, echoed.stdout) == (0, "got:hi\n"), echoed.stderr


def test_shell_under_a_real_terminal_runs_what_is_typed_and_exits_with_its_status(
    ready: tuple[Settings, str],
) -> None:
    settings, livelesson = ready
    run = run_in_terminal(
        [LESSONCTL, "shell", livelesson, "h1"], "hostname; echo marker-$((40+2)); exit 5\n", env=env_of(settings)
    )
    assert "marker-42" in run.output, run.output  # typed "$((40+2))" is echoed; only the shell prints 42
    assert run.returncode == 5, run.output
    assert "Traceback" not in run.output

    # stdin not a terminal: refused before anything runs, pointing at exec
    piped = lessonctl(settings, "shell", livelesson, "h1", stdin="exit 0\n")
    assert piped.returncode == 2, piped.stderr
    assert "needs a terminal" in piped.stderr and f"lessonctl exec {livelesson} h1" in piped.stderr
    assert piped.stdout == ""


def test_unknown_id_or_endpoint_is_bad_input_and_a_lesson_not_ready_a_runtime_failure(
    settings_for: Callable[..., Settings],
) -> None:
    """No worker runs: the requested lesson stays ``requested``, so it is not ready."""
    settings = settings_for()
    livelesson = up(settings, "notready", wait=False)

    not_ready = lessonctl(settings, "exec", livelesson, "h1", "--", "true")
    assert not_ready.returncode == 1, not_ready.stderr
    assert "not ready" in not_ready.stderr and "requested" in not_ready.stderr, not_ready.stderr
    assert f"lessonctl status {livelesson}" in not_ready.stderr

    unknown_endpoint = lessonctl(settings, "exec", livelesson, "h9", "--", "true")
    assert unknown_endpoint.returncode == 2, unknown_endpoint.stderr
    assert "'h9'" in unknown_endpoint.stderr and "h1, h2, h3, h4" in unknown_endpoint.stderr

    unknown_id = lessonctl(settings, "exec", "zzzzzzzzzz", "h1", "--", "true")
    assert unknown_id.returncode == 2, unknown_id.stderr
    assert "zzzzzzzzzz" in unknown_id.stderr

    for proc in (not_ready, unknown_endpoint, unknown_id):
        assert proc.stdout == "" and "Traceback" not in proc.stderr
