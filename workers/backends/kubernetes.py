"""The kubernetes backend: the real deployment, on the official client.

Objects come from ``scheduler.render`` (the same YAML ``lessonctl render`` prints). Every create is
create-or-get: 409 AlreadyExists counts as done once the object's labels show it is ours (this instance,
this deployment, this live lesson).

Least privilege is the API server's (config/k8s/rbac.yaml): cluster-wide, the worker may only create,
list and delete lesson namespaces and bind one ClusterRole. Right after creating a namespace the backend
binds that role (``lesson-scheduler-lesson``: pods, pods/exec, NADs, NetworkPolicies, services) to its
own identity there, with a RoleBinding, and waits (bounded) until the authorizer lets it create pods.

Readiness is a bounded watch that resumes from the last resourceVersion and re-lists on 410 Gone. Transient API errors
(429 with Retry-After, 500/502/503/504, connection resets and timeouts) are retried with tenacity; other
4xx errors are permanent and never retried.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_delay

from scheduler.errors import PermanentError, PrerequisiteMissing, SchedulerError, TemporaryError
from scheduler.naming import LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_LIVELESSON, LABEL_MANAGED_BY, MANAGED_BY
from scheduler.plan import Plan
from scheduler.render import (
    NETWORK_STATUS_ANNOTATION,
    namespace,
    network_attachment_definitions,
    network_policy,
    pods,
    role_binding,
    subject_for,
)
from scheduler.settings import Settings
from workers.backends.base import Backend, ExecResult, InterfaceStatus, Observation, PodStatus

__all__ = ["ApiError", "KubernetesBackend", "http_status", "is_transient"]

log = structlog.get_logger(__name__)

NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
# reasons waiting cannot fix: report them at once instead of at the provisioning deadline
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "CrashLoopBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
}
API_RETRY_SECONDS = 30.0
# every plain API call is bounded: (connect, read) seconds. Watches and exec carry their own bounds.
REQUEST_TIMEOUT = (5.0, 30.0)
RETRY_AFTER_CAP = 10.0
DELETE_WAIT_SECONDS = 60
# a new RoleBinding reaches the authorizer's cache within milliseconds; past this, the step retries later
GRANT_WAIT_SECONDS = 5.0


_HANDSHAKE = re.compile(r"Handshake status (\d{3})")


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
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def retry_after(exc: BaseException) -> float | None:
    """The seconds a 429's Retry-After asks for (delta-seconds form), capped; None without one."""
    if not (isinstance(exc, ApiException) and exc.status == 429 and exc.headers):
        return None
    value = str(exc.headers.get("Retry-After") or "").strip()
    return min(float(value), RETRY_AFTER_CAP) if value.isdigit() else None


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    asked = retry_after(exc) if exc is not None else None
    if asked is not None:
        return asked  # the server says when; honour it, bounded
    return float(min(0.1 * 2 ** (state.attempt_number - 1), 2.0))


def _describe(exc: BaseException | None) -> str:
    """429, 503, ... or the connection error's type and words, for the retry log."""
    if isinstance(exc, ApiException) and http_status(exc):
        return str(http_status(exc))
    return f"{type(exc).__name__}: {exc}"


def _name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__name__", "call"))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    fn = _name(state.fn) if state.fn is not None else "call"
    log.warning(
        "kubernetes API transient error, retrying",
        call=fn,
        status=_describe(exc),
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


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call, bounded in time, retried on transient errors, translated into our error tree."""
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    try:
        return _api_retry(fn)(*args, **kwargs)
    except ApiException as exc:
        raise _translate(exc) from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        raise TemporaryError(f"kubernetes API unreachable: {exc}", delay=2.0) from exc


def _reason(exc: ApiException) -> str:
    """The Status message of the answer; a refused exec upgrade carries it after its headers."""
    body = exc.body or str(exc.reason or "").rsplit(" -+-+- ", 1)[-1]
    try:
        return str(json.loads(body).get("message", exc.reason))
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason).strip()


class ApiError(PermanentError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"kubernetes API {status}: {message}")
        self.status = status


class KubernetesBackend(Backend):
    name = "kubernetes"
    pods = "container"  # real pods: on a real node they run the image (kwok nodes in the test cluster run nothing)

    def __init__(self, api: client.ApiClient, *, instance: str, deployment: str = "") -> None:
        self.api = api
        self.instance = instance
        self.deployment = deployment
        # Any: the client's own stubs say V1Namespace where it accepts the plain dicts render() makes
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.net: Any = client.NetworkingV1Api(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self._subject: dict[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, deployment: str = "") -> KubernetesBackend:
        return cls.from_kubeconfig(settings.kubeconfig, instance=settings.instance, deployment=deployment)

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | Path | None, *, instance: str, deployment: str = ""
    ) -> KubernetesBackend:
        """A backend on that kubeconfig, or on the in-cluster ServiceAccount when it is None."""
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
        # urllib3 would otherwise retry resets of GETs silently, three times, unbounded in time: every retry
        # is tenacity's, bounded and logged
        configuration.retries = False
        return cls(client.ApiClient(configuration), instance=instance, deployment=deployment)

    def close(self) -> None:
        self.api.close()

    # --- ownership ----------------------------------------------------------------------------------

    def _mine(self, labels: dict[str, str] | None) -> bool:
        """Made by this instance and this deployment (objects from before deployment labels count as the
        unnamed deployment's)."""
        labels = labels or {}
        return (
            labels.get(LABEL_MANAGED_BY) == MANAGED_BY
            and labels.get(LABEL_INSTANCE) == self.instance
            and labels.get(LABEL_DEPLOYMENT, "") == self.deployment
        )

    def _ours(self, labels: dict[str, str] | None, livelesson: str) -> bool:
        return self._mine(labels) and (labels or {}).get(LABEL_LIVELESSON) == livelesson

    def _check_plan(self, plan: Plan) -> None:
        """A plan of another instance or deployment would make objects this backend can never list or
        collect again: refuse it before creating anything."""
        if plan.instance != self.instance or plan.deployment != self.deployment:
            raise PermanentError(
                f"plan for instance {plan.instance!r}, deployment {plan.deployment!r} given to the backend of "
                f"instance {self.instance!r}, deployment {self.deployment!r}"
            )

    def check(self) -> None:
        """The API server answers and says who we are (the identity every lesson namespace is bound to)."""
        try:
            self.subject()
        except SchedulerError as exc:
            raise PrerequisiteMissing(f"the Kubernetes API server is not usable: {exc}") from exc

    # --- the per-namespace grant ---------------------------------------------------------------------

    def subject(self) -> dict[str, str]:
        """The RBAC subject of the credentials in use, from a SelfSubjectReview (asked once): the
        RoleBinding in each lesson namespace names exactly the identity that creates it."""
        if self._subject is None:
            review = _call(
                client.AuthenticationV1Api(self.api).create_self_subject_review,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            username = getattr(getattr(review.status, "user_info", None), "username", None) or ""
            try:
                self._subject = {k: str(v) for k, v in subject_for(username).items()}
            except ValueError as exc:
                raise PermanentError(f"the API server did not say who these credentials are: {exc}") from exc
        return self._subject

    def _grant(self, plan: Plan) -> None:
        """Bind the lesson role to ourselves in the lesson's namespace, then wait until the authorizer
        honours it. A 409 is the binding an earlier attempt made: the worker may not read bindings, and
        needs not, since the access review that follows proves the grant is there and in force."""
        try:
            _call(self.rbac.create_namespaced_role_binding, plan.namespace, role_binding(plan, self.subject()))
        except ApiError as exc:
            if exc.status != 409:
                raise
        self._wait_granted(plan.namespace)

    def _allowed(self, ns: str, verb: str, resource: str) -> bool:
        review = _call(
            client.AuthorizationV1Api(self.api).create_self_subject_access_review,
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": resource}},
            },
        )
        return bool(review.status.allowed)

    def _wait_granted(self, ns: str) -> None:
        """RBAC reads bindings from an informer cache: a RoleBinding just made may not count for a few
        milliseconds. Ask (SelfSubjectAccessReview) until `create pods` is allowed there, bounded."""
        deadline = time.monotonic() + GRANT_WAIT_SECONDS
        pause = 0.02
        while not self._allowed(ns, "create", "pods"):
            if time.monotonic() >= deadline:
                raise TemporaryError(
                    f"the lesson role bound in {ns} is not in effect after {GRANT_WAIT_SECONDS:.0f}s", delay=2.0
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _ensure(self, kind: str, name: str, create: Callable[[], Any], read: Callable[[], Any], plan: Plan) -> None:
        try:
            _call(create)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = _call(read)
            metadata = existing["metadata"] if isinstance(existing, dict) else existing.metadata
            labels = metadata.get("labels") if isinstance(metadata, dict) else metadata.labels
            if not self._ours(labels, plan.livelesson):
                raise PermanentError(f"{kind} {name} exists but is not this live lesson's; refusing to use it") from exc
            deleting = metadata.get("deletionTimestamp") if isinstance(metadata, dict) else metadata.deletion_timestamp
            if deleting:
                raise TemporaryError(f"{kind} {name} is still being deleted", delay=2.0) from exc

    # --- apply --------------------------------------------------------------------------------------

    def apply_networks(self, plan: Plan) -> None:
        self._check_plan(plan)
        self._ensure(
            "namespace", plan.namespace,
            partial(self.core.create_namespace, namespace(plan)),
            partial(self.core.read_namespace, plan.namespace), plan,
        )  # fmt: skip
        self._grant(plan)
        policy = network_policy(plan)
        self._ensure(
            "networkpolicy", policy["metadata"]["name"],
            partial(self.net.create_namespaced_network_policy, plan.namespace, policy),
            partial(self.net.read_namespaced_network_policy, policy["metadata"]["name"], plan.namespace), plan,
        )  # fmt: skip
        for nad in network_attachment_definitions(plan):
            name = nad["metadata"]["name"]
            where = (NAD_GROUP, NAD_VERSION, plan.namespace, NAD_PLURAL)
            self._ensure(
                "network-attachment-definition", name,
                partial(self.custom.create_namespaced_custom_object, *where, nad),
                partial(self.custom.get_namespaced_custom_object, *where, name),
                plan,
            )  # fmt: skip

    def apply_pods(self, plan: Plan) -> None:
        self._check_plan(plan)
        for pod in pods(plan):
            name = pod["metadata"]["name"]
            self._ensure(
                "pod", name,
                partial(self.core.create_namespaced_pod, plan.namespace, pod),
                partial(self.core.read_namespaced_pod, name, plan.namespace), plan,
            )  # fmt: skip

    # --- observe ------------------------------------------------------------------------------------

    def _status(self, plan: Plan, pod: Any) -> PodStatus:
        endpoint = pod.metadata.labels.get("lessons.io/endpoint", pod.metadata.name)
        planned = plan.pod(endpoint)
        annotations = pod.metadata.annotations or {}
        interfaces = _interfaces(plan, planned.interfaces, annotations.get(NETWORK_STATUS_ANNOTATION))
        node = pod.spec.node_name
        reason, fatal = _not_ready(pod)
        if reason is None and any(i.address is None for i in interfaces):
            reason = "network-status does not list every attachment with an address yet"
        return PodStatus(endpoint, pod.metadata.name, reason is None, tuple(interfaces), node, reason, fatal)

    def _observation(self, plan: Plan, items: dict[str, Any]) -> Observation:
        statuses = {}
        for planned in plan.pods:
            pod = items.get(planned.name)
            statuses[planned.endpoint] = (
                self._status(plan, pod)
                if pod is not None
                else PodStatus(planned.endpoint, planned.name, False, reason="pod does not exist")
            )
        return Observation(statuses)

    def _list_pods(self, plan: Plan, selector: str) -> tuple[dict[str, Any], str]:
        listing = _call(self.core.list_namespaced_pod, plan.namespace, label_selector=selector)
        return {p.metadata.name: p for p in listing.items}, listing.metadata.resource_version

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        """One list, then one watch from its resourceVersion until every pod is ready, one cannot start,
        or ``wait`` runs out. Never a poll: a quiet cluster costs two requests per call."""
        selector = f"{LABEL_LIVELESSON}={plan.livelesson}"
        deadline = time.monotonic() + wait
        items, version = self._list_pods(plan, selector)
        observation = self._observation(plan, items)
        while not _settled(observation):
            remaining = deadline - time.monotonic()
            if remaining < 1:
                break
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.core.list_namespaced_pod, plan.namespace, label_selector=selector,
                    resource_version=version, timeout_seconds=max(1, int(remaining)),
                    _request_timeout=(REQUEST_TIMEOUT[0], remaining + 5),
                ):  # fmt: skip
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    if event["type"] == "DELETED":
                        items.pop(pod.metadata.name, None)
                    else:
                        items[pod.metadata.name] = pod
                    observation = self._observation(plan, items)
                    if _settled(observation) or time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status == 410:
                    # our resourceVersion is too old: list again and carry on from the fresh one
                    items, version = self._list_pods(plan, selector)
                    observation = self._observation(plan, items)
                    continue
                if not is_transient(exc):
                    raise _translate(exc) from exc
                log.warning("pod watch failed, the step will look again", status=_describe(exc))
                break
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                log.warning("pod watch interrupted, the step will look again", error=_describe(exc))
                break
            finally:
                watcher.stop()
        return observation

    # --- exec ---------------------------------------------------------------------------------------

    @contextmanager
    def _exec_api(self) -> Iterator[Any]:
        """A client of its own per exec: ``kubernetes.stream`` swaps the ApiClient's ``call_api`` while it
        connects, so sharing one between the ping threads (or with a watch) would cross their wires."""
        api = client.ApiClient(self.api.configuration)
        try:
            yield client.CoreV1Api(api)
        finally:
            api.close()

    def exec(self, plan: Plan, endpoint: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        pod = plan.pod(endpoint)
        with self._exec_api() as core:
            try:
                resp = stream(
                    core.connect_get_namespaced_pod_exec, pod.name, plan.namespace,
                    command=list(argv), stdout=True, stderr=True, stdin=False, tty=False,
                    _preload_content=False, _request_timeout=timeout,
                )  # fmt: skip
            except ApiException as exc:
                error = _translate(exc)
                log.warning("exec failed to start", endpoint=endpoint, error=str(error), transient=error.transient)
                raise error from exc
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError) as exc:
                log.warning("exec failed to connect", endpoint=endpoint, error=_describe(exc))
                raise TemporaryError(f"exec in {endpoint} failed to connect: {exc}") from exc
            stdout: list[str] = []
            stderr: list[str] = []
            deadline = time.monotonic() + timeout
            try:
                while resp.is_open() and time.monotonic() < deadline:
                    resp.update(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
                    _drain(resp, stdout, stderr)
                if resp.is_open():
                    raise TemporaryError(f"`{' '.join(argv)}` in {endpoint} timed out after {timeout}s")
                _drain(resp, stdout, stderr)
                code = _returncode(resp)
            except (OSError, ConnectionError) as exc:  # the websocket broke mid-command
                raise TemporaryError(f"exec in {endpoint} broke off: {exc}") from exc
            finally:
                resp.close()
        return ExecResult(code, "".join(stdout), "".join(stderr))

    # --- destroy and list ---------------------------------------------------------------------------

    def list(self) -> list[str]:
        """The live lessons whose namespaces carry this instance and this deployment."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={self.instance}"
        if self.deployment:
            selector += f",{LABEL_DEPLOYMENT}={self.deployment}"
        # without a deployment, also the namespaces from before the label: the selector cannot say "absent
        # or empty", so that filter is ours
        listing = _call(self.core.list_namespace, label_selector=selector)
        return sorted(
            ns.metadata.labels[LABEL_LIVELESSON]
            for ns in listing.items
            if LABEL_LIVELESSON in (ns.metadata.labels or {}) and self._mine(ns.metadata.labels)
        )

    def destroy(self, livelesson: str) -> None:
        name = f"{self.instance}-{livelesson}"
        try:
            ns = _call(self.core.read_namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return
            raise
        if not self._ours(ns.metadata.labels, livelesson):
            raise PermanentError(
                f"namespace {name} does not carry this instance's and deployment's mark; refusing to delete it"
            )
        if ns.metadata.deletion_timestamp is None:
            try:
                _call(
                    self.core.delete_namespace, name,
                    body=client.V1DeleteOptions(propagation_policy="Foreground"),
                )  # fmt: skip
            except ApiError as exc:
                if exc.status != 404:
                    raise
                return
        self._wait_gone(name)

    def _wait_gone(self, name: str) -> None:
        """Watch the namespace until it is deleted: bounded, never a poll loop."""
        selector = f"metadata.name={name}"
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while True:
            listing = _call(self.core.list_namespace, field_selector=selector)
            if not listing.items:
                return
            remaining = deadline - time.monotonic()
            if remaining < 1:
                raise TemporaryError(f"namespace {name} still terminating after {DELETE_WAIT_SECONDS}s", delay=5.0)
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self.core.list_namespace, field_selector=selector,
                    resource_version=listing.metadata.resource_version, timeout_seconds=max(1, int(remaining)),
                    _request_timeout=(REQUEST_TIMEOUT[0], remaining + 5),
                ):  # fmt: skip
                    if event["type"] == "DELETED":
                        return
            except ApiException as exc:
                if exc.status != 410 and not is_transient(exc):
                    raise _translate(exc) from exc
                if exc.status != 410:
                    log.warning("namespace watch failed, listing again", namespace=name, status=_describe(exc))
                    time.sleep(0.2)
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                log.warning("namespace watch interrupted, listing again", namespace=name, error=_describe(exc))
                time.sleep(0.2)
            finally:
                watcher.stop()


def _settled(observation: Observation) -> bool:
    """Nothing more to wait for: every pod is ready, or one of them never will be."""
    return observation.ready or any(p.fatal for p in observation.pods.values())


def _drain(resp: Any, stdout: list[str], stderr: list[str]) -> None:
    if resp.peek_stdout():
        stdout.append(resp.read_stdout())
    if resp.peek_stderr():
        stderr.append(resp.read_stderr())


def _returncode(resp: Any) -> int:
    """The exit status from the error channel. Some runtimes (kwok) send a bare error message there instead
    of a Status with the code: any failure without a readable code counts as 1."""
    try:
        code = resp.returncode
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return 1
    return int(code) if code is not None else 1


def _translate(exc: ApiException) -> SchedulerError:
    status = http_status(exc)
    if is_transient(exc):
        return TemporaryError(f"kubernetes API {status or 'connection'}: {_reason(exc)}", delay=2.0)
    return ApiError(status, _reason(exc))


def _not_ready(pod: Any) -> tuple[str | None, bool]:
    """Why the pod is not ready (None if it is), and whether waiting can fix that."""
    status = pod.status
    for cond in status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
            return f"unschedulable: {cond.message}", True
    for cs in status.container_statuses or []:
        waiting = cs.state.waiting if cs.state else None
        if waiting is not None and waiting.reason in FATAL_WAITING:
            return f"{waiting.reason}: {waiting.message or cs.image}", True
    if status.phase != "Running":
        return f"phase {status.phase}", False
    ready = next((c for c in status.conditions or [] if c.type == "Ready"), None)
    if ready is None or ready.status != "True":
        return "containers not ready", False
    return None, False


def _interfaces(plan: Plan, planned: Sequence[Any], raw: str | None) -> list[InterfaceStatus]:
    """Addresses from Multus's network-status, matched by network (``ns/name`` or bare ``name``)."""
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        entries = []
    by_key: dict[tuple[str, str], list[str]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        network = str(entry.get("name", "")).split("/")[-1]
        by_key[(network, str(entry.get("interface", "")))] = [str(ip) for ip in entry.get("ips") or []]
    out = []
    for itf in planned:
        ips = by_key.get((itf.network, itf.name)) or []
        subnet = plan.network(itf.network).subnet
        address = next(
            (f"{ip}/{subnet.prefixlen}" for ip in ips if _in(ip, subnet)),
            None,
        )
        out.append(InterfaceStatus(itf.name, itf.network, address))
    return out


def _in(ip: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(ip) in subnet
    except ValueError:
        return False
