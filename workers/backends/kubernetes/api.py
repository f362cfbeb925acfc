"""The Kubernetes API client plumbing: bounded, retried calls, errors translated into our tree, one watch.

- ``call``: one API call, bounded in time, retried by tenacity on transient errors only (429 with
  Retry-After, 500/502/503/504, connection resets and timeouts: the API server or a proxy was briefly
  unable); other 4xx errors are permanent and never retried.
- ``translate``: an ``ApiException`` as a :mod:`scheduler.core.errors` type (``TemporaryError`` or
  :class:`ApiError`), always raised ``from`` the client's exception.
- ``list_watch``: list, then watch from the listing's resourceVersion, listing again on 410 Gone.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_delay

from scheduler.core.errors import PermanentError, PrerequisiteMissing, SchedulerError, TemporaryError

__all__ = [
    "REQUEST_TIMEOUT",
    "ApiError",
    "api_client",
    "call",
    "describe",
    "http_status",
    "is_transient",
    "list_watch",
    "retry_after",
    "translate",
]

log = structlog.get_logger(__name__)

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
API_RETRY_SECONDS = 30.0
# every plain API call is bounded: (connect, read) seconds. Watches and exec carry their own bounds.
REQUEST_TIMEOUT = (5.0, 30.0)
RETRY_AFTER_CAP = 10.0
# the connection-level errors of the client: no answer came, so the API server may answer next time
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)

def api_client(kubeconfig: str | Path | None) -> client.ApiClient:
    """A client on that kubeconfig, or on the in-cluster ServiceAccount when it is None.

    Raises PrerequisiteMissing when neither is there. Its urllib3 never retries: every retry is tenacity's
    (:func:`call`), bounded and logged."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise PrerequisiteMissing(
            f"no Kubernetes configuration: {exc} (set LESSON_KUBECONFIG, or run in a cluster)"
        ) from exc
    # urllib3 would otherwise retry resets of GETs silently, three times, unbounded in time
    configuration.retries = False
    return client.ApiClient(configuration)


_HANDSHAKE = re.compile(r"Handshake status (\d{3})")


class ApiError(PermanentError):
    """The Kubernetes API refused (a 4xx other than 429); ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"kubernetes API {status}: {message}")
        self.status = status


def http_status(exc: ApiException) -> int:
    """The HTTP status of an API error; 0 when no answer came (a reset, a TLS or socket error). The exec
    websocket reports a refused upgrade as status 0 with "Handshake status 403 Forbidden" in its reason."""
    if not exc.status:
        found = _HANDSHAKE.search(str(exc.reason or ""))
        return int(found.group(1)) if found else 0
    return int(exc.status)


def is_transient(exc: BaseException) -> bool:
    """429 and 5xx gateway errors, resets and timeouts: the API server or a proxy was briefly unable."""
    if isinstance(exc, ApiException):
        status = http_status(exc)
        return status in TRANSIENT_STATUS or status == 0
    return isinstance(exc, CONNECTION_ERRORS)


def retry_after(exc: BaseException) -> float | None:
    """The seconds a 429's Retry-After asks for (delta-seconds form), capped; None without one."""
    if not (isinstance(exc, ApiException) and exc.status == 429 and exc.headers):
        return None
    value = str(exc.headers.get("Retry-After") or "").strip()
    return min(float(value), RETRY_AFTER_CAP) if value.isdigit() else None


def describe(exc: BaseException | None) -> str:
    """429, 503, ... or the connection error's type and words, for the logs."""
    if isinstance(exc, ApiException) and http_status(exc):
        return str(http_status(exc))
    return f"{type(exc).__name__}: {exc}"


def _reason(exc: ApiException) -> str:
    """The Status message of the answer; a refused exec upgrade carries it after its headers."""
    body = exc.body or str(exc.reason or "").rsplit(" -+-+- ", 1)[-1]
    try:
        return str(json.loads(body).get("message", exc.reason))
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason).strip()


def translate(exc: ApiException) -> SchedulerError:
    """The error to raise (``from exc``) for an API error: transient ones may be retried, others not."""
    status = http_status(exc)
    if is_transient(exc):
        return TemporaryError(f"kubernetes API {status or 'connection'}: {_reason(exc)}", delay=2.0)
    return ApiError(status, _reason(exc))


# --- retried calls ----------------------------------------------------------------------------------


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    asked = retry_after(exc) if exc is not None else None
    if asked is not None:
        return asked  # the server says when; honour it, bounded
    return float(min(0.1 * 2 ** (state.attempt_number - 1), 2.0))


def _name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", "call"))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    fn = _name(state.fn) if state.fn is not None else "call"
    log.warning(
        "kubernetes API transient error, retrying",
        call=fn,
        status=describe(exc),
        attempt=state.attempt_number,
        sleep_s=round(state.upcoming_sleep, 3),
    )


_api_retry = retry(
    retry=retry_if_exception(is_transient),
    stop=stop_after_delay(API_RETRY_SECONDS),
    wait=_wait,
    before_sleep=_log_retry,
    reraise=True,
)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call, bounded in time, retried on transient errors, translated into our error tree."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    try:
        return _api_retry(fn)(*args, **kwargs)
    except ApiException as exc:
        raise translate(exc) from exc
    except CONNECTION_ERRORS as exc:
        raise TemporaryError(f"kubernetes API unreachable: {exc}", delay=2.0) from exc


# --- list and watch ---------------------------------------------------------------------------------

Items = dict[str, Any]  # object name -> the object, as last listed or watched


def _list(list_fn: Callable[..., Any], args: tuple[Any, ...], query: dict[str, Any]) -> tuple[Items, str]:
    listing = call(list_fn, *args, **query)
    return {o.metadata.name: o for o in listing.items}, str(listing.metadata.resource_version)


def list_watch(
    list_fn: Callable[..., Any],
    *args: Any,
    done: Callable[[Items], bool],
    deadline: float,
    what: str,
    **query: Any,
) -> tuple[Items, bool]:
    """The objects ``list_fn(*args, **query)`` selects (a ``list_*`` method and its selector), kept
    current until ``done(items)`` holds or the ``deadline`` (``time.monotonic()``) passes; returns them
    and whether ``done`` held. Never a poll: one list, then one watch from its resourceVersion (resumed
    from the last version seen when it ends early), so a quiet cluster costs two requests.

    410 Gone (the version is too old for the API server) lists again and carries on from the fresh one.
    The list is a :func:`call` (retried, translated); a watch refused for good raises the translated
    error; a transient failure or a broken connection ends the wait at once, logged, with what was seen
    so far: the caller looks again (``what`` names the watch in that log).
    """
    items, version = _list(list_fn, args, query)
    while not done(items):
        remaining = deadline - time.monotonic()
        if remaining < 1:
            break
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                list_fn, *args, **query,
                resource_version=version, timeout_seconds=max(1, int(remaining)),
                _request_timeout=(REQUEST_TIMEOUT[0], remaining + 5),
            ):  # fmt: skip
                obj = event["object"]
                version = obj.metadata.resource_version
                if event["type"] == "DELETED":
                    items.pop(obj.metadata.name, None)
                else:
                    items[obj.metadata.name] = obj
                if done(items) or time.monotonic() >= deadline:
                    break
        except ApiException as exc:
            if exc.status == 410:
                # our resourceVersion is too old: list again and carry on from the fresh one
                items, version = _list(list_fn, args, query)
                continue
            if not is_transient(exc):
                raise translate(exc) from exc
            log.warning("watch failed, looking again later", watch=what, status=describe(exc))
            break
        except CONNECTION_ERRORS as exc:
            log.warning("watch interrupted, looking again later", watch=what, error=describe(exc))
            break
        finally:
            watcher.stop()
    return items, done(items)
