"""The seed's main network and names, as planned and rendered (issue 16): eth0 on every pod, a hosts file of
the lesson's names, one headless Service per endpoint, presentations in the record. Pure; the real packets
are in tests/integration/test_names.py and tests/k8s/test_names_k8s.py."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from pydantic import ValidationError

from scheduler.core.lessons import parse_lesson, resolve
from scheduler.core.plan import MAIN_INTERFACE, MAIN_NETWORK, make_plan
from scheduler.core.render import pods, render, services
from scheduler.settings import Settings
from tests.support.lessons import triangle

LESSON = """\
slug: names
name: Names
description: d
shortDescription: s
category: fundamentals
tier: prod
endpoints:
- name: vqfx1
  image: busybox
  presentations: [{name: cli, type: ssh, port: 22}, {name: web, type: http, port: 8080}]
  additionalPorts: [830, 22]
- name: linux1
  image: busybox
connections:
- {a: vqfx1, b: linux1, subnet: 10.250.0.0/24}
"""


def names_lesson() -> Any:
    return resolve(parse_lesson(LESSON, "names.yaml"), "names.yaml", None)


def test_every_pod_has_eth0_first_with_an_address_of_the_lesson_main_network() -> None:
    plan = make_plan(triangle(), "abcde12345", "s1", instance="lessons")
    assert plan.main is not None and plan.main.nad == MAIN_NETWORK
    assert plan.main.subnet == ipaddress.IPv4Network("10.250.0.0/24")
    assert [p.main_address for p in plan.pods] == ["10.250.0.2/24", "10.250.0.3/24", "10.250.0.4/24"]
    for pod in plan.pods:
        assert [a.name for a in pod.attachments] == [MAIN_INTERFACE, *[i.name for i in pod.interfaces]]
        config = plan.cni_config(pod, pod.attachments[0])
        assert config["bridge"] == plan.main.bridge and config["isGateway"] is False
        assert config["ipam"] == {"type": "static", "addresses": [{"address": pod.main_address}]}
    # its bridge and CNI name are the live lesson's own, never a link's
    assert plan.main.bridge not in {n.bridge for n in plan.networks}
    other = make_plan(triangle(), "zyxwv54321", "s1", instance="lessons")
    assert other.main is not None and other.main.bridge != plan.main.bridge
    assert other.main.cni_name != plan.main.cni_name


def test_the_main_subnet_avoids_the_lesson_links() -> None:
    # the lesson's link takes 10.250.0.0/24 itself: eth0 moves to the next /24 of the pool
    plan = make_plan(names_lesson(), "abcde12345", "s1", instance="lessons")
    assert plan.main is not None and plan.main.subnet == ipaddress.IPv4Network("10.250.1.0/24")
    assert not any(plan.main.subnet.overlaps(n.subnet) for n in plan.networks)


def test_the_hosts_file_names_the_lesson_endpoints_and_nothing_else() -> None:
    plan = make_plan(triangle(), "abcde12345", "s1", instance="lessons")
    entries = [line.split("\t") for line in plan.hosts().splitlines()]
    assert ["10.250.0.2", "bb1"] in entries and ["10.250.0.4", "bb3"] in entries
    assert {name for _, name in entries} == {"localhost", "localhost ip6-localhost ip6-loopback", "bb1", "bb2", "bb3"}


def test_checks_by_name_are_planned_unless_switched_off() -> None:
    on = make_plan(triangle(), "abcde12345", "s1", instance="lessons")
    off = make_plan(triangle(), "abcde12345", "s1", instance="lessons", names=False)
    assert [c for c in on.checks if not c.by_name] == list(off.checks)
    assert not any(c.by_name for c in off.checks)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"main_pool": "10.96.0.0/16"}, "LESSON_MAIN_POOL 10.96.0.0/16 overlaps the reserved 10.96.0.0/12"),
        ({"main_pool": "10.10.0.0/20"}, "overlaps LESSON_SUBNET_POOL 10.10.0.0/16"),
        ({"main_pool": "10.250.0.0/25"}, "must be /24 or larger"),
    ],
)
def test_a_main_pool_that_would_clash_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**env)  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_one_headless_service_per_endpoint_with_its_presentations_and_ports() -> None:
    plan = make_plan(names_lesson(), "abcde12345", "s1", instance="lessons")
    by_name = {s["metadata"]["name"]: s for s in services(plan)}
    assert set(by_name) == {"vqfx1", "linux1"}
    pod_labels = {p["metadata"]["name"]: p["metadata"]["labels"] for p in pods(plan)}
    for name, service in by_name.items():
        spec = service["spec"]
        assert service["metadata"]["namespace"] == plan.namespace
        assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
        # the selector picks exactly its endpoint's pod
        assert spec["selector"].items() <= pod_labels[name].items()
        assert not spec["selector"].items() <= pod_labels[({"vqfx1", "linux1"} - {name}).pop()].items()
    ports = by_name["vqfx1"]["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in ports] == [
        ("ssh-22", 22, 22),
        ("http-8080", 8080, 8080),
        ("port-830", 830, 830),
    ]
    assert "ports" not in by_name["linux1"]["spec"]  # nothing declared: a name alone


def test_each_pod_is_called_by_its_endpoint_name_and_services_come_before_pods() -> None:
    plan = make_plan(triangle(), "abcde12345", "s1", instance="lessons")
    assert [p["spec"]["hostname"] for p in pods(plan)] == ["bb1", "bb2", "bb3"]
    kinds = [o["kind"] for o in render(plan)]
    assert kinds.index("Service") < kinds.index("Pod")
    # eth0 is the cluster's default network: never a NAD nor in the Multus annotation
    for pod in pods(plan):
        assert MAIN_NETWORK not in {
            n["name"] for n in json.loads(pod["metadata"]["annotations"].get("k8s.v1.cni.cncf.io/networks", "[]"))
        }
