"""The kubernetes backend: the real deployment, on the official client.

Objects come from ``scheduler.core.render`` (the same YAML ``lessonctl render`` prints). Every create is
create-or-get: 409 AlreadyExists counts as done once the object's labels show it is ours (this instance,
this deployment, this live lesson). Each lesson namespace gets its grant first (``grant``); API calls are
bounded, retried and translated by ``api``; pods are read into statuses by ``status``.

Readiness and deletion are waited for with ``api.list_watch``: a bounded watch that resumes from the last
resourceVersion and lists again on 410 Gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import portforward, stream
from kubernetes.stream.ws_client import ERROR_CHANNEL
from kubernetes.utils.quantity import parse_quantity
from websocket import WebSocketException

from scheduler.core import naming
from scheduler.core.errors import PermanentError, PrerequisiteMissing, SchedulerError, TemporaryError
from scheduler.core.naming import (
    ANNOTATION_PLACEMENT,
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_LIVELESSON,
    LABEL_MANAGED_BY,
    LABEL_TUNNEL_ADDRESS,
    MANAGED_BY,
)
from scheduler.core.placement import NodeRoom, pod_room
from scheduler.core.plan import POD_REQUESTS, Plan, Pod
from scheduler.core.render import namespace, network_attachment_definitions, network_policy, pods, services
from scheduler.settings import Settings
from workers.backends.base import Backend, ExecResult, Observation
from workers.backends.kubernetes import terminal
from workers.backends.kubernetes.api import (
    CONNECTION_ERRORS,
    ApiError,
    api_client,
    call,
    describe,
    list_watch,
    translate,
)
from workers.backends.kubernetes.grant import Grant
from workers.backends.kubernetes.status import observation, settled

__all__ = ["KubernetesBackend"]

log = structlog.get_logger(__name__)

NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
DELETE_WAIT_SECONDS = 60


class KubernetesBackend(Backend):
    name = "kubernetes"
    pods = "container"  # real pods: on a real node they run the image (kwok nodes in the test cluster run nothing)

    def __init__(
        self,
        api: client.ApiClient,
        *,
        instance: str,
        deployment: str = "",
        placement: str = "affinity",
        node_max_pods: int = 0,
    ) -> None:
        self.api = api
        self.instance = instance
        self.deployment = deployment
        self.placement = placement  # LESSON_K8S_PLACEMENT: "affinity" (the seed's) or "nodes"
        self.node_max_pods = node_max_pods
        # Any: the client's own stubs say V1Namespace where it accepts the plain dicts render() makes
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.net: Any = client.NetworkingV1Api(api)
        self.grant = Grant(api)

    @classmethod
    def from_settings(cls, settings: Settings, *, deployment: str = "") -> KubernetesBackend:
        return cls.from_kubeconfig(
            settings.kubeconfig, instance=settings.instance, deployment=deployment,
            placement=settings.k8s_placement, node_max_pods=settings.node_max_pods,
        )  # fmt: skip

    @classmethod
    def from_kubeconfig(
        cls,
        kubeconfig: str | Path | None,
        *,
        instance: str,
        deployment: str = "",
        placement: str = "affinity",
        node_max_pods: int = 0,
    ) -> KubernetesBackend:
        """A backend on that kubeconfig, or on the in-cluster ServiceAccount when it is None."""
        return cls(
            api_client(kubeconfig), instance=instance, deployment=deployment,
            placement=placement, node_max_pods=node_max_pods,
        )  # fmt: skip

    def close(self) -> None:
        self.api.close()

    def subject(self) -> dict[str, str]:
        """The RBAC subject of the credentials in use (see :meth:`Grant.subject`)."""
        return self.grant.subject()

    def check(self) -> None:
        """The API server answers and says who we are (the identity every lesson namespace is bound to)."""
        try:
            self.subject()
        except SchedulerError as exc:
            raise PrerequisiteMissing(f"the Kubernetes API server is not usable: {exc}") from exc

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

    def _ensure(self, kind: str, name: str, create: Callable[[], Any], read: Callable[[], Any], plan: Plan) -> None:
        try:
            call(create)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = call(read)
            metadata = existing["metadata"] if isinstance(existing, dict) else existing.metadata
            labels = metadata.get("labels") if isinstance(metadata, dict) else metadata.labels
            if not self._ours(labels, plan.livelesson):
                raise PermanentError(f"{kind} {name} exists but is not this live lesson's; refusing to use it") from exc
            deleting = metadata.get("deletionTimestamp") if isinstance(metadata, dict) else metadata.deletion_timestamp
            if deleting:
                raise TemporaryError(f"{kind} {name} is still being deleted", delay=2.0) from exc

    # --- placement ----------------------------------------------------------------------------------

    @property
    def places(self) -> bool:
        return self.placement == "nodes"

    def rooms(self) -> list[NodeRoom] | None:
        """The nodes labelled with a tunnel address (the node agent's) that take pods now (Ready, not
        cordoned, no NoSchedule/NoExecute taint), each with its allocatable pods, CPU and memory (pods at most
        LESSON_NODE_MAX_PODS) less what lessons (of any instance) hold there, read from their namespaces'
        placement annotations. Two list calls; other workloads' pods are the kube-scheduler's to count."""
        if not self.places:
            return None
        nodes = call(self.core.list_node, label_selector=LABEL_TUNNEL_ADDRESS).items
        held: dict[str, int] = {}
        # every instance's and deployment's lessons: they share the nodes
        listing = call(self.core.list_namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")
        for ns in listing.items:
            for node in _placement(ns.metadata.name, ns.metadata.annotations).values():
                held[node] = held.get(node, 0) + 1
        rooms = []
        for node in nodes:
            if not _takes_pods(node):
                continue
            name = node.metadata.name
            allocatable = node.status.allocatable or {}
            try:
                pods = int(parse_quantity(allocatable.get("pods", "0")))
                cpu = int(parse_quantity(allocatable.get("cpu", "0")) * 1000)
                memory = int(parse_quantity(allocatable.get("memory", "0")))
            except (ValueError, ArithmeticError):
                log.warning("node with an unreadable allocatable ignored", node=name, allocatable=allocatable)
                continue
            n = held.get(name, 0)
            rooms.append(
                NodeRoom(
                    name,
                    pod_room(pods, self.node_max_pods, n),
                    max(0, cpu - n * POD_REQUESTS.cpu_millicores),
                    max(0, memory - n * POD_REQUESTS.memory_bytes),
                )
            )
        if not rooms:
            raise TemporaryError(
                f"LESSON_K8S_PLACEMENT=nodes, but no node labelled {LABEL_TUNNEL_ADDRESS} takes pods now "
                "(is the node agent running there, and are the nodes Ready?)",
                delay=10.0,
            )
        return sorted(rooms, key=lambda r: r.name)

    # --- apply --------------------------------------------------------------------------------------

    def apply_networks(self, plan: Plan) -> None:
        self._check_plan(plan)
        self._ensure(
            "namespace", plan.namespace,
            partial(self.core.create_namespace, namespace(plan)),
            partial(self.core.read_namespace, plan.namespace), plan,
        )  # fmt: skip
        self.grant.bind(plan)
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
        # services first: a pod's peers have names from its first instruction
        for kind, objects, create, read in (
            ("service", services(plan), self.core.create_namespaced_service, self.core.read_namespaced_service),
            ("pod", pods(plan), self.core.create_namespaced_pod, self.core.read_namespaced_pod),
        ):
            for obj in objects:
                name = obj["metadata"]["name"]
                self._ensure(
                    kind, name, partial(create, plan.namespace, obj), partial(read, name, plan.namespace), plan
                )

    # --- observe ------------------------------------------------------------------------------------

    def observe(self, plan: Plan, *, wait: float = 0.0) -> Observation:
        """One list, then one watch from its resourceVersion until every pod is ready, one cannot start,
        or ``wait`` runs out. Never a poll: a quiet cluster costs two requests per call."""
        items, _ = list_watch(
            self.core.list_namespaced_pod, plan.namespace,
            label_selector=f"{LABEL_LIVELESSON}={plan.livelesson}",
            done=lambda items: settled(observation(plan, items)),
            deadline=time.monotonic() + wait, what=f"pods of {plan.namespace}",
        )  # fmt: skip
        return observation(plan, items)

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
            resp = _open_exec(
                core, pod, plan.namespace, "exec",
                command=list(argv), stdout=True, stderr=True, stdin=False, tty=False, _request_timeout=timeout,
            )  # fmt: skip
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

    def reach(self, plan: Plan, pod: Pod, port: int) -> str:
        """The Service's DNS name (``<endpoint>.<namespace>.svc.cluster.local``) and the port."""
        return f"{naming.service_host(plan.namespace, pod.endpoint)}:{port}"

    def connect(self, plan: Plan, endpoint: str, port: int, *, timeout: float) -> socket.socket:
        """The pods/portforward subresource, one stream per connection (its end of a socket pair, relayed
        by the client's thread)."""
        pod = plan.pod(endpoint)
        api = client.ApiClient(self.api.configuration)  # portforward swaps call_api, as stream does
        try:
            forward = portforward(
                client.CoreV1Api(api).connect_get_namespaced_pod_portforward, pod.name, plan.namespace,
                ports=str(port), _request_timeout=timeout,
            )  # fmt: skip
        except ApiException as exc:
            raise translate(exc) from exc
        except (*CONNECTION_ERRORS, OSError) as exc:
            raise TemporaryError(f"port-forward to {endpoint}:{port} failed to connect: {exc}") from exc
        finally:
            api.close()
        # the client wraps its end of the socket pair only to drop TCP_NODELAY (invalid on a socket pair); the
        # interface promises a socket.socket (a context manager among other things), so hand over that end
        return forward.socket(port)._socket  # type: ignore[no-any-return]

    def attach(self, plan: Plan, endpoint: str, argv: Sequence[str], *, tty: bool) -> int:
        """The pods/exec subresource with stdin, as ``kubectl exec -i [-t]``: bytes both ways (binary, so a
        terminal's escape sequences and any encoding pass unchanged) through :mod:`.terminal`."""
        pod = plan.pod(endpoint)
        if tty and not os.isatty(0):
            raise PermanentError("a terminal in the pod needs stdin to be a terminal")
        with self._exec_api() as core:
            resp = _open_exec(
                core, pod, plan.namespace, "attach",
                command=list(argv), stdin=True, stdout=True, stderr=not tty, tty=tty, binary=True,
            )  # fmt: skip
            try:
                terminal.pump(resp, tty=tty)
            except terminal.OutputClosed:
                return 128 + signal.SIGPIPE  # what a shell reports for a pipeline's writer whose reader left
            except (OSError, WebSocketException) as exc:  # the connection broke mid-session
                raise TemporaryError(f"the connection to {endpoint} broke off: {exc}") from exc
            finally:
                resp.close()
        failure = terminal.start_failure(resp)
        if failure is not None:
            raise PermanentError(f"`{' '.join(argv)}` did not run in {endpoint}: {failure}")
        if not resp.peek_channel(ERROR_CHANNEL):
            # the API server always ends a session with a Status there: without one, it was cut off
            raise TemporaryError(f"the connection to {endpoint} closed before the command's exit status came")
        return _returncode(resp)

    # --- destroy and list ---------------------------------------------------------------------------

    def list(self) -> list[str]:
        """The live lessons whose namespaces carry this instance and this deployment."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={self.instance}"
        if self.deployment:
            selector += f",{LABEL_DEPLOYMENT}={self.deployment}"
        # without a deployment, also the namespaces from before the label: the selector cannot say "absent
        # or empty", so that filter is ours
        listing = call(self.core.list_namespace, label_selector=selector)
        return sorted(
            ns.metadata.labels[LABEL_LIVELESSON]
            for ns in listing.items
            if LABEL_LIVELESSON in (ns.metadata.labels or {}) and self._mine(ns.metadata.labels)
        )

    def destroy(self, livelesson: str) -> None:
        name = naming.namespace(self.instance, livelesson)
        try:
            ns = call(self.core.read_namespace, name)
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
                call(
                    self.core.delete_namespace, name,
                    body=client.V1DeleteOptions(propagation_policy="Foreground"),
                )  # fmt: skip
            except ApiError as exc:
                if exc.status != 404:
                    raise
                return
        self._wait_gone(name)

    def _wait_gone(self, name: str) -> None:
        """Watch the namespace until it is deleted: bounded, never a poll loop. A watch that breaks off
        (transient) is listed and watched again, until the deadline."""
        deadline = time.monotonic() + DELETE_WAIT_SECONDS
        while True:
            _, gone = list_watch(
                self.core.list_namespace, field_selector=f"metadata.name={name}",
                done=lambda items: not items, deadline=deadline, what=f"namespace {name}",
            )  # fmt: skip
            if gone:
                return
            if deadline - time.monotonic() < 1:
                raise TemporaryError(f"namespace {name} still terminating after {DELETE_WAIT_SECONDS}s", delay=5.0)
            time.sleep(0.2)


def _takes_pods(node: Any) -> bool:
    """Ready, schedulable, and no taint that keeps a lesson's pods (which tolerate none) off it."""
    conditions = {c.type: c.status for c in (node.status.conditions or [])}
    taints = [t for t in (node.spec.taints or []) if t.effect in ("NoSchedule", "NoExecute")]
    return conditions.get("Ready") == "True" and not node.spec.unschedulable and not taints


def _placement(namespace: str, annotations: dict[str, str] | None) -> dict[str, str]:
    """A namespace's placement annotation (endpoint -> node); anything else there is logged and counts as
    nothing: a hostile or broken annotation must not stop placement for every other lesson."""
    text = (annotations or {}).get(ANNOTATION_PLACEMENT)
    if text is None:
        return {}
    try:
        placement = json.loads(text)
    except ValueError:
        placement = None
    if not isinstance(placement, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in placement.items()
    ):
        log.warning("unreadable placement annotation ignored", namespace=namespace)
        return {}
    return placement



def _open_exec(core: Any, pod: Pod, namespace: str, what: str, **options: Any) -> Any:
    """The pods/exec stream to ``pod`` (``options``: the command and channels), unread: a refusal is raised
    in our error tree, a failure to connect as TemporaryError (the API server may answer next time)."""
    try:
        return stream(
            core.connect_get_namespaced_pod_exec, pod.name, namespace, _preload_content=False, **options
        )
    except ApiException as exc:
        error = translate(exc)
        log.warning(f"{what} failed to start", endpoint=pod.endpoint, error=str(error), transient=error.transient)
        raise error from exc
    except (*CONNECTION_ERRORS, OSError) as exc:
        log.warning(f"{what} failed to connect", endpoint=pod.endpoint, error=describe(exc))
        raise TemporaryError(f"exec in {pod.endpoint} failed to connect: {exc}") from exc

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
