"""``lessonctl port-forward``: a listener on this machine's loopback whose every connection is relayed to a
port inside a pod, through the backend (:meth:`Backend.connect`), as ``kubectl port-forward`` does.

Guarantees: it listens where the caller says (the CLI allows loopback addresses only); each accepted
connection gets its own connection into the pod, and both directions are copied until each side has
closed (a half-close is passed on, so request/response protocols finish); a connection the pod refuses
is closed at once and reported, and the listener goes on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress

import structlog

__all__ = ["Forwarder"]

log = structlog.get_logger(__name__)

CHUNK = 64 * 1024


class Forwarder:
    """Listens on ``address``:``port`` (0: a free one, see :attr:`port`) and relays each connection to what
    ``connect()`` returns. ``serve`` runs until :meth:`close`; ``on_error`` hears each failed connection."""

    def __init__(
        self,
        address: str,
        port: int,
        connect: Callable[[], socket.socket],
        on_error: Callable[[Exception], None] = lambda exc: None,
    ) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((address, port))
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            raise
        self.address = address
        self.port: int = self._listener.getsockname()[1]
        self._connect = connect
        self._on_error = on_error
        self._closed = threading.Event()

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                raise
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = self._connect()
        except Exception as exc:  # reported to the user; the listener stays up
            client.close()
            self._on_error(exc)
            return
        done = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
        done.start()
        _copy(client, upstream)
        done.join()
        for sock in (client, upstream):
            sock.close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then half-close ``sink`` so its reader sees the end too."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass  # a reset on either side ends this direction
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
