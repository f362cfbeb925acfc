"""A real pseudo-terminal for a command, as a person's terminal is: ``lessonctl shell`` under test."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TerminalRun:
    returncode: int
    output: str  # everything the terminal showed (echo, prompts, \r\n line ends)


def _make_controlling() -> None:
    """In the child (its own session, from start_new_session): stdin's terminal becomes its controlling
    terminal, so it gets SIGWINCH and ^C as a login shell would."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(
    argv: Sequence[str],
    keys: str,
    *,
    env: Mapping[str, str],
    rows: int = 24,
    columns: int = 80,
    timeout: float = 60.0,
    prompt_timeout: float = 20.0,
) -> TerminalRun:
    """Run ``argv`` with a new pseudo-terminal of ``rows`` x ``columns`` as its stdin, stdout, stderr and
    controlling terminal; type ``keys`` once it has shown something (a prompt; or after ``prompt_timeout``),
    then read until the terminal closes. AssertionError with the output after ``timeout``."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
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
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return TerminalRun(returncode, output.decode(errors="replace"))
