"""The per-namespace grant: who these credentials are, and the lesson role bound to them in each lesson
namespace.

Least privilege is the API server's (config/k8s/rbac.yaml): cluster-wide, the worker may only create,
list and delete lesson namespaces and bind one ClusterRole. Right after creating a namespace the backend
binds that role (``lesson-scheduler-lesson``: pods, pods/exec, NADs, NetworkPolicies, services) to its
own identity there, with a RoleBinding, and waits (bounded) until the authorizer lets it create pods.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import Plan
from scheduler.core.render import role_binding, subject_for
from workers.backends.kubernetes.api import ApiError, call

__all__ = ["GRANT_WAIT_SECONDS", "Grant"]

# a new RoleBinding reaches the authorizer's cache within milliseconds; past this, the step retries later
GRANT_WAIT_SECONDS = 5.0


class Grant:
    """The identity of ``api``'s credentials and the lesson role bound to it, namespace by namespace."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self._subject: dict[str, str] | None = None

    def subject(self) -> dict[str, str]:
        """The RBAC subject of the credentials in use, from a SelfSubjectReview (asked once): the
        RoleBinding in each lesson namespace names exactly the identity that creates it."""
        if self._subject is None:
            review = call(
                client.AuthenticationV1Api(self.api).create_self_subject_review,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            username = getattr(getattr(review.status, "user_info", None), "username", None) or ""
            try:
                self._subject = {k: str(v) for k, v in subject_for(username).items()}
            except ValueError as exc:
                raise PermanentError(f"the API server did not say who these credentials are: {exc}") from exc
        return self._subject

    def bind(self, plan: Plan) -> None:
        """Bind the lesson role to ourselves in the lesson's namespace, then wait until the authorizer
        honours it. A 409 is the binding an earlier attempt made: the worker may not read bindings, and
        needs not, since the access review that follows proves the grant is there and in force."""
        try:
            call(self.rbac.create_namespaced_role_binding, plan.namespace, role_binding(plan, self.subject()))
        except ApiError as exc:
            if exc.status != 409:
                raise
        self._wait_granted(plan.namespace)

    def allowed(self, ns: str, verb: str, resource: str) -> bool:
        """A SelfSubjectAccessReview: may we ``verb`` ``resource`` in ``ns``?"""
        review = call(
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
        while not self.allowed(ns, "create", "pods"):
            if time.monotonic() >= deadline:
                raise TemporaryError(
                    f"the lesson role bound in {ns} is not in effect after {GRANT_WAIT_SECONDS:.0f}s", delay=2.0
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
