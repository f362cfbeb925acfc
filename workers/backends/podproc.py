"""A local pod's long-running process: enters the pod's namespace, listens on its declared ports, waits.

Run as a script with only the standard library (``python -I -S podproc.py``) so it starts in milliseconds.
It daemonizes (double fork) so it outlives the worker that started it and never becomes that worker's
zombie; the launcher returns once the listeners are up and the pid file is written, so the launcher's
exit status is the pod's "started" signal.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import selectors
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


def _listen(ports: list[int]) -> selectors.DefaultSelector:
    selector = selectors.DefaultSelector()
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))  # noqa: S104 - inside the pod's own namespace, by design
        sock.listen(16)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    return selector


def _serve(selector: selectors.DefaultSelector) -> None:
    """Accept and close: enough to prove a real TCP connection reaches the pod."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not selector.get_map():
        while True:
            signal.pause()
    while True:
        for key, _events in selector.select():
            try:
                conn, _addr = key.fileobj.accept()  # type: ignore[union-attr]
                conn.close()
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns", required=True)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--ports", default="")
    parser.add_argument("--mark", required=True)  # ownership, read back from /proc/<pid>/cmdline
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",") if p]

    read_fd, write_fd = os.pipe()
    if os.fork() > 0:  # the launcher: report the pod's start, then leave
        os.close(write_fd)
        status = os.read(read_fd, 512).decode()
        if status != "ok":
            sys.stderr.write(status or "pod process died before it was ready\n")
            return 1
        return 0
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let the launcher's caller see EOF on its pipes
        os.dup2(devnull, fd)
    try:
        _enter(args.netns)
        selector = _listen(ports)
        tmp = f"{args.pidfile}.tmp"
        with open(tmp, "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(tmp, args.pidfile)
    except OSError as exc:
        os.write(write_fd, f"pod {args.netns}: {exc}\n".encode())
        os._exit(1)
    os.write(write_fd, b"ok")
    os.close(write_fd)
    _serve(selector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
