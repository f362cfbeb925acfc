"""``lessonctl exec`` and ``lessonctl shell`` on the kubernetes backend (issue 15): the console script in a
subprocess, as the worker's ServiceAccount, through the pods/exec subresource into a busybox container
that the test cluster's real node (kubelet, containerd, runc) runs; ``shell`` under a real pseudo-terminal.
The CLI's own refusals (not ready, unknown id or endpoint, no terminal) are the same on every backend:
tests/integration/test_exec_shell.py."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.cli import LESSONCTL, assert_shell_session, lessonctl, lessonctl_env, shell_session, up
from tests.support.k8s import REAL_NODE

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def ready(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess],
    direct_worker_kubeconfig: Path, k8s_cleanup: list[str],
) -> tuple[Settings, str, str]:  # fmt: skip
    """Settings, the id of a ready busybox-line made by a real worker on the real node, and h1's pod."""
    settings = settings_for(backend="kubernetes", kubeconfig=direct_worker_kubeconfig)
    start_worker(settings)
    livelesson = up(settings, "busybox-line", "exec", wait=True, timeout=180)
    record = Store.from_settings(settings).require(livelesson)
    assert record.node == REAL_NODE, record.node  # real containers: a kwok node would run nothing
    return settings, livelesson, record.endpoints["h1"].pod


def test_exec_passes_the_exit_status_output_and_stdin_through(ready: tuple[Settings, str, str]) -> None:
    settings, livelesson, pod = ready
    failed = lessonctl(settings, "exec", livelesson, "h1", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert failed.returncode == 3, failed.stderr
    assert failed.stdout == "out\n"  # the pod's stdout alone: stderr came on its own channel
    assert "err" in failed.stderr and "Traceback" not in failed.stderr

    hostname = lessonctl(settings, "exec", livelesson, "h1", "--", "hostname")
    assert (hostname.returncode, hostname.stdout) == (0, f"{pod}\n"), hostname.stderr

    addresses = lessonctl(settings, "exec", livelesson, "h1", "--", "ip", "-o", "addr")
    assert addresses.returncode == 0, addresses.stderr
    net1 = [line for line in addresses.stdout.splitlines() if " net1 " in f"{line} "]
    assert net1 and " inet " in net1[0], addresses.stdout

    # stdin reaches the command whole, across many websocket frames and TLS records, and its end too
    # (protocol v5 closes the channel): cat returns
    text = base64.b64encode(random.Random(15).randbytes(600_000)).decode() + "\n"
    echoed = lessonctl(settings, "exec", livelesson, "h1", "--", "cat", stdin=text)
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == text, (len(echoed.stdout), len(text))

    missing = lessonctl(settings, "exec", livelesson, "h1", "--", "no-such-command")
    assert missing.returncode == 1, missing.stderr  # the runtime's refusal, in words, not a traceback
    assert "no-such-command" in missing.stderr and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stdout == ""


def test_shell_under_a_real_terminal_runs_what_is_typed_in_its_size_and_exits_with_its_status(
    ready: tuple[Settings, str, str],
) -> None:
    settings, livelesson, pod = ready
    assert_shell_session(shell_session([LESSONCTL, "shell", livelesson, "h1"], env=lessonctl_env(settings)), pod)
