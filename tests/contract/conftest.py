"""The backends the contract suite runs against, behind the parametrised fixtures ``make_backend`` and ``squat``.

- ``local`` (pods as runc containers, the default) and ``local-emulated`` (stand-in processes): need
  root, iproute2 and the CNI plugins; a unique instance and a tmp state folder, whatever is left removed
  by the ``instance`` fixture (``cleanup_instance``);
- ``kubernetes``: the test cluster (tests/k8s/conftest.py starts it if it is not up), as the worker's
  ServiceAccount, straight to the API server; the instance's namespaces removed afterwards;
- ``fake``: tests/support/fake_backend.py, the in-memory backend the pipeline's own tests run on: passing
  the same suite is what makes those tests mean something.

A new backend adds a param here and passes tests/contract/test_backend_contract.py unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from scheduler.core import naming
from scheduler.core.plan import Plan
from scheduler.core.records import PodKind
from tests.k8s.conftest import (  # noqa: F401 - fixtures the kubernetes param uses
    direct_worker_kubeconfig,
    k8s_allow,
    k8s_cleanup,
    k8s_kubeconfig,
    k8s_kubectl,
    k8s_worker_token,
)
from tests.support.fake_backend import FakeBackend, FakeWorld
from tests.support.prereqs import is_root, needs
from workers.backends.base import Backend

# the kubernetes param carries the `cluster` mark: it runs in the suite's cluster phase (tests/run-suite.sh)
BACKENDS = ["local", "local-emulated", pytest.param("kubernetes", marks=pytest.mark.cluster), "fake"]
ROOM = 8  # LESSON_NODE_MAX_PODS of a placing backend: its one node takes two lessons of four pods


class MakeBackend(Protocol):
    def __call__(self, deployment: str, *, places: bool = False) -> Backend:
        """This backend for the test's instance, acting for ``deployment``; with ``places`` one whose lessons
        the scheduler places (:attr:`Backend.places`) on one node with room for :data:`ROOM` pods."""


# ``squat(plan)``: an object holding a name ``plan`` needs, not marked as its live lesson's; returns a check
# that the object is still there, unchanged
Squat = Callable[[Plan], Callable[[], bool]]


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake_world() -> FakeWorld:
    """What the fake backends of one test share, as backends share a host or a cluster."""
    return FakeWorld()


@pytest.fixture
def make_backend(
    backend_kind: str, request: pytest.FixtureRequest, instance: str, tmp_path: Path, fake_world: FakeWorld
) -> Iterator[MakeBackend]:
    """Every backend made is closed after the test, and every deployment's lessons destroyed (on
    kubernetes by ``k8s_cleanup``, which deletes the instance's namespaces)."""
    make: MakeBackend
    cleanup: list[Callable[[], None]] = []
    if backend_kind.startswith("local"):
        needs(is_root(), "the local backend needs root, iproute2 and containernetworking-plugins")
        from workers.backends.local import LocalBackend

        state_dir = tmp_path / "state"  # the one the ``instance`` fixture cleans up
        pods: PodKind = "emulated" if backend_kind == "local-emulated" else "container"
        image_dir: Path = request.getfixturevalue("image_dir")

        def make(deployment: str, *, places: bool = False) -> Backend:
            return LocalBackend(
                instance=instance, state_dir=state_dir, deployment=deployment, pods=pods, image_dir=image_dir,
                node_max_pods=ROOM if places else 0,
            )  # fmt: skip
    elif backend_kind == "kubernetes":
        kubeconfig: Path = request.getfixturevalue("direct_worker_kubeconfig")
        request.getfixturevalue("k8s_cleanup")  # as admin, removes the instance's namespaces, pass or fail
        from workers.backends.kubernetes.backend import KubernetesBackend

        def make(deployment: str, *, places: bool = False) -> Backend:
            if places and not cleanup:
                cleanup.append(_tunnel_address_on_the_real_node(request))
            return KubernetesBackend.from_kubeconfig(
                kubeconfig, instance=instance, deployment=deployment,
                placement="nodes" if places else "affinity", node_max_pods=ROOM,
            )  # fmt: skip
    else:

        def make(deployment: str, *, places: bool = False) -> Backend:
            nodes = ("fake-node",) if places else ()
            return FakeBackend(fake_world, instance=instance, deployment=deployment, nodes=nodes, node_max_pods=ROOM)

    made: list[Backend] = []
    deployments: dict[str, None] = {}

    def tracked(deployment: str, *, places: bool = False) -> Backend:
        made.append(make(deployment, places=places))
        deployments[deployment] = None
        return made[-1]

    yield tracked
    try:
        for backend in made:  # a test may have closed one already: closing again is harmless
            backend.close()
        if backend_kind == "kubernetes":
            return  # k8s_cleanup deletes the instance's namespaces, without waiting ~16 s for each to go
        for deployment in deployments:  # a fresh backend each: the test's may be closed
            sweeper = make(deployment)
            try:
                for livelesson in sweeper.list():
                    sweeper.destroy(livelesson)
            finally:
                sweeper.close()
    finally:
        for undo in cleanup:
            undo()


def _tunnel_address_on_the_real_node(request: pytest.FixtureRequest) -> Callable[[], None]:
    """Label the test cluster's real node with its tunnel address, as an operator does for placement (the
    node agent's label); what undoes it, unless it was labelled before."""
    from tests.support.k8s import REAL_NODE, Kubectl

    kubectl: Kubectl = request.getfixturevalue("k8s_kubectl")
    node = json.loads(kubectl("get", "node", REAL_NODE, "-o", "json").stdout)
    if naming.LABEL_TUNNEL_ADDRESS in node["metadata"].get("labels", {}):
        return lambda: None
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    kubectl("label", "node", REAL_NODE, f"{naming.LABEL_TUNNEL_ADDRESS}={address}")

    def unlabel() -> None:
        kubectl("label", "node", REAL_NODE, f"{naming.LABEL_TUNNEL_ADDRESS}-", check=False)

    return unlabel


@pytest.fixture
def squat(backend_kind: str, request: pytest.FixtureRequest, fake_world: FakeWorld) -> Squat:
    """Made as a stranger would, with no help from the backend: on the local backends a bridge under the
    plan's first link's bridge name marked as another instance's (a bridge with no mark at all under that
    hashed name is claimed by design: the CNI bridge plugin makes bridges unmarked), on kubernetes the
    lesson's namespace without labels (as admin), on the fake the lesson's namespace without a mark."""
    if backend_kind.startswith("local"):
        from tests.support import netns_tools as netns

        def local(plan: Plan) -> Callable[[], bool]:
            node, bridge = plan.pods[0].node, plan.networks[0].bridge
            alias = f"{naming.mark('stranger', plan.livelesson)}/{plan.networks[0].index}"
            netns.add(node, loopback=False)  # removed with everything of the instance by the ``instance`` fixture
            netns.ip("link", "add", bridge, "type", "bridge", netns=node)
            netns.ip("link", "set", bridge, "alias", alias, netns=node)
            return lambda: netns.bridges(node).get(bridge) == alias

        return local
    if backend_kind == "kubernetes":
        from tests.support.k8s import Kubectl, namespace_json

        kubectl: Kubectl = request.getfixturevalue("k8s_kubectl")
        extra: list[str] = request.getfixturevalue("k8s_cleanup")

        def kubernetes(plan: Plan) -> Callable[[], bool]:
            extra.append(f"ns:{plan.namespace}")
            kubectl("create", "namespace", plan.namespace)

            def untouched() -> bool:
                ns = namespace_json(kubectl, plan.namespace)
                labels = (ns or {}).get("metadata", {}).get("labels", {})
                return (
                    ns is not None
                    and "deletionTimestamp" not in ns["metadata"]
                    and not (labels.keys() & {naming.LABEL_MANAGED_BY, naming.LABEL_LIVELESSON})
                )

            return untouched

        return kubernetes

    def fake(plan: Plan) -> Callable[[], bool]:
        thing = fake_world.squat("namespace", plan.namespace)
        return lambda: fake_world.objects.get(("namespace", plan.namespace)) is thing and thing.mark is None

    return fake
