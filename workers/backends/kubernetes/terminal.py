"""A person's session on a pod's exec stream: this process's stdin, stdout and stderr, wired to the pod.

``pump`` copies bytes both ways until the pod's command exits and the API server closes the stream: stdin
to channel 0, channel 1 to stdout, channel 2 to stderr (without a terminal; with one the pod's terminal
merges them). With ``tty`` the local terminal is in raw mode for the session (every key, ^C included,
goes to the pod) and is always restored; its size goes on the resize channel at the start and after every
SIGWINCH, and again 0.5, 2 and 5 s later. The exit status stays on the error channel for
``backend._returncode``; what the runtime said when the command could not start at all is
:func:`start_failure`.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import ssl
import termios
import threading
import time
import tty as ttymode
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

import yaml
from kubernetes.stream.ws_client import ERROR_CHANNEL, RESIZE_CHANNEL, STDERR_CHANNEL, STDIN_CHANNEL, STDOUT_CHANNEL
from websocket import WebSocketException

__all__ = ["OutputClosed", "pump", "start_failure"]

STDIN, STDOUT, STDERR = 0, 1, 2
CHUNK = 16 * 1024  # one read of stdin, one frame: small enough to fit the room a writable socket has
RESEND_SIZE_AFTER = (0.5, 2.0, 5.0)  # seconds after each size sent: the same size, sent again


class OutputClosed(Exception):
    """Whoever read our stdout went away (``lessonctl exec ... | head``): the session ends, as a pipeline
    would end it."""


def pump(resp: Any, *, tty: bool) -> None:
    """Copy stdin to the pod and the pod's output to stdout and stderr until the stream closes.

    ``resp`` is an open ``WSClient`` of ``stream(..., binary=True, _preload_content=False)``. Raises
    :class:`OutputClosed` when stdout's reader is gone; websocket and socket errors pass through for the
    caller to translate. (The client also keeps a copy of all output, which ``stream`` offers no way to
    turn off: a person's session is small enough.)"""
    with _raw(tty) as wake:
        # the size again a little later: a resize is idempotent, and one that the path to the runtime lost
        # under load (seen on the test cluster's kubelet and containerd) then still lands, as the docker CLI
        # retries its first resize
        resend: list[float] = []
        if tty:
            _send_size(resp)
            resend = [time.monotonic() + d for d in RESEND_SIZE_AFTER]
        reading = _readable(STDIN)
        while resp.is_open():
            if resend and time.monotonic() >= resend[0]:
                resend.pop(0)
                _send_size(resp)
            sock = resp.sock.sock
            # stdin is read only while the socket has room: a send that blocks would stop us reading the
            # pod's output, and a command that blocks on its output stops reading its input (`cat`): a
            # deadlock. Without room, wait for room instead of for input.
            room = reading and bool(select.select([], [sock], [], 0)[1])
            watched = [sock] + ([STDIN] if room else []) + ([wake] if wake is not None else [])
            # TLS decrypts whole records: frames already decrypted wait in the SSL object, where select
            # cannot see them; then select only looks whether anything else is ready too
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            wants_room = [sock] if reading and not room else []
            timeout = 0.0 if pending else (max(0.0, resend[0] - time.monotonic()) if resend else None)
            ready = select.select(watched, wants_room, [], timeout)[0]
            if wake is not None and wake in ready:
                os.read(wake, CHUNK)
                _send_size(resp)
                resend = [time.monotonic() + d for d in RESEND_SIZE_AFTER]
            if room and STDIN in ready:
                reading = _forward_stdin(resp)
            if pending or sock in ready:
                resp.update(timeout=0)
                _drain(resp)
        _drain(resp)


def start_failure(resp: Any) -> str | None:
    """After the stream closed: the runtime's words when the command did not run at all (an executable
    that is not there, a container that stopped), None when it ran (whatever its exit status). Leaves the
    error channel for ``_returncode``."""
    raw = resp.peek_channel(ERROR_CHANNEL)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if not text.strip():
        return None
    try:
        status = yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()  # a runtime that sends a bare message (kwok)
    if not isinstance(status, dict):
        return text.strip()
    if status.get("status") == "Success" or status.get("reason") == "NonZeroExitCode":
        return None
    return str(status.get("message") or text.strip())


def _readable(fd: int) -> bool:
    """stdin is open (a closed one would make select fail; ``exec ... <&-`` is allowed)."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _forward_stdin(resp: Any) -> bool:
    """One read of stdin sent to the pod; False when there is no more to send: at end of input, after telling
    the pod (protocol v5: the command sees its stdin close; older API servers cannot say it), or when the
    pod side is gone (the command exited while input was on its way: its status is still to be read)."""
    try:
        data = os.read(STDIN, CHUNK)
    except OSError as exc:
        if exc.errno != errno.EIO:  # EIO: the terminal hung up, which is an end of input too
            raise
        data = b""
    try:
        if data:
            resp.write_channel(STDIN_CHANNEL, data)
            return True
        resp.close_channel(STDIN_CHANNEL)
    except (OSError, WebSocketException):
        pass  # a broken connection shows on the next read, a finished command as its status
    return False


def _drain(resp: Any) -> None:
    for channel, fd in ((STDOUT_CHANNEL, STDOUT), (STDERR_CHANNEL, STDERR)):
        data = resp.read_channel(channel)
        if data:
            _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except BrokenPipeError as exc:
        raise OutputClosed(f"fd {fd} closed") from exc


def _send_size(resp: Any) -> None:
    try:
        size = os.get_terminal_size(STDIN)
    except OSError:
        return  # not a terminal after all: the pod's terminal keeps its default size
    resp.write_channel(RESIZE_CHANNEL, json.dumps({"Width": size.columns, "Height": size.lines}).encode())


@contextmanager
def _raw(tty: bool) -> Iterator[int | None]:
    """With ``tty``: stdin in raw mode, undone on the way out whatever happens, and the pipe that
    :func:`_signals` yields. Without: nothing, and None."""
    if not tty:
        yield None
        return
    saved = termios.tcgetattr(STDIN)
    try:
        ttymode.setraw(STDIN, termios.TCSANOW)  # TCSANOW: keys typed before this still go to the pod
        with _signals() as wake:
            yield wake
    finally:
        with suppress(termios.error):  # a terminal that hung up has nothing to restore
            termios.tcsetattr(STDIN, termios.TCSADRAIN, saved)


@contextmanager
def _signals() -> Iterator[int | None]:
    """A pipe that becomes readable after SIGWINCH (for select); SIGTERM and SIGHUP end the session through
    ``finally`` (SystemExit 128+n, as a shell reports them), so the terminal is restored. The previous
    handlers are back on the way out. None off the main thread, where no handler can be set: the pod's
    terminal keeps its first size."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        with suppress(BlockingIOError):  # a resize is already pending: one is enough
            os.write(wake_w, b"w")

    def on_end(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    handlers = {signal.SIGWINCH: on_winch, signal.SIGTERM: on_end, signal.SIGHUP: on_end}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield wake_r
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # None: not set from Python
        os.close(wake_r)
        os.close(wake_w)
