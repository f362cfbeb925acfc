"""``lessonctl`` as a person runs it, in a subprocess with a test's settings as LESSON_ variables: piped
(``lessonctl``, ``up``) or under a real pseudo-terminal (``run_in_terminal``); or with no settings at all
(``offline``: validate, render, graph)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scheduler.settings import Settings
from tests.support.lessons import REPO
from tests.support.processes import settings_env

LESSONCTL = str(Path(sys.executable).with_name("lessonctl"))


def offline(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lessonctl ARGS`` from the repository's root with no LESSON_ variable but ``env``'s, in a narrow
    terminal (40 columns: a problem must not wrap over two lines)."""
    assert Path(LESSONCTL).exists(), f"{LESSONCTL} is missing: pip install -e '.[test]'"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    clean["COLUMNS"] = "40"
    return subprocess.run(
        [LESSONCTL, *args], cwd=REPO, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    """Bad input gets a message, never a traceback."""
    assert "Traceback" not in result.stderr + result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    """The documents of a multi-document YAML text (`lessonctl render`'s output), empty ones left out."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def lessonctl_env(settings: Settings) -> dict[str, str]:
    """This environment without its LESSON_ variables, plus ``settings`` as LESSON_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    return {**env, **settings_env(settings)}


def lessonctl(
    settings: Settings, *args: str, stdin: str = "", timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``lessonctl ARGS`` with ``stdin`` piped in (not a terminal), stdout and stderr captured apart."""
    return subprocess.run(
        [LESSONCTL, *args], input=stdin, env=lessonctl_env(settings), capture_output=True, text=True, timeout=timeout
    )


def up(settings: Settings, slug: str, session: str, *, wait: bool, timeout: float = 90.0) -> str:
    """``lessonctl up SLUG --session S --json [--wait]``: the live lesson's id; with ``wait``, it is ready."""
    args = ["up", slug, "--session", session, "--json", *(["--wait", "--timeout", str(timeout)] if wait else [])]
    proc = lessonctl(settings, *args, timeout=timeout + 30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "ready" or not wait, record
    return str(record["id"])


@dataclass(frozen=True)
class TerminalRun:
    returncode: int
    output: str  # everything the terminal showed (echo, prompts, \r\n line ends)


def _make_controlling() -> None:
    """In the child (its own session, from start_new_session): stdin's terminal becomes its controlling
    terminal, so it gets SIGWINCH and ^C as a login shell would."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def run_in_terminal(
    argv: Sequence[str],
    keys: str,
    *,
    env: Mapping[str, str],
    rows: int = 24,
    columns: int = 80,
    resize: tuple[str, int, int] | None = None,
    timeout: float = 60.0,
    prompt_timeout: float = 20.0,
) -> TerminalRun:
    """Run ``argv`` with a new pseudo-terminal of ``rows`` x ``columns`` as its stdin, stdout, stderr and
    controlling terminal; type ``keys`` once it has shown something (a prompt; or after ``prompt_timeout``),
    then read until the terminal closes. ``resize`` (text, rows, columns): once the terminal shows that text,
    it takes that size, as a window resized (the kernel sends SIGWINCH). AssertionError with the output
    after ``timeout``."""
    master, slave = os.openpty()
    _set_size(slave, rows, columns)
    try:
        proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=dict(env), close_fds=True,
            start_new_session=True, preexec_fn=_make_controlling,
        )  # fmt: skip
    finally:
        os.close(slave)  # ours: the terminal closes when the child's side is gone
    output = bytearray()
    deadline = time.monotonic() + timeout
    typed = False
    prompt_deadline = time.monotonic() + prompt_timeout
    try:
        while True:
            if not typed and (output or time.monotonic() > prompt_deadline):
                os.write(master, keys.encode())
                typed = True
            if time.monotonic() > deadline:
                shown = output.decode(errors="replace")
                raise AssertionError(f"{argv} still running after {timeout}s; terminal showed: {shown!r}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None and typed:
                    break  # exited and a quiet terminal: a grandchild may hold the other side open
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every process closed the terminal's other side
                    raise
                break
            if not chunk:
                break
            output += chunk
            if resize is not None and resize[0].encode() in output:
                _set_size(master, resize[1], resize[2])
                resize = None
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return TerminalRun(returncode, output.decode(errors="replace"))


def shell_session(argv: Sequence[str], *, env: Mapping[str, str]) -> TerminalRun:
    """``argv`` (a ``lessonctl shell``) in a 31x101 terminal: the shell prints its hostname and the size its
    terminal has, then ``marker-42``; the window is resized to 40x120 and the shell prints the size again,
    then exits 5. Each size is waited for (up to 15 s) rather than slept for: the size travels on its own
    channel (the kubelet applies it in its own goroutine), so it may land after the first prompt. A size
    that never arrives shows as the old one. See :func:`assert_shell_session`."""
    # typed sizes are sums, so that only the shell's output holds "31 101" and "40 120", never the echo
    keys = (
        'hostname; w() { i=0; while [ "$(stty size)" != "$1 $2" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); '
        'done; echo "size=$(stty size)"; }; w $((30+1)) $((100+1)); echo marker-$((40+2)); '
        "w $((39+1)) $((119+1)); exit 5\r"  # a terminal's Enter is \r
    )
    return run_in_terminal(argv, keys, env=env, rows=31, columns=101, resize=("marker-42", 40, 120), timeout=90)


def assert_shell_session(run: TerminalRun, hostname: str | None) -> None:
    """What :func:`shell_session` must show: the pod's hostname (None: a stand-in pod has the host's), its
    terminal in the window's size at the start and again after the resize, in that order, and the shell's
    exit status passed through."""
    shown = run.output
    assert hostname is None or f"\n{hostname}\r" in shown, shown  # from the pod, on a line of its own
    positions = [shown.find(text) for text in ("size=31 101", "marker-42", "size=40 120")]
    assert -1 not in positions and positions == sorted(positions), (positions, shown)
    assert run.returncode == 5, shown
    assert "Traceback" not in shown, shown
