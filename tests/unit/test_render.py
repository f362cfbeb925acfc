"""Rendering: every object valid against the Kubernetes OpenAPI schema, the NAD against its CRD, and each
CNI configuration read the way the bridge plugin reads it."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from scheduler.core.plan import CNI_VERSION, Plan, make_plan
from scheduler.core.render import (
    LESSON_ROLE,
    NETWORKS_ANNOTATION,
    RESOURCES,
    ROLE_BINDING,
    render,
    role_binding,
    subject_for,
    to_yaml,
)
from scheduler.services.catalog import load_catalog
from tests.support.lessons import CURRICULUM, REPO

CRD = REPO / "config" / "k8s" / "network-attachment-definition-crd.yaml"
RBAC = REPO / "config" / "k8s" / "rbac.yaml"
LIVELESSON = "abcde12345"

K8S_VERSIONS = ["1.31", kubernetes_validate.latest_version()]
NATIVE_KINDS = {"Namespace", "Pod", "NetworkPolicy", "Service"}
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# The fields the bridge plugin's NetConf (plugins/main/bridge) and types.NetConf decode; Go's json decoder
# ignores any other key, so a misspelt one ("hairpin_mode") would be dropped without a word.
BRIDGE_FIELDS = {
    "cniVersion": str,
    "name": str,
    "type": str,
    "bridge": str,
    "isGateway": bool,
    "isDefaultGateway": bool,
    "forceAddress": bool,
    "ipMasq": bool,
    "mtu": int,
    "hairpinMode": bool,
    "promiscMode": bool,
    "vlan": int,
    "preserveDefaultVlan": bool,
    "macspoofchk": bool,
    "enabledad": bool,
    "disableContainerInterface": bool,
    "portIsolation": bool,
    "ipam": dict,
    "dns": dict,
    "capabilities": dict,
}
HOST_LOCAL_FIELDS = {
    "type": str,
    "subnet": str,
    "rangeStart": str,
    "rangeEnd": str,
    "gateway": str,
    "routes": list,
    "ranges": list,
    "dataDir": str,
    "resolvConf": str,
}
CNI_SPEC_VERSIONS = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def catalog_lessons() -> list[Any]:
    return [*load_catalog(CURRICULUM), *load_catalog(REPO / "config" / "lessons")]


LESSONS = {lesson.slug: lesson for lesson in catalog_lessons()}


def plan_of(slug: str, livelesson: str = LIVELESSON, session: str = "s1") -> Plan:
    return make_plan(LESSONS[slug], livelesson, session, instance="lessons")


@pytest.fixture(scope="module")
def triangle() -> Plan:
    return plan_of("busybox-triangle")


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


# --- the Kubernetes OpenAPI schema -------------------------------------------------------------------------


def test_kubernetes_validate_knows_1_31_or_newer() -> None:
    assert Version(kubernetes_validate.__version__) >= Version("1.31")
    assert Version(kubernetes_validate.latest_version()) >= Version("1.31")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("slug", sorted(LESSONS))
def test_every_object_is_valid_kubernetes(slug: str, version: str) -> None:
    objects = render(plan_of(slug))
    assert {o["kind"] for o in objects} >= NATIVE_KINDS
    for obj in objects:
        if obj["kind"] in NATIVE_KINDS:
            validated = kubernetes_validate.validate(obj, version, strict=True)
            assert Version(validated) >= Version("1.31")


@pytest.mark.parametrize(
    "break_it",
    [
        lambda pod: pod["spec"].update(containers="not a list"),
        lambda pod: pod["spec"].update(restartPolicy=["Always"]),
        lambda pod: pod["spec"]["containers"][0].update(imagePullPolicy=3),
        lambda pod: pod["spec"]["containers"][0].update(portz=[]),  # strict: unknown field
    ],
)
def test_the_schema_check_can_fail(triangle: Plan, break_it: Any) -> None:
    """The validator is not a no-op: a broken pod is refused."""
    pod = copy.deepcopy(by_kind(render(triangle), "Pod")[0])
    break_it(pod)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.31", strict=True)


@pytest.mark.parametrize("slug", sorted(LESSONS))
def test_names_and_labels_are_what_the_api_server_accepts(slug: str) -> None:
    """The OpenAPI schema does not check name formats; the API server does."""
    plan = plan_of(slug)
    for obj in render(plan):
        meta = obj["metadata"]
        if obj["kind"] in {"Namespace", "Pod"}:
            assert DNS1123_LABEL.match(meta["name"]) and len(meta["name"]) <= 63
        else:
            assert DNS1123_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253
        if obj["kind"] != "Namespace":
            assert meta["namespace"] == plan.namespace
        for key, value in meta["labels"].items():
            assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lesson-scheduler"
        assert meta["labels"]["lessons.io/instance"] == "lessons"
        assert meta["labels"]["lessons.io/livelesson"] == LIVELESSON
        assert meta["labels"]["lessons.io/lesson"] == slug
        assert meta["labels"]["lessons.io/session"] == "s1"
    for pod in by_kind(render(plan), "Pod"):
        assert pod["metadata"]["labels"]["lessons.io/endpoint"] == pod["spec"]["containers"][0]["name"]


# --- the NetworkAttachmentDefinition against its CRD ------------------------------------------------------


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural schema with pruning made visible: a field the API server would drop is an error."""
    schema = copy.deepcopy(schema)
    if schema.get("type") == "object" and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        schema["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _closed(schema["items"])
    return schema


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    (crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    return crd


@pytest.fixture(scope="module")
def nad_validator(crd: dict[str, Any]) -> jsonschema.protocols.Validator:
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema = _closed(version["schema"]["openAPIV3Schema"])
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


@pytest.mark.parametrize("slug", sorted(LESSONS))
def test_nads_validate_against_the_crd(slug: str, crd: dict[str, Any], nad_validator: Any) -> None:
    plan = plan_of(slug)
    nads = by_kind(render(plan), "NetworkAttachmentDefinition")
    assert len(nads) == len(plan.networks)
    (version,) = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
    for nad in nads:
        assert nad["apiVersion"] == f"{crd['spec']['group']}/{version}"
        assert nad["kind"] == crd["spec"]["names"]["kind"]
        assert crd["spec"]["scope"] == "Namespaced" and nad["metadata"]["namespace"] == plan.namespace
        errors = sorted(nad_validator.iter_errors(nad), key=str)
        assert not errors, [e.message for e in errors]


def test_the_crd_check_can_fail(triangle: Plan, nad_validator: Any) -> None:
    nad = by_kind(render(triangle), "NetworkAttachmentDefinition")[0]
    as_object = copy.deepcopy(nad)
    as_object["spec"]["config"] = json.loads(nad["spec"]["config"])  # an object where the CRD wants a string
    assert not nad_validator.is_valid(as_object)
    pruned = copy.deepcopy(nad)
    pruned["spec"]["bridge"] = "x"  # would be pruned by the API server
    assert not nad_validator.is_valid(pruned)


# --- the CNI configuration, as the bridge plugin reads it -------------------------------------------------


def read_bridge_conf(config: str) -> dict[str, Any]:
    """Decode like the bridge plugin (json.Unmarshal into NetConf) and apply its own checks."""
    conf = json.loads(config)
    assert isinstance(conf, dict)
    unknown = set(conf) - set(BRIDGE_FIELDS)
    assert not unknown, f"keys the bridge plugin would ignore: {unknown}"
    for key, kind in BRIDGE_FIELDS.items():
        if key in conf:
            assert type(conf[key]) is kind, (key, conf[key])  # Go refuses "true" for a bool
    assert conf["cniVersion"] in CNI_SPEC_VERSIONS
    assert conf["type"] == "bridge"
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", conf["name"])  # libcni's network name rule
    assert 1 <= len(conf["bridge"]) <= 15  # IFNAMSIZ - 1
    assert re.fullmatch(r"[^/\s:]+", conf["bridge"]) and conf["bridge"] not in {".", ".."}
    assert conf["hairpinMode"] is True  # as in the seed: a pod reaches itself through the bridge
    assert conf.get("isGateway", False) is False and conf.get("ipMasq", False) is False  # nothing leaves
    ipam = conf["ipam"]
    assert ipam["type"] == "host-local"
    assert not set(ipam) - set(HOST_LOCAL_FIELDS), set(ipam) - set(HOST_LOCAL_FIELDS)
    for key, kind in HOST_LOCAL_FIELDS.items():
        if key in ipam:
            assert type(ipam[key]) is kind, (key, ipam[key])
    subnet = ipaddress.IPv4Network(ipam["subnet"])  # strict: host-local refuses host bits
    assert subnet.num_addresses - 3 >= 2  # network, gateway (reserved by host-local), broadcast; two ends
    return conf


@pytest.mark.parametrize("slug", sorted(LESSONS))
def test_each_cni_config_reads_as_the_bridge_plugin_would(slug: str) -> None:
    plan = plan_of(slug)
    nads = by_kind(render(plan), "NetworkAttachmentDefinition")
    confs = [read_bridge_conf(nad["spec"]["config"]) for nad in nads]
    for conf, network in zip(confs, plan.networks, strict=True):
        assert conf["cniVersion"] == CNI_VERSION
        assert conf["name"] == network.cni_name
        assert conf["bridge"] == network.bridge
        assert ipaddress.IPv4Network(conf["ipam"]["subnet"]) == network.subnet
    assert len({c["bridge"] for c in confs}) == len(confs)
    assert len({c["name"] for c in confs}) == len(confs)


def test_the_local_backend_gets_the_same_config_with_its_data_dir(triangle: Plan) -> None:
    network = triangle.networks[0]
    local = read_bridge_conf(network.cni_json("/var/lib/x/ipam"))
    assert local["ipam"]["dataDir"] == "/var/lib/x/ipam"
    del local["ipam"]["dataDir"]
    assert local == json.loads(network.cni_json())


def test_the_bridge_check_can_fail() -> None:
    good = json.loads(plan_of("busybox-triangle").networks[0].cni_json())
    for broken in (
        {**good, "hairpinMode": "true"},
        {**good, "hairpin_mode": True},
        {**good, "bridge": "a-very-long-bridge-name"},
        {**good, "ipam": {"type": "host-local", "subnet": "10.0.0.0/31"}},
        {**good, "type": "macvlan"},
    ):
        with pytest.raises((AssertionError, ValueError)):
            read_bridge_conf(json.dumps(broken))


# --- the triangle ------------------------------------------------------------------------------------------


def test_triangle_objects(triangle: Plan) -> None:
    objects = render(triangle)
    assert [o["kind"] for o in objects] == [
        "Namespace",
        *["NetworkAttachmentDefinition"] * 3,
        "NetworkPolicy",
        *["Service"] * 3,
        *["Pod"] * 3,
    ]
    assert objects[0]["metadata"]["name"] == f"lessons-{LIVELESSON}"
    nads = by_kind(objects, "NetworkAttachmentDefinition")
    assert [n["metadata"]["name"] for n in nads] == ["bb1-bb2", "bb2-bb3", "bb3-bb1"]
    subnets = [json.loads(n["spec"]["config"])["ipam"]["subnet"] for n in nads]
    assert subnets == ["10.10.12.0/24", "10.10.23.0/24", "10.10.31.0/24"]
    bridges = [json.loads(n["spec"]["config"])["bridge"] for n in nads]
    assert not {"12-bridge", "23-bridge", "31-bridge"} & set(bridges)  # the seed's fixed names


def test_triangle_pods_have_two_networks_named_net1_net2(triangle: Plan) -> None:
    pods = by_kind(render(triangle), "Pod")
    assert [p["metadata"]["name"] for p in pods] == ["bb1", "bb2", "bb3"]
    expected = {
        "bb1": ["bb1-bb2", "bb3-bb1"],
        "bb2": ["bb1-bb2", "bb2-bb3"],
        "bb3": ["bb2-bb3", "bb3-bb1"],
    }
    for pod in pods:
        networks = json.loads(pod["metadata"]["annotations"][NETWORKS_ANNOTATION])
        assert isinstance(networks, list) and len(networks) == 2
        assert [n["interface"] for n in networks] == ["net1", "net2"]
        assert [n["name"] for n in networks] == expected[pod["metadata"]["name"]]
        assert all(n["namespace"] == triangle.namespace for n in networks)
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "busybox"
        assert container["command"] == ["sleep", "infinity"]
        assert [p["containerPort"] for p in container["ports"]] == [22, 830]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["resources"] == RESOURCES


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_triangle_pods_require_one_node(triangle: Plan) -> None:
    pods = by_kind(render(triangle), "Pod")
    others = by_kind(render(plan_of("busybox-triangle", livelesson="zzzzz99999", session="s2")), "Pod")
    for pod in pods:
        affinity = pod["spec"]["affinity"]
        assert set(affinity) == {"podAffinity"}
        (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert "namespaces" not in term and "namespaceSelector" not in term  # the pod's own namespace
        selector = term["labelSelector"]
        # it selects exactly this live lesson's pods (itself included, so the first pod can be placed)
        assert all(_selects(selector, p["metadata"]["labels"]) for p in pods)
        assert not any(_selects(selector, p["metadata"]["labels"]) for p in others)
        assert _selects({"matchLabels": {"lessons.io/livelesson": LIVELESSON}}, pod["metadata"]["labels"])


def test_network_policy_keeps_traffic_inside(triangle: Plan) -> None:
    (policy,) = by_kind(render(triangle), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["ingress"] == [{"from": [{"podSelector": {}}]}]
    inside, dns = spec["egress"]
    assert inside == {"to": [{"podSelector": {}}]}
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    for peer in dns["to"]:
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    for rule in spec["ingress"] + spec["egress"]:
        for peer in rule.get("from", []) + rule.get("to", []):
            assert "ipBlock" not in peer  # no way out to arbitrary addresses


def test_untrusted_pods_are_unprivileged() -> None:
    pods = by_kind(render(plan_of("busybox-triangle")), "Pod")
    for pod in pods:
        ctx = pod["spec"]["containers"][0]["securityContext"]
        assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert pod["spec"]["automountServiceAccountToken"] is False


def test_yaml_round_trips(triangle: Plan) -> None:
    objects = render(triangle)
    text = to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert text.count("\n---\n") == len(objects) - 1


def test_rendering_is_pure(triangle: Plan) -> None:
    assert render(triangle) == render(plan_of("busybox-triangle"))
    other = render(plan_of("busybox-triangle", livelesson="zzzzz99999"))

    def bridges(objects: list[dict[str, Any]]) -> set[str]:
        return {json.loads(o["spec"]["config"])["bridge"] for o in by_kind(objects, "NetworkAttachmentDefinition")}

    assert len(bridges(render(triangle))) == 3
    assert not bridges(render(triangle)) & bridges(other)


# --- the per-namespace grant (config/k8s/rbac.yaml) -------------------------------------------------------

WORKER = {"kind": "ServiceAccount", "name": "lesson-scheduler-worker", "namespace": "lesson-scheduler"}


@pytest.mark.parametrize(
    ("username", "subject"),
    [
        ("system:serviceaccount:lesson-scheduler:lesson-scheduler-worker", WORKER),
        ("system:serviceaccount:ns:a", {"kind": "ServiceAccount", "name": "a", "namespace": "ns"}),
        ("kube-admin", {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "kube-admin"}),
        # not a well-formed ServiceAccount name: the user of exactly that name, never a ServiceAccount
        ("system:serviceaccount:ns", {"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                      "name": "system:serviceaccount:ns"}),
        ("system:serviceaccount:ns:a:b", {"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                          "name": "system:serviceaccount:ns:a:b"}),
    ],
)  # fmt: skip
def test_the_subject_names_exactly_the_authenticated_user(username: str, subject: dict[str, str]) -> None:
    assert subject_for(username) == subject


def test_a_subject_needs_a_user_name() -> None:
    with pytest.raises(ValueError):
        subject_for("")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_role_binding_grants_the_lesson_role_to_the_worker_in_its_namespace(triangle: Plan, version: str) -> None:
    binding = role_binding(triangle, WORKER)
    kubernetes_validate.validate(binding, version, strict=True)
    assert binding["metadata"]["name"] == ROLE_BINDING
    assert binding["metadata"]["namespace"] == triangle.namespace
    assert binding["metadata"]["labels"] == dict(triangle.labels)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": LESSON_ROLE}
    assert binding["subjects"] == [WORKER]
    # the role it names is the one config/k8s/rbac.yaml defines, and the only one the worker may bind
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert LESSON_ROLE in roles
    binds = [r for r in roles["lesson-scheduler-worker"]["rules"] if "bind" in r["verbs"]]
    assert binds == [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                      "resourceNames": [LESSON_ROLE], "verbs": ["bind"]}]  # fmt: skip
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    assert f"object.roleRef.name == '{LESSON_ROLE}'" in json.dumps(policy)


def test_render_with_a_subject_grants_right_after_the_namespace(triangle: Plan) -> None:
    plain = render(triangle)
    granted = render(triangle, subject=WORKER)
    assert [o["kind"] for o in granted] == ["Namespace", "RoleBinding", *[o["kind"] for o in plain[1:]]]
    assert granted[1] == role_binding(triangle, WORKER)
    assert "RoleBinding" not in {o["kind"] for o in plain}


def test_every_object_carries_the_deployment() -> None:
    lesson = LESSONS["busybox-triangle"]
    plan = make_plan(lesson, LIVELESSON, "s1", instance="lessons", deployment="d1")
    for obj in render(plan, subject=WORKER):
        assert obj["metadata"]["labels"]["lessons.io/deployment"] == "d1", obj["kind"]
