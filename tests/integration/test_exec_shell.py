"""``lessonctl exec`` and ``lessonctl shell`` on the local backend (issue 15): the installed console script in
a subprocess, against a lesson a real Celery worker made ready on real Redis, and ``shell`` under a real
pseudo-terminal. Both kinds of local pods (container: runc exec in the image; emulated: the host's programs
in the pod's network namespace): nothing asserted here differs between them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.settings import Settings
from tests.support.cli import LESSONCTL, assert_shell_session, lessonctl, lessonctl_env, shell_session, up

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("root")]

LESSON = "busybox-line"  # h1 - h2 - h3 - h4: h1 has one link, net1


@pytest.fixture(params=["container", "emulated"])
def ready(
    request: pytest.FixtureRequest, settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess]
) -> tuple[Settings, str]:
    """Settings and the id of a ready live lesson, made by a real worker, with each kind of local pod."""
    settings = settings_for(local_pods=request.param)
    start_worker(settings)
    return settings, up(settings, LESSON, "exec", wait=True)


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


def test_shell_under_a_real_terminal_runs_what_is_typed_in_its_size_and_exits_with_its_status(
    ready: tuple[Settings, str],
) -> None:
    settings, livelesson = ready
    run = shell_session([LESSONCTL, "shell", livelesson, "h1"], env=lessonctl_env(settings))
    assert_shell_session(run, "h1" if settings.local_pods == "container" else None)

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
    livelesson = up(settings, LESSON, "notready", wait=False)

    not_ready = lessonctl(settings, "exec", livelesson, "h1", "--", "true")
    assert not_ready.returncode == 1, not_ready.stderr
    assert "not ready" in not_ready.stderr and "requested" in not_ready.stderr, not_ready.stderr
    assert f"lessonctl status {livelesson}" in not_ready.stderr

    unknown_endpoint = lessonctl(settings, "exec", livelesson, "h9", "--", "true")
    assert unknown_endpoint.returncode == 2, unknown_endpoint.stderr
    assert "'h9'" in unknown_endpoint.stderr and "h1, h2, h3, h4" in unknown_endpoint.stderr

    unknown_id = lessonctl(settings, "exec", "zzzzzzzzzz", "h1", "--", "true")
    assert unknown_id.returncode == 2, unknown_id.stderr
    assert "zzzzzzzzzz" in unknown_id.stderr and "does not exist" in unknown_id.stderr

    malformed = lessonctl(settings, "exec", "../lessons", "h1", "--", "true")
    assert malformed.returncode == 2, malformed.stderr
    assert "'../lessons'" in malformed.stderr and "10 lower-case letters or digits" in malformed.stderr

    for proc in (not_ready, unknown_endpoint, unknown_id, malformed):
        assert proc.stdout == "" and "Traceback" not in proc.stderr
