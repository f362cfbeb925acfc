"""Local pods' long-running processes: each enters its pod's namespace, listens on its ports, waits.

    python -I -S podproc.py --pod MARK NETNS PIDFILE PORTS FORWARD [--pod ...]

``PORTS`` is a comma-separated list (``-`` for none), ``FORWARD`` is ``1`` to turn on IPv4 forwarding in
the pod's namespace (router images), ``MARK`` is the ownership mark read back from /proc/<pid>/cmdline.

One launcher starts every pod of a request: starting Python costs far more than forking it, so the
launcher (standard library only, no argparse, so it starts in milliseconds) forks one daemon per pod
instead of being run once per pod. The daemons are detached (a session of their own, parented to init)
so they outlive the worker that asked for them and never become its zombies. The launcher returns once
every daemon has entered its namespace, bound its listeners and written its pid file, so its exit status
is the pods' "started" signal; a pod that could not start is named on stderr.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
from typing import NamedTuple

CLONE_NEWNET = 0x40000000


class PodSpec(NamedTuple):
    mark: str
    netns: str
    pidfile: str
    ports: list[int]
    forward: bool


def parse(argv: list[str]) -> list[PodSpec]:
    pods = []
    i = 0
    while i < len(argv):
        if argv[i] != "--pod" or len(argv) - i < 6:
            raise SystemExit(f"usage: podproc.py --pod MARK NETNS PIDFILE PORTS FORWARD ... (at {argv[i]!r})")
        mark, netns, pidfile, ports, forward = argv[i + 1 : i + 6]
        numbers = [int(p) for p in ports.split(",") if p and p != "-"]
        pods.append(PodSpec(mark, netns, pidfile, numbers, forward == "1"))
        i += 6
    if not pods:
        raise SystemExit("usage: podproc.py --pod MARK NETNS PIDFILE PORTS FORWARD ...")
    return pods


def _enter(netns: str) -> None:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        setns = getattr(os, "setns", None)  # Python 3.12+
        if setns is not None:
            setns(fd, CLONE_NEWNET)
            return
        import ctypes  # only where os.setns is missing: it costs a few milliseconds to import

        libc = ctypes.CDLL(None, use_errno=True)
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
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
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


def _daemon(pod: PodSpec, report: int) -> None:
    """The pod process itself (never returns)."""
    try:
        os.chdir("/")  # hold no directory of the caller's
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let the launcher's caller see EOF on its pipes
            os.dup2(devnull, fd)
        os.close(devnull)
        _enter(pod.netns)
        if pod.forward:
            with open("/proc/sys/net/ipv4/ip_forward", "w") as handle:  # this namespace's, after setns
                handle.write("1")
        selector = _listen(pod.ports)
        tmp = f"{pod.pidfile}.tmp"
        with open(tmp, "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(tmp, pod.pidfile)
    except OSError as exc:
        os.write(report, f"err {pod.netns} {exc}\n".encode())
        os._exit(1)
    os.write(report, f"ok {pod.netns}\n".encode())
    os.close(report)
    try:
        _serve(selector)
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    pods = parse(argv)
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:  # a session leader that forks the daemons and leaves, so init adopts them
        os.close(read_fd)
        os.setsid()
        for pod in pods:
            if os.fork() == 0:
                _daemon(pod, write_fd)
        os._exit(0)
    os.close(write_fd)
    os.waitpid(middle, 0)
    chunks = []
    while chunk := os.read(read_fd, 65536):  # EOF once every daemon has reported (or died)
        chunks.append(chunk)
    reports = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        status, netns, *message = line.split(" ", 2)
        reports[netns] = (status, " ".join(message))
    failed = 0
    for pod in pods:
        status, message = reports.get(pod.netns, ("err", "the pod process died before it was ready"))
        if status != "ok":
            sys.stderr.write(f"pod {pod.netns}: {message}\n")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
