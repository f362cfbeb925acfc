"""The backends the contract suite runs against, behind one parametrised fixture ``make_backend``.

- ``local`` (pods as runc containers, the default) and ``local-emulated`` (stand-in processes): need
  root, iproute2 and the CNI plugins; a unique instance and a tmp state folder, whatever is left removed
  by the ``instance`` fixture (``cleanup_instance``);
- ``kubernetes``: the test cluster (tests/k8s/conftest.py starts it if it is not up), as the worker's
  ServiceAccount, straight to the API server; the instance's namespaces removed afterwards.

A third backend adds a param here and passes tests/contract/test_backend_contract.py unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.k8s.conftest import (  # noqa: F401 - fixtures the kubernetes param uses
    direct_worker_kubeconfig,
    k8s_allow,
    k8s_cleanup,
    k8s_kubeconfig,
    k8s_kubectl,
    k8s_worker_token,
)
from tests.support.prereqs import is_root, needs
from workers.backends.base import Backend

MakeBackend = Callable[[str], Backend]


@pytest.fixture(params=["local", "local-emulated", "kubernetes"])
def make_backend(request: pytest.FixtureRequest, instance: str, tmp_path: Path) -> Iterator[MakeBackend]:
    """``make(deployment)``: this backend for the test's unique instance, acting for ``deployment``. Every
    backend made is emptied of its lessons and closed after the test."""
    make: MakeBackend
    if request.param.startswith("local"):
        needs(is_root(), "the local backend needs root, iproute2 and containernetworking-plugins")
        from workers.backends.local import LocalBackend

        state_dir = tmp_path / "state"  # the one the ``instance`` fixture cleans up
        pods = "emulated" if request.param == "local-emulated" else "container"
        image_dir: Path = request.getfixturevalue("image_dir")

        def make(deployment: str) -> Backend:
            return LocalBackend(
                instance=instance, state_dir=state_dir, deployment=deployment, pods=pods, image_dir=image_dir
            )
    else:
        kubeconfig: Path = request.getfixturevalue("direct_worker_kubeconfig")
        request.getfixturevalue("k8s_cleanup")  # as admin, removes the instance's namespaces, pass or fail
        from workers.backends.kubernetes.backend import KubernetesBackend

        def make(deployment: str) -> Backend:
            return KubernetesBackend.from_kubeconfig(kubeconfig, instance=instance, deployment=deployment)

    made: list[Backend] = []

    def tracked(deployment: str) -> Backend:
        backend = make(deployment)
        made.append(backend)
        return backend

    yield tracked
    for backend in made:
        try:
            for livelesson in backend.list():
                backend.destroy(livelesson)
        finally:
            backend.close()
