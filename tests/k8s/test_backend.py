"""The kubernetes backend on the real test cluster, as the worker's ServiceAccount, through the fault proxy.

Pure parts (network-status parsing, not-ready reasons) are tested without the cluster; everything else
talks to the real kube-apiserver, scheduler and node agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.render import NETWORK_STATUS_ANNOTATION
from scheduler.services.catalog import load_catalog
from tests.k8s.machinery.api_proxy import ApiProxy
from tests.support.k8s import (
    RBAC,
    REAL_NODE,
    SLEEPER,
    WORKER_SA,
    Kubectl,
    backend,
    catalog_plan,
    namespace_json,
    namespaces_of,
    ring_checks,
)
from tests.support.waits import wait_until
from workers.backends.kubernetes.api import ApiError, call
from workers.backends.kubernetes.status import _interfaces, _not_ready

# --- pure ---------------------------------------------------------------------------------------------------


def test_network_status_both_name_forms_and_the_default_entry() -> None:
    plan = catalog_plan("busybox-triangle", "tpure", "abcdefghij")
    bb1 = plan.pod("bb1")
    raw = json.dumps(
        [
            {"name": "kindnet", "interface": "eth0", "ips": ["10.244.0.7"], "default": True},
            {"name": f"{plan.namespace}/bb1-bb2", "interface": "net1", "ips": ["10.10.12.2"]},  # ns/name
            {"name": "bb3-bb1", "interface": "net2", "ips": ["fe80::1", "10.10.31.2"]},  # bare name
        ]
    )
    got = _interfaces(plan, bb1.interfaces, raw)
    assert [(i.name, i.network, i.address) for i in got] == [
        ("net1", "bb1-bb2", "10.10.12.2/24"),
        ("net2", "bb3-bb1", "10.10.31.2/24"),
    ]
    # an address outside the connection's subnet, a missing entry or garbage: not there yet
    wrong = json.dumps([{"name": "bb1-bb2", "interface": "net1", "ips": ["10.99.0.2"]}])
    assert [i.address for i in _interfaces(plan, bb1.interfaces, wrong)] == [None, None]
    assert [i.address for i in _interfaces(plan, bb1.interfaces, "{not json")] == [None, None]


def _pod(phase: str = "Running", ready: bool = True, waiting: str | None = None, unschedulable: bool = False) -> Any:
    conditions = [client.V1PodCondition(type="Ready", status="True" if ready else "False")]
    if unschedulable:
        conditions = [
            client.V1PodCondition(
                type="PodScheduled", status="False", reason="Unschedulable", message="0/3 nodes are available"
            )
        ]
    state = client.V1ContainerState(waiting=client.V1ContainerStateWaiting(reason=waiting)) if waiting else None
    statuses = [client.V1ContainerStatus(name="c", image="x", image_id="", ready=ready, restart_count=0, state=state)]
    return client.V1Pod(status=client.V1PodStatus(phase=phase, conditions=conditions, container_statuses=statuses))


@pytest.mark.parametrize(
    ("pod", "reason", "fatal"),
    [
        (_pod(), None, False),
        (_pod(phase="Pending", ready=False), "phase Pending", False),
        (_pod(phase="Pending", ready=False, waiting="ContainerCreating"), "phase Pending", False),
        (_pod(phase="Pending", ready=False, waiting="ErrImagePull"), "ErrImagePull", True),
        (_pod(phase="Pending", ready=False, waiting="ImagePullBackOff"), "ImagePullBackOff", True),
        (_pod(ready=False, waiting="CrashLoopBackOff"), "CrashLoopBackOff", True),
        (_pod(phase="Pending", ready=False, unschedulable=True), "unschedulable", True),
        (_pod(ready=False), "containers not ready", False),
    ],
)
def test_not_ready_reasons_and_which_are_fatal(pod: Any, reason: str | None, fatal: bool) -> None:
    got_reason, got_fatal = _not_ready(pod)
    assert got_fatal is fatal
    assert (got_reason is None) if reason is None else (got_reason is not None and reason in got_reason)


# --- on the cluster ----------------------------------------------------------------------------------------


def rbac_rules(role: str | None = None) -> set[tuple[str, str]]:
    """(verb, resource) pairs the ClusterRoles in config/k8s/rbac.yaml grant (or just ``role``)."""
    roles = [
        d for d in yaml.safe_load_all(RBAC.read_text())
        if d and d["kind"] == "ClusterRole" and role in (None, d["metadata"]["name"])
    ]  # fmt: skip
    assert roles, role
    return {
        (verb, resource)
        for r in roles
        for rule in r["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# granted for what is not requested by name: `bind` is checked when a RoleBinding is created
NOT_REQUESTED = {("bind", "clusterroles")}
# every authenticated user may ask who it is and what it may do (system:basic-user)
SELF_REVIEWS = {"selfsubjectreviews", "selfsubjectaccessreviews"}


def test_the_worker_role_is_small_and_namespaced_verbs_come_per_namespace() -> None:
    """Cluster-wide, only namespaces, the one grant and a list of nodes (placement); every pod verb is in the
    per-namespace role."""
    assert rbac_rules("lesson-scheduler-worker") == {
        ("create", "namespaces"), ("get", "namespaces"), ("list", "namespaces"), ("watch", "namespaces"),
        ("delete", "namespaces"), ("create", "rolebindings"), ("bind", "clusterroles"), ("list", "nodes"),
    }  # fmt: skip
    role = next(
        d for d in yaml.safe_load_all(RBAC.read_text()) if d and d["metadata"]["name"] == "lesson-scheduler-worker"
        and d["kind"] == "ClusterRole"
    )  # fmt: skip
    bind = next(r for r in role["rules"] if "bind" in r["verbs"])
    assert bind["resourceNames"] == ["lesson-scheduler-lesson"]
    lesson = rbac_rules("lesson-scheduler-lesson")
    assert all(resource in {"pods", "pods/exec", "pods/portforward", "network-attachment-definitions",
                            "networkpolicies", "services"} for _, resource in lesson), lesson  # fmt: skip


@pytest.mark.root
@pytest.mark.slow
def test_lifecycle_as_the_worker_service_account_uses_exactly_its_rbac(
    k8s_proxy: ApiProxy, worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    kb = backend(worker_kubeconfig, instance)
    # who we are: the ServiceAccount, not cluster-admin
    review = client.AuthenticationV1Api(kb.api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1"})
    assert review.status.user_info.username == f"system:serviceaccount:{WORKER_SA[0]}:{WORKER_SA[1]}"
    assert "system:masters" not in (review.status.user_info.groups or [])
    start = k8s_proxy.mark()

    # LESSON_K8S_PLACEMENT=nodes reads the room on the nodes (here none carries a tunnel address: said so)
    kb.placement = "nodes"
    with pytest.raises(TemporaryError, match=r"no node labelled lessons\.io/tunnel-address"):
        kb.rooms()
    kb.placement = "affinity"
    plan = catalog_plan("busybox-triangle", instance)
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    observation = kb.observe(plan, wait=30)  # a list, then a watch: the pods cannot be ready yet
    assert observation.ready, observation
    # applying again finds everything there: 409, then a get that checks the labels, never a duplicate
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    nodes = {p.node for p in observation.pods.values()}
    assert len(nodes) == 1 and None not in nodes, nodes
    for endpoint, status in observation.pods.items():
        # eth0 (the cluster's default network, the pod IP) first, then the NADs' interfaces
        assert [i.name for i in status.interfaces] == ["eth0", *[i.name for i in plan.pod(endpoint).interfaces]]
        assert all(i.address for i in status.interfaces), status
    results = ring_checks(kb, plan)
    assert len(results) == 12 and all(ok for _, _, ok in results), results  # 6 by name, through cluster DNS
    # `lessonctl port-forward`'s way in (pods/portforward): nothing listens on 9, the stream opens and ends
    forwarded = kb.connect(plan, "bb1", 9, timeout=10)
    forwarded.settimeout(10)
    assert forwarded.recv(10) == b""
    forwarded.close()

    pods = json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=plan.namespace).stdout)["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["bb1", "bb2", "bb3"]
    assert {p["spec"]["nodeName"] for p in pods} == nodes
    status = json.loads(pods[0]["metadata"]["annotations"][NETWORK_STATUS_ANNOTATION])
    assert status[0].get("default") is True  # the agent's eth0 entry comes first and is ignored
    nads = json.loads(
        k8s_kubectl("get", "network-attachment-definitions", "-o", "json", namespace=plan.namespace).stdout
    )
    assert len(nads["items"]) == 3

    # the grant: one RoleBinding of the lesson role, to the worker itself, in this namespace only
    bindings = json.loads(k8s_kubectl("get", "rolebindings", "-o", "json", namespace=plan.namespace).stdout)["items"]
    assert [(b["roleRef"]["name"], b["subjects"]) for b in bindings] == [
        ("lesson-scheduler-lesson", [{"kind": "ServiceAccount", "name": WORKER_SA[1], "namespace": WORKER_SA[0]}])
    ]
    assert kb.list() == [plan.livelesson]
    kb.destroy(plan.livelesson)
    assert namespace_json(k8s_kubectl, plan.namespace) is None  # gone, not just terminating
    assert kb.list() == []
    kb.destroy(plan.livelesson)  # idempotent: already gone is done

    used = set()
    for request in k8s_proxy.requests[start:]:
        if request.verb == "exec":  # a websocket exec is a GET; 1.35+ also checks create
            used |= {("get", "pods/exec"), ("create", "pods/exec")}
        elif request.resource == "pods/portforward":  # a websocket GET too, with the same rule
            used |= {("get", "pods/portforward"), ("create", "pods/portforward")}
        elif request.resource not in SELF_REVIEWS:
            used.add((request.verb, request.resource))
    granted = rbac_rules() - NOT_REQUESTED
    assert used == granted, f"granted but unused: {granted - used}; used but not granted: {used - granted}"
    # who am I: asked once per backend, not per call
    assert sum(r.resource == "selfsubjectreviews" for r in k8s_proxy.requests[start:]) == 1
    failed = [(r.key, r.status) for r in k8s_proxy.requests[start:] if r.status is None or r.status >= 400]
    # 409: the second apply; 404: the second destroy. Nothing else failed, nothing was refused.
    unexpected = [f for f in failed if f[1] != 409 and f != ("get namespaces", 404)]
    assert not unexpected, (unexpected, k8s_proxy.errors)


@pytest.mark.root
@pytest.mark.slow
def test_what_the_role_does_not_grant_is_refused_and_never_retried(
    k8s_proxy: ApiProxy, worker_kubeconfig: Path, k8s_namespace: str, k8s_kubectl: Kubectl, instance: str
) -> None:
    kb = backend(worker_kubeconfig, instance)
    k8s_kubectl("create", "secret", "generic", "s", "--from-literal=k=v", namespace=k8s_namespace)
    k8s_kubectl("run", "victim", "--image=busybox", "--restart=Never", namespace=k8s_namespace)
    forbidden: list[tuple[str, Callable[[], Any]]] = [
        ("list secrets", lambda **kw: kb.core.list_namespaced_secret(k8s_namespace, **kw)),
        ("list secrets everywhere", lambda **kw: kb.core.list_secret_for_all_namespaces(**kw)),
        ("delete a pod", lambda **kw: kb.core.delete_namespaced_pod("victim", k8s_namespace, **kw)),
        ("patch a namespace", lambda **kw: kb.core.patch_namespace(k8s_namespace, {"metadata": {"labels": {"x": "y"}}},
                                                                   **kw)),
        ("create a role binding", lambda **kw: client.RbacAuthorizationV1Api(kb.api).create_namespaced_role_binding(
            k8s_namespace, {"metadata": {"name": "escalate"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"kind": "ServiceAccount",
            "name": WORKER_SA[1], "namespace": WORKER_SA[0]}]}, **kw)),
        # it lists nodes (placement) and may change none: a label would make a node one lessons are placed on
        ("label a node", lambda **kw: kb.core.patch_node(REAL_NODE, {"metadata": {"labels": {"x": "y"}}}, **kw)),
    ]  # fmt: skip
    for what, request in forbidden:
        before = k8s_proxy.mark()
        with pytest.raises(ApiError) as info:
            call(request)
        assert info.value.status == 403, what
        assert not info.value.transient
        assert k8s_proxy.mark() - before == 1, f"{what}: a 403 must not be retried"
    # a 404 is permanent too: one request
    before = k8s_proxy.mark()
    with pytest.raises(ApiError) as missing:
        call(kb.core.read_namespace, f"{instance}-nosuchthing")
    assert missing.value.status == 404 and k8s_proxy.mark() - before == 1
    # and nothing changed: the pod is still there
    assert k8s_kubectl("get", "pod", "victim", namespace=k8s_namespace).returncode == 0


@pytest.mark.root
@pytest.mark.slow
def test_transient_faults_are_retried_in_place(
    k8s_proxy: ApiProxy, worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("busybox-triangle", instance)
    faults = [
        k8s_proxy.add("500", verb="create", resource="namespaces", times=2),
        k8s_proxy.add("429", verb="create", resource="network-attachment-definitions", retry_after=2),
        k8s_proxy.add("reset", verb="create", resource="networkpolicies"),
        k8s_proxy.add("reset", verb="create", resource="pods"),
        # the API server creates the pod, the answer is lost: the retry gets 409, checks the labels, done
        k8s_proxy.add("reset-after", verb="create", resource="pods", skip=1),
        k8s_proxy.add("500", verb="list", resource="pods"),
        k8s_proxy.add("reset", verb="watch", resource="pods"),
        k8s_proxy.add("500", verb="exec", resource="pods/exec"),
        k8s_proxy.add("reset", verb="exec", resource="pods/exec"),
        k8s_proxy.add("503", verb="delete", resource="namespaces"),
        k8s_proxy.add("reset", verb="watch", resource="namespaces"),
    ]
    kb.apply_networks(plan)
    # no pods yet: a list, then a watch, which the proxy resets; observe reports "not yet", never raises
    assert not kb.observe(plan, wait=2).ready
    kb.apply_pods(plan)
    deadline = time.monotonic() + 30
    observation = kb.observe(plan, wait=10)
    while not observation.ready and time.monotonic() < deadline:  # as wait_ready re-runs itself
        observation = kb.observe(plan, wait=10)
    assert observation.ready, observation
    results = ring_checks(kb, plan)
    assert all(ok for _, _, ok in results), results
    kb.destroy(plan.livelesson)
    assert namespace_json(k8s_kubectl, plan.namespace) is None
    assert [f.hits for f in faults] == [f.times for f in faults], [(f.kind, f.verb, f.resource, f.hits) for f in faults]

    # Retry-After was honoured: the NAD create came back no sooner than the 2 s the 429 asked for
    nad_creates = [r for r in k8s_proxy.requests if r.key == "create network-attachment-definitions"]
    refused = next(i for i, r in enumerate(nad_creates) if r.fault == "429")
    assert nad_creates[refused + 1].started - nad_creates[refused].started >= 1.9
    # the lost pod create left exactly one pod of that name: create-or-get, never a duplicate
    pod_creates = [r for r in k8s_proxy.requests if r.key == "create pods"]
    assert [r.status for r in pod_creates].count(409) >= 1
    assert len(pod_creates) == 3 + 2  # three pods, two retried


@pytest.mark.root
@pytest.mark.slow
def test_watch_resumes_after_410_gone_by_listing_again(
    k8s_proxy: ApiProxy, worker_kubeconfig: Path, instance: str, k8s_cleanup: list[str]
) -> None:
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("busybox-line", instance)
    gone = k8s_proxy.add("gone", verb="watch", resource="pods")
    start = k8s_proxy.mark()
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    observation = kb.observe(plan, wait=20)
    assert observation.ready, observation
    assert gone.hits == 1
    counts = k8s_proxy.counts(start)
    # list, watch (410), list again, watch from the fresh resourceVersion
    assert counts["list pods"] == 2 and counts["watch pods"] >= 2, counts
    kb.destroy(plan.livelesson)


@pytest.mark.root
@pytest.mark.slow
def test_objects_without_our_mark_are_never_used_nor_deleted(
    worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("busybox-triangle", instance)
    k8s_cleanup.append(f"ns:{plan.namespace}")
    # someone else's namespace that happens to have the name this live lesson would use
    k8s_kubectl("create", "namespace", plan.namespace)
    with pytest.raises(PermanentError, match="not this live lesson's"):
        kb.apply_networks(plan)
    with pytest.raises(PermanentError, match="refusing to delete"):
        kb.destroy(plan.livelesson)
    assert namespace_json(k8s_kubectl, plan.namespace) is not None
    # the same name labelled for another instance: not listed, not deleted
    k8s_kubectl("label", "namespace", plan.namespace, "app.kubernetes.io/managed-by=lesson-scheduler",
                "lessons.io/instance=someone-else", f"lessons.io/livelesson={plan.livelesson}")  # fmt: skip
    assert kb.list() == []
    with pytest.raises(PermanentError):
        kb.destroy(plan.livelesson)
    ns = namespace_json(k8s_kubectl, plan.namespace)
    assert ns is not None and "deletionTimestamp" not in ns["metadata"]


@pytest.mark.root
@pytest.mark.slow
def test_two_deployments_of_one_instance_never_list_nor_destroy_each_others_lessons(
    direct_worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    """Same LESSON_INSTANCE, two deployments (e.g. `make demo` beside a running worker): each sees and
    collects only its own live lessons."""
    a = backend(direct_worker_kubeconfig, instance, deployment="deploy-a")
    b = backend(direct_worker_kubeconfig, instance, deployment="deploy-b")
    plan = catalog_plan("busybox-line", instance, deployment="deploy-a")
    ns_labels = {"app.kubernetes.io/managed-by": "lesson-scheduler", "lessons.io/instance": instance,
                 "lessons.io/deployment": "deploy-a", "lessons.io/livelesson": plan.livelesson}  # fmt: skip
    with pytest.raises(PermanentError, match="deployment"):  # a plan of another deployment is refused
        b.apply_networks(plan)
    assert namespace_json(k8s_kubectl, plan.namespace) is None
    a.apply_networks(plan)
    a.apply_pods(plan)
    assert a.observe(plan, wait=30).ready
    ns = namespace_json(k8s_kubectl, plan.namespace)
    assert ns is not None and ns_labels.items() <= ns["metadata"]["labels"].items()

    assert a.list() == [plan.livelesson]
    assert b.list() == []
    with pytest.raises(PermanentError, match="refusing to delete"):
        b.destroy(plan.livelesson)
    ns = namespace_json(k8s_kubectl, plan.namespace)
    assert ns is not None and "deletionTimestamp" not in ns["metadata"]
    assert a.observe(plan, wait=0).ready  # untouched
    # a deployment-less backend of the same instance (the default) does not see it either
    assert backend(direct_worker_kubeconfig, instance).list() == []
    a.destroy(plan.livelesson)
    assert namespace_json(k8s_kubectl, plan.namespace) is None
    assert a.list() == []


@pytest.mark.root
@pytest.mark.slow
def test_unschedulable_fails_fast_with_the_schedulers_reason(
    worker_kubeconfig: Path, k8s_kubectl: Kubectl, k8s_namespace: str, instance: str, k8s_cleanup: list[str]
) -> None:
    """Every node already runs a pod that refuses this live lesson's pods next to it (required
    anti-affinity): the real scheduler reports Unschedulable, and observe says so at once."""
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("busybox-line", instance)
    nodes = json.loads(k8s_kubectl("get", "nodes", "-o", "json").stdout)["items"]
    blockers = []
    for node in nodes:
        name = node["metadata"]["name"]
        blockers.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"blocker-{name}", "namespace": k8s_namespace},
            "spec": {
                "nodeName": name,
                "containers": [SLEEPER],
            "terminationGracePeriodSeconds": 0,  # sleep ignores SIGTERM: no 30 s wait at cleanup
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"lessons.io/livelesson": plan.livelesson}},
                    "namespaces": [plan.namespace],
                    "topologyKey": "kubernetes.io/hostname",
                }]}},
            },
        })  # fmt: skip
    k8s_kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": blockers}))
    wait_until(
        "the blockers running",
        lambda: all(
            p["status"].get("phase") == "Running"
            for p in json.loads(k8s_kubectl("get", "pods", "-o", "json", namespace=k8s_namespace).stdout)["items"]
        ),
    )
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    # fails fast: the observation comes back fatal with the scheduler's reason, not "not ready yet"
    observation = kb.observe(plan, wait=30)
    fatal = [p for p in observation.pods.values() if p.fatal]
    assert fatal and not observation.ready, observation
    assert "unschedulable" in (fatal[0].reason or "") and "anti-affinity" in (fatal[0].reason or ""), fatal
    kb.destroy(plan.livelesson)


def _pair(tmp_path: Path, image: str, command: str) -> Any:
    """A catalog of one lesson: h1 runs, h2 runs ``image`` with ``command``."""
    (tmp_path / "pair.yaml").write_text(
        "slug: pair\nname: Pair\ncategory: fundamentals\ntier: prod\ndescription: two hosts\nshortDescription: Pair\n"
        "endpoints:\n- name: h1\n  image: busybox\n  command: [sleep, infinity]\n"
        f"- name: h2\n  image: {image}\n  command: {command}\n"
        "connections:\n- a: h1\n  b: h2\n"
    )
    return load_catalog(tmp_path)


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize(
    ("image", "command", "reasons", "detail"),
    [
        # the container really exits (status 3): the kubelet restarts it, then backs off
        ("busybox", "[sh, -c, 'echo going; exit 3']", ("CrashLoopBackOff", "Error"), "exit code 3"),
        # a real pull from the loopback registry, which has no such repository
        ("lesson-test/no-such-image:1", "[sleep, infinity]", ("ErrImagePull", "ImagePullBackOff"), "not found"),
    ],
    ids=["crashing-container", "image-not-found"],
)
def test_a_broken_pod_fails_fast_with_the_kubelets_reason(
    image: str, command: str, reasons: tuple[str, ...], detail: str, worker_kubeconfig: Path,
    k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str], tmp_path: Path,
) -> None:  # fmt: skip
    kb = backend(worker_kubeconfig, instance)
    plan = catalog_plan("pair", instance, catalog=_pair(tmp_path, image, command))
    kb.apply_networks(plan)
    kb.apply_pods(plan)
    started = time.monotonic()
    observation = kb.observe(plan, wait=90)
    # a command that exits at once may be seen Ready for the moment before it exits: look again
    while not observation.pods["h2"].fatal and time.monotonic() < started + 90:
        time.sleep(0.5)
        observation = kb.observe(plan, wait=max(0.0, started + 90 - time.monotonic()))
    took = time.monotonic() - started
    h2 = observation.pods["h2"]
    assert h2.fatal and not observation.ready, observation
    assert h2.node == REAL_NODE
    assert any(r in (h2.reason or "") for r in reasons), h2.reason
    assert took < 60, f"took {took:.0f}s: fast means well before the provisioning deadline"
    # the kubelet's own account, as the pod reports it
    pod = json.loads(k8s_kubectl("get", "pod", "h2", "-o", "json", namespace=plan.namespace).stdout)
    state = pod["status"]["containerStatuses"][0]
    said = json.dumps(state)
    assert detail in said or detail in (h2.reason or ""), said
    kb.destroy(plan.livelesson)
    assert namespaces_of(k8s_kubectl, instance) == []


def test_refused_exec_upgrade_is_permanent_and_a_lost_connection_transient() -> None:
    """The exec websocket reports everything as status 0: the handshake's own status decides."""
    from kubernetes.client.exceptions import ApiException

    from workers.backends.kubernetes.api import http_status, is_transient, translate

    body = '{"kind":"Status","message":"pods \\"bb1\\" is forbidden: cannot get resource \\"pods/exec\\"","code":403}'
    refused = ApiException(status=0, reason=f"Handshake status 403 Forbidden -+-+- {{'date': 'x'}} -+-+- {body}")
    assert http_status(refused) == 403 and not is_transient(refused)
    error = translate(refused)
    assert isinstance(error, ApiError) and error.status == 403 and "forbidden" in str(error)
    busy = ApiException(status=0, reason="Handshake status 503 Service Unavailable -+-+- {} -+-+- ")
    assert is_transient(busy)
    lost = ApiException(status=0, reason="Connection to remote host was lost.")
    assert http_status(lost) == 0 and is_transient(lost) and translate(lost).transient
    assert not is_transient(ApiException(status=404)) and is_transient(ApiException(status=429))
