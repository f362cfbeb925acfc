#!/usr/bin/env python3
"""A small fault-injecting HTTPS proxy in front of the test cluster's kube-apiserver.

It terminates TLS on 127.0.0.1 with the cluster's own serving certificate (so a kubeconfig keeps the
cluster's CA), reads each request's head, counts it by Kubernetes verb and resource, then either answers
with a chosen fault or forwards the request to the API server over a new TLS connection, without any
client certificate: the caller's bearer token is the only credential that goes through. Every request is
forwarded with ``Connection: close``, so one connection carries one request and each is seen and counted;
upgrades (the exec websocket) and watches are passed through as byte streams.

Faults, matched in order against verb, resource and path (``Fault``):

    "500" .. "504" answer that status (a Status body); nothing reaches the API server
    "429"          answer 429 TooManyRequests with ``Retry-After: <retry_after>``
    "reset"        reset the connection (RST) before anything is forwarded
    "reset-after"  forward the request, wait for the whole answer, then reset instead of answering
                   (the server did it, the client never hears): idempotency's hard case
    "delay"        hold the request ``delay`` seconds, then forward it
    "gone"         answer a watch with the API server's "410 Expired" ERROR event (resourceVersion too old)

As a script, for trying by hand:

    api_proxy.py --kubeconfig .k8s/kubeconfig [--port 0] [--fault VERB:RESOURCE:KIND:TIMES ...]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

FAULT_KINDS = ("500", "502", "503", "504", "429", "reset", "reset-after", "delay", "gone")
HEAD_LIMIT = 64 * 1024
IDLE_SECONDS = 300.0


@dataclass
class Fault:
    """Fail the requests that match (every given field must match), ``times`` of them, after ``skip``."""

    kind: str
    verb: str | None = None  # create, get, list, watch, delete, exec, ...
    resource: str | None = None  # namespaces, pods, pods/exec, network-attachment-definitions, ...
    path: str | None = None  # a regular expression searched in the request path
    times: int = 1
    skip: int = 0
    retry_after: int = 1
    delay: float = 0.0
    seen: int = 0  # matching requests so far
    hits: int = 0  # requests this fault was applied to

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")

    def matches(self, request: Request) -> bool:
        return (
            (self.verb is None or self.verb == request.verb)
            and (self.resource is None or self.resource == request.resource)
            and (self.path is None or re.search(self.path, request.path) is not None)
        )


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    started: float = field(default_factory=time.monotonic)
    status: int | None = None  # what the client got (None: a reset)
    fault: str | None = None

    @property
    def key(self) -> str:
        return f"{self.verb} {self.resource}"


def classify(method: str, target: str) -> Request:
    """Method and request target -> the verb and resource RBAC would see."""
    parts = urlsplit(target)
    query = parse_qs(parts.query)
    segments = [s for s in parts.path.split("/") if s]
    # /api/v1/... or /apis/<group>/<version>/...
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:] if segments[:1] == ["apis"] else []
    namespace = None
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else parts.path
    name = rest[1] if len(rest) >= 2 else None
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    if not segments or segments[0] not in ("api", "apis"):
        verb = method.lower()
    elif resource.endswith("/exec"):
        verb = "exec"
    elif method == "GET":
        verb = "watch" if query.get("watch", [""])[0] in ("true", "1") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}
        verb = verb.get(method, method.lower())  # type: ignore[assignment]
    return Request(method, parts.path, query, str(verb), resource, namespace, name)


class ApiProxy:
    """``with ApiProxy(upstream_port, pki_dir) as proxy:`` listens on ``proxy.url``; ``proxy.faults`` and
    ``proxy.requests`` are shared with the serving threads (guard edits with ``proxy.lock``)."""

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path, ca: Path, port: int = 0) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.errors: list[str] = []  # the proxy's own failures (not injected ones), for test messages
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(str(cert), str(key))
        self._server_ctx.set_alpn_protocols(["http/1.1"])
        self._client_ctx = ssl.create_default_context(cafile=str(ca))  # no client certificate, ever
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="api-proxy", daemon=True)

    @classmethod
    def for_cluster(cls, state: Path, port: int = 0) -> ApiProxy:
        """In front of the test cluster whose state directory (.k8s) is ``state``."""
        ports = json.loads((state / "ports.json").read_text())
        pki = state / "pki"
        return cls(("127.0.0.1", int(ports["apiserver"])), pki / "admin.crt", pki / "admin.key", pki / "ca.crt", port)

    # --- control -------------------------------------------------------------------------------------

    def start(self) -> ApiProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> ApiProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, kind: str, **match: Any) -> Fault:
        fault = Fault(kind, **match)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.requests.clear()

    def counts(self, since: int = 0) -> Counter[str]:
        """Requests by "verb resource" (e.g. "create pods"), from index ``since`` of ``requests``."""
        with self.lock:
            return Counter(r.key for r in self.requests[since:])

    def mark(self) -> int:
        with self.lock:
            return len(self.requests)

    def kubeconfig(self, path: Path, *, token: str, ca: Path) -> Path:
        """A kubeconfig that reaches the API server through this proxy, as the token's subject."""
        return write_token_kubeconfig(path, self.url, token=token, ca=ca)

    # --- serving -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            client = self._server_ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            self._exchange(client)
        except (OSError, ssl.SSLError, ValueError) as exc:
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _exchange(self, client: ssl.SSLSocket) -> None:
        head, rest = _read_head(client)
        if head is None:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = [tuple(line.split(":", 1)) for line in lines[1:] if ":" in line]
        request = classify(method, target)
        fault = self._fault_for(request)
        with self.lock:
            self.requests.append(request)
        if fault is not None:
            request.fault = fault.kind
            if fault.kind.isdigit():
                # read the body first: closing with unread bytes would turn the answer into a reset
                _read_body(client, headers, rest)
                request.status = int(fault.kind)
                client.sendall(_status_response(int(fault.kind), fault.retry_after))
                return
            if fault.kind == "reset":
                _reset(client)
                return
            if fault.kind == "gone":
                request.status = 200
                client.sendall(_gone_response())
                return
            if fault.kind == "delay":
                time.sleep(fault.delay)
        upgrade = any(k.strip().lower() == "upgrade" for k, _ in headers)
        out = [lines[0]]
        for k, v in headers:
            if k.strip().lower() in ("connection", "keep-alive", "proxy-connection") and not upgrade:
                continue
            out.append(f"{k}:{v}")
        if not upgrade:
            out.append("Connection: close")
        chunked = any(k.strip().lower() == "transfer-encoding" for k, _ in headers)
        # the whole request goes out in one piece: an API server that answers early (a 403 before the body)
        # and closes must not meet body bytes arriving after its close (a reset that loses the answer)
        body = rest if chunked or upgrade else _read_body(client, headers, rest)
        upstream_raw = socket.create_connection(self.upstream, timeout=30)
        upstream = self._client_ctx.wrap_socket(upstream_raw, server_hostname=self.upstream[0])
        try:
            upstream.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            if fault is not None and fault.kind == "reset-after":
                # the API server does it, the whole answer comes back, and is thrown away
                request.status = None
                _read_all(upstream)
                _reset(client)
                return
            self._pump(client, upstream, request)
            if request.status is None:
                with self.lock:
                    self.errors.append(f"{request.key} {request.path}: the API server closed without answering")
        finally:
            with contextlib.suppress(OSError):
                upstream.close()

    def _fault_for(self, request: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if not fault.matches(request):
                    continue
                fault.seen += 1
                if fault.seen > fault.skip and fault.hits < fault.times:
                    fault.hits += 1
                    return fault
        return None

    def _pump(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket, request: Request) -> None:
        """Bytes both ways until the API server closes (or the client gives up); one thread, no locks.

        Each side is read until OpenSSL wants more from the kernel before select() is asked again:
        select() cannot see records OpenSSL has already pulled into its own buffer (``pending()`` counts
        only the current record), and waiting on those would stall a request body forever."""
        reading = {client: True, upstream: True}
        first = True
        last = time.monotonic()
        for sock in reading:
            sock.setblocking(False)
        while not self._stop.is_set():
            moved = False
            for src, dst in ((upstream, client), (client, upstream)):
                while reading[src]:
                    try:
                        data = src.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    except (ssl.SSLEOFError, ConnectionResetError):
                        data = b""  # a websocket client that hangs up without close_notify: just an end
                    if not data:
                        if src is upstream:
                            return  # the answer is complete (every request carries Connection: close)
                        reading[client] = False  # the client is done sending; its answer may still come
                        break
                    moved = True
                    if src is upstream and first:
                        request.status = _status_of(data)
                        first = False
                    _send(dst, data)
            if moved:
                last = time.monotonic()
                continue
            waiting = [s for s, on in reading.items() if on]
            if not select.select(waiting, [], [], 0.5)[0] and time.monotonic() - last > IDLE_SECONDS:
                return


def _send(sock: ssl.SSLSocket, data: bytes) -> None:
    sock.settimeout(30)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)


def _read_head(sock: ssl.SSLSocket) -> tuple[bytes | None, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
        if len(buf) > HEAD_LIMIT:
            raise ValueError("request head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _read_body(sock: ssl.SSLSocket, headers: list[tuple[str, ...]], rest: bytes) -> bytes:
    """The request body (``rest`` is what came with the head), by Content-Length."""
    length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
    body = rest
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def _read_all(sock: ssl.SSLSocket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _status_of(data: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else None


def _status_response(code: int, retry_after: int) -> bytes:
    reason = {
        429: ("Too Many Requests", "TooManyRequests"),
        500: ("Internal Server Error", "InternalError"),
        502: ("Bad Gateway", "InternalError"),
        503: ("Service Unavailable", "ServiceUnavailable"),
        504: ("Gateway Timeout", "Timeout"),
    }[code]
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"injected by the test proxy: {reason[0].lower()}",
            "reason": reason[1],
            "code": code,
        }
    ).encode()
    extra = f"Retry-After: {retry_after}\r\n" if code == 429 else ""
    head = (
        f"HTTP/1.1 {code} {reason[0]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _gone_response() -> bytes:
    event = {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version (injected by the test proxy)",
            "reason": "Expired",
            "code": 410,
        },
    }
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        + json.dumps(event).encode()
        + b"\n"
    )


def _reset(sock: ssl.SSLSocket) -> None:
    """Close with RST (SO_LINGER 0): the client sees "connection reset by peer", not a clean close."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # no close_notify: Python only sends one on unwrap()


def write_token_kubeconfig(path: Path, server: str, *, token: str, ca: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lesson-test",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()},
            }
        ],
        "users": [{"name": "worker", "user": {"token": token}}],
        "contexts": [{"name": "worker", "context": {"cluster": "lesson-test", "user": "worker"}}],
        "current-context": "worker",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, default=Path(__file__).resolve().parents[3] / ".k8s")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fault", action="append", default=[], help="VERB:RESOURCE:KIND[:TIMES], '*' for any")
    args = parser.parse_args(argv)
    proxy = ApiProxy.for_cluster(args.state, args.port)
    for spec in args.fault:
        verb, resource, kind, *times = spec.split(":")
        proxy.add(
            kind,
            verb=None if verb == "*" else verb,
            resource=None if resource == "*" else resource,
            times=int(times[0]) if times else 1,
        )
    with proxy:
        print(f"proxy on {proxy.url} -> 127.0.0.1:{proxy.upstream[1]}; Ctrl-C prints the counts", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            for key, count in sorted(proxy.counts().items()):
                print(f"{count:6}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
