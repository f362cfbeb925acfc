"""Least privilege enforced by the API server (config/k8s/rbac.yaml), proven as the worker's ServiceAccount
on the real test cluster: the whole life of a lesson works, and everything outside its own labelled
namespaces is refused with 403, whatever the client does. The calls here bypass the backend's own checks:
they are what a leaked worker token could try."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from scheduler.core.render import LESSON_ROLE
from tests.support.k8s import (
    WORKER_SA,
    Kubectl,
    backend,
    catalog_plan,
    namespace_json,
    probe_namespace,
    ring_checks,
    token_api,
)
from tests.support.waits import wait_until
from workers.backends.kubernetes.api import http_status

pytestmark = [pytest.mark.root, pytest.mark.slow]

ME = {"kind": "ServiceAccount", "name": WORKER_SA[1], "namespace": WORKER_SA[0]}


def status_of(call: Callable[[], Any]) -> int:
    """The HTTP status of one API call: 2xx when it went through (0: no answer)."""
    try:
        call()
    except ApiException as exc:
        return http_status(exc)
    return 200


def exec_status(api: client.ApiClient, namespace: str, pod: str, argv: list[str]) -> int:
    """The status of an exec's websocket upgrade (the API server authorizes pods/exec before it)."""
    core = client.CoreV1Api(client.ApiClient(api.configuration))
    try:
        resp = stream(
            core.connect_get_namespaced_pod_exec, pod, namespace, command=argv,
            stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False, _request_timeout=10,
        )  # fmt: skip
    except ApiException as exc:
        return http_status(exc)
    resp.close()
    return 101


def binding(namespace: str, role: str, subject: dict[str, str], kind: str = "ClusterRole") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"try-{role}"[:60], "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [subject],
    }


def privileged_pod(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "escape", "namespace": namespace},
        "spec": {
            "hostPID": True,
            "hostNetwork": True,
            "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}],
        },
    }


def lesson_labels(instance: str, livelesson: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "lesson-scheduler",
        "lessons.io/instance": instance,
        "lessons.io/livelesson": livelesson,
    }


@pytest.fixture
def victim(k8s_kubectl: Kubectl, k8s_namespace: str) -> str:
    """A pod in a foreign namespace, made by an administrator."""
    k8s_kubectl("run", "victim", "--image=busybox", "--restart=Never", namespace=k8s_namespace)
    return k8s_namespace


def test_a_whole_lesson_life_as_the_worker_service_account(
    direct_worker_kubeconfig: Path, k8s_kubectl: Kubectl, instance: str, k8s_cleanup: list[str]
) -> None:
    kb = backend(direct_worker_kubeconfig, instance)
    assert kb.subject() == ME
    plan = catalog_plan("busybox-triangle", instance)
    kb.apply_networks(plan)  # namespace, then the RoleBinding, then (granted) the NADs and the policy
    kb.apply_pods(plan)
    assert kb.observe(plan, wait=30).ready
    results = ring_checks(kb, plan)  # pods/exec, in its own namespace
    assert len(results) == 12 and all(ok for _, _, ok in results), results  # 6 by name, through cluster DNS
    kb.destroy(plan.livelesson)
    assert namespace_json(k8s_kubectl, plan.namespace) is None


def test_everything_outside_its_labelled_namespaces_is_refused_with_403(
    direct_worker_kubeconfig: Path, k8s_worker_token: str, k8s_kubectl: Kubectl, victim: str, instance: str,
    k8s_cleanup: list[str],
) -> None:  # fmt: skip
    kb = backend(direct_worker_kubeconfig, instance)
    plan = catalog_plan("busybox-line", instance)
    kb.apply_networks(plan)  # a namespace of its own, granted: the refusals below are not for lack of it
    own = plan.namespace
    api = kb.api
    core: Any = client.CoreV1Api(api)  # Any: the client's stubs want its model classes, not dicts
    rbac: Any = client.RbacAuthorizationV1Api(api)
    k8s_kubectl("label", "namespace", victim, "app.kubernetes.io/managed-by=lesson-scheduler",
                "lessons.io/instance=someone-else", "lessons.io/livelesson=abcdefghij")  # fmt: skip
    other_instance = json.loads(k8s_kubectl("get", "namespace", victim, "-o", "json").stdout)
    assert other_instance["metadata"]["labels"]["lessons.io/instance"] == "someone-else"
    unlabelled = f"{instance}-unlabelled"
    k8s_kubectl("create", "namespace", unlabelled)
    # this one, and whatever a failing refusal below would make
    k8s_cleanup.extend(f"ns:{n}" for n in (unlabelled, "escape-ns", "someone-else-abcdefghij", "kube-escape"))

    refused: dict[str, Callable[[], Any]] = {
        # exec and pods anywhere but its own namespaces: RBAC has no such verb for it
        "exec into a kube-system pod": lambda: _raise_exec(api, "kube-system", "kube-apiserver"),
        "exec into a foreign pod": lambda: _raise_exec(api, victim, "victim"),
        "create a privileged pod in a foreign namespace": lambda: core.create_namespaced_pod(
            victim, privileged_pod(victim)),
        "create a privileged pod in kube-system": lambda: core.create_namespaced_pod(
            "kube-system", privileged_pod("kube-system")),
        "delete a foreign pod": lambda: core.delete_namespaced_pod("victim", victim),
        "read secrets": lambda: core.list_secret_for_all_namespaces(),
        # namespaces: create and delete only with its labels (the admission policy)
        "delete the default namespace": lambda: core.delete_namespace("default"),
        "delete kube-system": lambda: core.delete_namespace("kube-system"),
        "delete an unlabelled namespace": lambda: core.delete_namespace(unlabelled),
        "delete another instance's namespace": lambda: core.delete_namespace(victim),
        "create a namespace without labels": lambda: core.create_namespace({"metadata": {"name": "escape-ns"}}),
        "create a namespace of an instance it does not serve": lambda: core.create_namespace({"metadata": {
            "name": "someone-else-abcdefghij", "labels": lesson_labels("someone-else", "abcdefghij")}}),
        "create a labelled namespace under another name": lambda: core.create_namespace({"metadata": {
            "name": "kube-escape", "labels": lesson_labels(instance, "abcdefghij")}}),
        "label a foreign namespace as its own": lambda: core.patch_namespace(
            unlabelled, {"metadata": {"labels": lesson_labels(instance, "abcdefghij")}}),
        # role bindings: only the lesson role, only to itself, only in its own namespaces
        "bind cluster-admin in a foreign namespace": lambda: rbac.create_namespaced_role_binding(
            victim, binding(victim, "cluster-admin", ME)),
        "bind cluster-admin in its own namespace": lambda: rbac.create_namespaced_role_binding(
            own, binding(own, "cluster-admin", ME)),
        "bind the lesson role in a foreign namespace": lambda: rbac.create_namespaced_role_binding(
            victim, binding(victim, LESSON_ROLE, ME)),
        "bind the lesson role in kube-system": lambda: rbac.create_namespaced_role_binding(
            "kube-system", binding("kube-system", LESSON_ROLE, ME)),
        "bind the lesson role to someone else": lambda: rbac.create_namespaced_role_binding(
            own, binding(own, LESSON_ROLE, {"kind": "ServiceAccount", "name": "default", "namespace": "default"})),
        "bind the lesson role to a group": lambda: rbac.create_namespaced_role_binding(
            own, binding(own, LESSON_ROLE, {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                                            "name": "system:authenticated"})),
        "bind another role it holds in its own namespace": lambda: rbac.create_namespaced_role_binding(
            own, binding(own, "lesson-scheduler-worker", ME)),
        "bind cluster-admin cluster-wide": lambda: rbac.create_cluster_role_binding({
            "metadata": {"name": "escape"}, "subjects": [ME],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}}),
        "edit its own role": lambda: rbac.patch_cluster_role(
            "lesson-scheduler-lesson", {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        "edit the instances it serves": lambda: core.patch_namespaced_config_map(
            "lesson-scheduler-instances", WORKER_SA[0], {"data": {"someone-else": ""}}),
    }  # fmt: skip
    got = {what: status_of(call) for what, call in refused.items()}
    assert {what: status for what, status in got.items() if status != 403} == {}, got

    # nothing changed
    for name in ("default", "kube-system", unlabelled, victim):
        ns = namespace_json(k8s_kubectl, name)
        assert ns is not None and "deletionTimestamp" not in ns["metadata"], name
    assert k8s_kubectl("get", "pod", "victim", namespace=victim).returncode == 0
    assert namespace_json(k8s_kubectl, "escape-ns") is None
    bindings = json.loads(k8s_kubectl("get", "rolebindings", "-A", "-o", "json").stdout)["items"]
    assert not [b["metadata"] for b in bindings if b["metadata"]["name"].startswith("try-")]
    assert k8s_kubectl("get", "clusterrolebinding", "escape", check=False).returncode != 0
    # the admission policy is what refused the namespace requests, and says why (`default` itself is also
    # guarded by the NamespaceLifecycle plugin, which answers first)
    with token_api(k8s_worker_token) as worker, pytest.raises(ApiException) as info:
        client.CoreV1Api(worker).delete_namespace(unlabelled)
    assert info.value.status == 403 and "lesson-scheduler-worker may only act on namespaces" in str(info.value.body)
    kb.destroy(plan.livelesson)


def _raise_exec(api: client.ApiClient, namespace: str, pod: str) -> None:
    status = exec_status(api, namespace, pod, ["nsenter", "--net=/proc/1/ns/net", "sh"])
    if status != 101:
        raise ApiException(status=status, reason="exec refused")


def test_the_policy_binds_only_its_instances_and_closes_without_its_configmap(
    k8s_worker_token: str, k8s_allow: Callable[..., None], k8s_kubectl: Kubectl, instance: str
) -> None:
    """The ConfigMap names the instances this worker serves: until one is added its namespaces are refused;
    with the ConfigMap gone, every namespace create and delete of the worker is refused."""
    assert probe_namespace(k8s_worker_token, instance) == 403
    k8s_allow(instance)
    assert probe_namespace(k8s_worker_token, instance) == 201
    saved = json.loads(k8s_kubectl("get", "configmap", "lesson-scheduler-instances", "-o", "json",
                                   namespace=WORKER_SA[0]).stdout)  # fmt: skip
    k8s_kubectl("delete", "configmap", "lesson-scheduler-instances", namespace=WORKER_SA[0])
    try:
        wait_until("the policy closed", lambda: probe_namespace(k8s_worker_token, instance) != 201, timeout=30)
        # refused by the binding itself ("no params found"), which the API server reports as 422 Invalid
        assert probe_namespace(k8s_worker_token, instance) in (403, 422)
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            saved["metadata"].pop(key, None)
        k8s_kubectl("create", "-f", "-", stdin=json.dumps(saved))
    wait_until("the policy open again", lambda: probe_namespace(k8s_worker_token, instance) == 201, timeout=30)
