"""Local pods' long-running processes: each enters its pod's namespace, listens on its ports, waits.

    python -I -S podproc.py --pod MARK NETNS PIDFILE PORTS FORWARD [--pod ...]

``PORTS`` is a comma-separated list (``-`` for none), ``FORWARD`` is ``1`` to turn on IPv4 forwarding in
the pod's namespace (router images), ``MARK`` is the ownership mark read back from /proc/<pid>/cmdline.

One launcher starts every pod of a request: starting Python costs far more than forking it, so the
launcher (only the interpreter's built-in C modules: no argparse, typing, enum or selectors, which would
triple its start time) forks one daemon per pod
instead of being run once per pod. The daemons are detached (a session of their own, parented to init)
so they outlive the worker that asked for them and never become its zombies. The launcher returns once
every daemon has entered its namespace, bound its listeners and written its pid file, so its exit status
is the pods' "started" signal; a pod that could not start is named on stderr. A pod whose process is
already running (it holds ``PIDFILE.lock``) is left to it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module: `signal` would import enum
import _socket
import fcntl
import os
import select
import sys

CLONE_NEWNET = 0x40000000


class PodSpec:
    __slots__ = ("forward", "mark", "netns", "pidfile", "ports")

    def __init__(self, mark: str, netns: str, pidfile: str, ports: list[int], forward: bool) -> None:
        self.mark, self.netns, self.pidfile, self.ports, self.forward = mark, netns, pidfile, ports, forward


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


def _listen(ports: list[int]) -> list[_socket.socket]:
    listeners = []
    for port in ports:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))  # noqa: S104 - inside the pod's own namespace, by design
        sock.listen(16)
        sock.setblocking(False)
        listeners.append(sock)
    return listeners


def _serve(listeners: list[_socket.socket]) -> None:
    """Accept and close: enough to prove a real TCP connection reaches the pod."""
    _signal.signal(_signal.SIGTERM, lambda *_: os._exit(0))
    if not listeners:
        while True:
            _signal.pause()
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in listeners}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while True:
        for fd, _events in poller.poll():
            try:
                conn_fd, _addr = by_fd[fd]._accept()  # type: ignore[attr-defined]  # C socket: a bare fd
                os.close(conn_fd)
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
        # one pod process per pod, even when a crashed launcher's daemons are still starting next to this
        # one: the lock is held for the process's life and dropped by the kernel when it dies
        lock = os.open(f"{pod.pidfile}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _report(report, f"ok {pod.netns} already running\n")
            os._exit(0)
        _enter(pod.netns)
        if pod.forward:
            with open("/proc/sys/net/ipv4/ip_forward", "w") as handle:  # this namespace's, after setns
                handle.write("1")
        listeners = _listen(pod.ports)
        tmp = f"{pod.pidfile}.tmp"
        with open(tmp, "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(tmp, pod.pidfile)  # noqa: PTH105 - pathlib would cost this process's start time
    except BaseException as exc:  # never unwind into the forking loop of the parent's code
        _report(report, f"err {pod.netns} {exc}\n")
        os._exit(1)
    _report(report, f"ok {pod.netns}\n")
    os.close(report)
    try:
        _serve(listeners)
    finally:
        os._exit(0)


def _report(fd: int, line: str) -> None:
    """Tell the launcher; a launcher killed meanwhile (EPIPE) must not take the pod down with it."""
    try:  # noqa: SIM105 - contextlib would cost this process's start time
        os.write(fd, line.encode())
    except OSError:
        pass


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
        status, netns, *text = line.split(" ", 2)
        reports[netns] = (status, " ".join(text))
    failed = 0
    for pod in pods:
        status, message = reports.get(pod.netns, ("err", "the pod process died before it was ready"))
        if status != "ok":
            sys.stderr.write(f"pod {pod.netns}: {message}\n")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
