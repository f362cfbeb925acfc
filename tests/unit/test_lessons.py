"""Loading and validation: every refusal of issue 2, each asserting the file, the path inside and the words.

Refusals go through ``load_paths`` on a real file, so "names the file" means the actual path on disk.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from scheduler.core.errors import LessonError, Problem
from scheduler.core.lessons import parse_image, parse_lesson, resolve
from scheduler.services.catalog import load_catalog, load_paths
from tests.support.lessons import CATALOG as CONFIG_LESSONS
from tests.support.lessons import CURRICULUM, REPO

# the NRE Labs lessons that have connections (the rest are endpoints only)
WITH_CONNECTIONS = {
    "ansible-network-automation",
    "jet-extending-junos",
    "jsnapy-network-testing",
    "openconfig-vendor-neutral",
    "pyez-junos-automation",
    "salt-network-automation",
}

HEAD = """\
slug: three
name: Three routers
endpoints:
- name: r1
  image: busybox
- name: r2
  image: busybox
- name: r3
  image: busybox
"""


def with_endpoint_extra(extra: str, index: int = 0) -> str:
    """HEAD with ``extra`` (indented YAML lines) added to endpoint ``index``."""
    lines = HEAD.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith("  image:")][index] + 1
    return "".join([*lines[:at], textwrap.indent(textwrap.dedent(extra), "  "), *lines[at:]])


def refused(tmp_path: Path, text: str | bytes, name: str = "bad.yaml") -> tuple[Path, list[Problem]]:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(LessonError) as info:
        load_paths([path])
    return path, info.value.problems


def assert_problem(problems: list[Problem], source: Path | str, path: str, *words: str) -> Problem:
    """Exactly one problem; it names the file and the path inside, its message holds ``words``."""
    assert len(problems) == 1, [str(p) for p in problems]
    problem = problems[0]
    assert problem.source == str(source)
    assert problem.path == path
    for word in words:
        assert word in problem.message, f"{word!r} not in {problem.message!r}"
    line = str(problem)
    assert "\n" not in line
    assert line.startswith(f"{source}: {path}: " if path else f"{source}: ")
    assert line.endswith(problem.message)
    return problem


# --- the refusals of issue 2 -----------------------------------------------------------------------------

REFUSALS = [
    # (id, document, path inside, words in the message)
    ("malformed-flow", "slug: [a\n", "", ["malformed YAML", "line 2"]),
    ("malformed-mapping", "slug: a: b\n", "", ["malformed YAML", "line 1, column"]),
    ("malformed-tab", "slug: x\nendpoints:\n\t- name: r1\n", "", ["malformed YAML", "line 3"]),
    (
        "duplicate-key",
        "slug: x\nname: y\nendpoints: [{name: a, image: b}]\nname: z\n",
        "",
        ["malformed YAML", "line 4", "the key 'name' appears twice"],
    ),
    ("empty", "", "", ["the file is empty"]),
    ("only-comments", "# nothing here\n\n", "", ["the file is empty"]),
    ("root-list", "- slug: a\n- slug: b\n", "", ["top level must be a mapping", "not a list"]),
    ("root-string", "just words\n", "", ["top level must be a mapping", "not a string"]),
    ("root-int", "42\n", "", ["top level must be a mapping", "not an integer"]),
    (
        "unknown-key",
        HEAD + "conections: []\n",
        "conections",
        ["unknown key 'conections'", "allowed: ", "connections", "endpoints", "readyDelay", "shortDescription"],
    ),
    (
        "unknown-key-endpoint",
        with_endpoint_extra("ports: [22]\n", 1),
        "endpoints[1].ports",
        ["unknown key 'ports'", "allowed: ", "additionalPorts", "presentations", "configurationType"],
    ),
    (
        "unknown-key-connection",
        HEAD + "connections:\n- {a: r1, b: r2, vlan: 10}\n",
        "connections[0].vlan",
        ["unknown key 'vlan'", "(allowed: a, b, subnet)"],
    ),
    (
        "unknown-key-presentation",
        with_endpoint_extra("presentations:\n- {name: cli, port: 22, type: ssh, proto: tcp}\n"),
        "endpoints[0].presentations[0].proto",
        ["unknown key 'proto'", "(allowed: name, port, type)"],
    ),
    (
        "snake-case-key",
        HEAD + "ready_delay: 5\n",
        "ready_delay",
        ["unknown key 'ready_delay'", "readyDelay"],
    ),
    ("type-int", HEAD + "readyDelay: soon\n", "readyDelay", ["expected an integer, got a string"]),
    ("type-str", HEAD.replace("name: Three routers", "name: 12"), "name", ["expected a string, got an integer"]),
    (
        "type-port-string",
        with_endpoint_extra("additionalPorts: ['22']\n", 2),
        "endpoints[2].additionalPorts[0]",
        ["expected an integer, got a string"],
    ),
    (
        "type-port-bool",
        with_endpoint_extra("additionalPorts: [22, true]\n"),
        "endpoints[0].additionalPorts[1]",
        ["expected an integer, got a boolean"],
    ),
    ("type-list", HEAD + "connections: {a: r1, b: r2}\n", "connections", ["expected a list, got a mapping"]),
    (
        "type-mapping",
        HEAD + "connections:\n- r1-r2\n",
        "connections[0]",
        ["expected a mapping, got a string"],
    ),
    (
        "type-subnet",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 12}\n",
        "connections[0].subnet",
        ["expected a string, got an integer"],
    ),
    ("missing-name", HEAD.replace("name: Three routers\n", ""), "name", ["required field is missing"]),
    ("missing-slug", HEAD.replace("slug: three\n", ""), "slug", ["required field is missing"]),
    (
        "missing-image",
        HEAD.replace("  image: busybox\n- name: r2", "- name: r2", 1),
        "endpoints[0].image",
        ["required field is missing"],
    ),
    (
        "missing-connection-end",
        HEAD + "connections:\n- {a: r1}\n",
        "connections[0].b",
        ["required field is missing"],
    ),
    ("no-endpoints-empty", "slug: x\nname: X\nendpoints: []\n", "endpoints", ["at least one endpoint"]),
    ("no-endpoints-absent", "slug: x\nname: X\n", "endpoints", ["required field is missing"]),
    (
        "duplicate-endpoint",
        HEAD + "- name: r2\n  image: other\n",
        "endpoints[3].name",
        ["duplicate endpoint name 'r2'"],
    ),
    (
        "unknown-endpoint",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r1, b: r4}\n",
        "connections[1].b",
        ["endpoint 'r4' is not defined (known: r1, r2, r3)"],
    ),
    (
        "unknown-endpoint-a",
        HEAD + "connections:\n- {a: R1, b: r2}\n",
        "connections[0].a",
        ["endpoint 'R1' is not defined (known: r1, r2, r3)"],
    ),
    (
        "self-connection",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r3, b: r3}\n",
        "connections[1]",
        ["'r3'", "connected to itself"],
    ),
    (
        "subnet-invalid",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r3, subnet: 10.0.0.300/24}\n",
        "connections[1].subnet",
        ["'10.0.0.300/24'", "not an IPv4 CIDR"],
    ),
    (
        "subnet-words",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: lan}\n",
        "connections[0].subnet",
        ["'lan'", "not an IPv4 CIDR"],
    ),
    (
        "subnet-ipv6",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 'fd00::/64'}\n",
        "connections[0].subnet",
        ["not an IPv4 CIDR"],
    ),
    (
        "subnet-no-prefix",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 10.0.0.0}\n",
        "connections[0].subnet",
        ["no prefix length"],
    ),
    (
        "subnet-host-bits",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r3, subnet: 10.0.0.1/24}\n",
        "connections[1].subnet",
        ["'10.0.0.1/24'", "host bits set", "10.0.0.0/24"],
    ),
    (
        "subnet-slash30",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r3, subnet: 10.0.0.0/30}\n",
        "connections[1].subnet",
        ["'10.0.0.0/30'", "smaller than /29"],
    ),
    (
        "subnet-slash32",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 10.0.0.7/32}\n",
        "connections[0].subnet",
        ["smaller than /29"],
    ),
    (
        "subnet-overlap",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 10.0.0.0/16}\n- {a: r2, b: r3, subnet: 10.0.1.0/24}\n",
        "connections[1].subnet",
        ["10.0.1.0/24 overlaps 10.0.0.0/16", "connections[0]", "endpoint 'r2'"],
    ),
    (
        "subnet-same-twice",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 10.0.0.0/24}\n- {a: r3, b: r1, subnet: 10.0.0.0/24}\n",
        "connections[1].subnet",
        ["overlaps", "endpoint 'r1'"],
    ),
    # ranges no link may use (issue 11): each refusal says what the range is
    (
        "subnet-default-route",
        HEAD + "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r3, subnet: 0.0.0.0/0}\n",
        "connections[1].subnet",
        ["0.0.0.0/0 is the default route"],
    ),
    (
        "subnet-this-network",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 0.0.0.0/24}\n",
        "connections[0].subnet",
        ["0.0.0.0/24 is inside 0.0.0.0/8", '"this network"'],
    ),
    (
        "subnet-loopback",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 127.0.0.0/8}\n",
        "connections[0].subnet",
        ["127.0.0.0/8 is inside 127.0.0.0/8", "loopback"],
    ),
    (
        "subnet-loopback-part",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 127.0.1.0/24}\n",
        "connections[0].subnet",
        ["127.0.1.0/24 is inside 127.0.0.0/8", "loopback"],
    ),
    (
        "subnet-containing-loopback",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 126.0.0.0/7}\n",
        "connections[0].subnet",
        ["126.0.0.0/7 overlaps 127.0.0.0/8", "loopback"],
    ),
    (
        "subnet-link-local",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 169.254.10.0/24}\n",
        "connections[0].subnet",
        ["169.254.10.0/24 is inside 169.254.0.0/16", "link-local"],
    ),
    (
        "subnet-containing-link-local",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 169.0.0.0/8}\n",
        "connections[0].subnet",
        ["169.0.0.0/8 overlaps 169.254.0.0/16", "link-local"],
    ),
    (
        "subnet-multicast",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 224.0.0.0/24}\n",
        "connections[0].subnet",
        ["224.0.0.0/24 is inside 224.0.0.0/4", "multicast"],
    ),
    (
        "subnet-multicast-high",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 239.255.255.0/24}\n",
        "connections[0].subnet",
        ["224.0.0.0/4", "multicast"],
    ),
    (
        "subnet-reserved",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 240.0.0.0/24}\n",
        "connections[0].subnet",
        ["240.0.0.0/24 is inside 240.0.0.0/4", "reserved"],
    ),
    (
        "subnet-broadcast",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 255.255.255.248/29}\n",
        "connections[0].subnet",
        ["240.0.0.0/4", "broadcast"],
    ),
    (
        "subnet-half-the-internet",
        HEAD + "connections:\n- {a: r1, b: r2, subnet: 128.0.0.0/1}\n",
        "connections[0].subnet",
        ["128.0.0.0/1 overlaps 169.254.0.0/16", "link-local"],
    ),
    (
        "name-upper",
        HEAD.replace("name: r2", "name: R2"),
        "endpoints[1].name",
        ["'R2'", "not a DNS-1123 label"],
    ),
    (
        "name-too-long",
        HEAD.replace("name: r2", "name: " + "r" * 64),
        "endpoints[1].name",
        ["64 characters", "at most 63"],
    ),
    (
        "name-shell",
        HEAD.replace("name: r2", "name: 'bb1;rm'"),
        "endpoints[1].name",
        ["'bb1;rm'", "not a DNS-1123 label"],
    ),
    (
        "name-subshell",
        HEAD.replace("name: r3", "name: '$(reboot)'"),
        "endpoints[2].name",
        ["not a DNS-1123 label"],
    ),
    (
        "name-leading-hyphen",
        HEAD.replace("name: r1", "name: -r1"),
        "endpoints[0].name",
        ["not a DNS-1123 label"],
    ),
    ("name-dot", HEAD.replace("name: r1", "name: r1.lab"), "endpoints[0].name", ["not a DNS-1123 label"]),
    ("slug-upper", HEAD.replace("slug: three", "slug: Three"), "slug", ["'Three'", "not a DNS-1123 label"]),
    (
        "slug-slash",
        HEAD.replace("slug: three", "slug: ../three"),
        "slug",
        ["not a DNS-1123 label"],
    ),
    (
        "presentation-name",
        with_endpoint_extra("presentations:\n- {name: 'CLI shell', port: 22, type: ssh}\n"),
        "endpoints[0].presentations[0].name",
        ["not a DNS-1123 label"],
    ),
    (
        "port-zero",
        with_endpoint_extra("additionalPorts: [22, 0]\n", 1),
        "endpoints[1].additionalPorts[1]",
        ["port 0 is outside 1-65535"],
    ),
    (
        "port-negative",
        with_endpoint_extra("additionalPorts: [-22]\n"),
        "endpoints[0].additionalPorts[0]",
        ["port -22 is outside 1-65535"],
    ),
    (
        "port-too-big",
        with_endpoint_extra("presentations:\n- {name: web, port: 65536, type: http}\n"),
        "endpoints[0].presentations[0].port",
        ["port 65536 is outside 1-65535"],
    ),
    (
        "presentation-type",
        with_endpoint_extra("presentations:\n- {name: cli, port: 23, type: telnet}\n", 2),
        "endpoints[2].presentations[0].type",
        ["'telnet' is not one of", "'ssh'", "'http'"],
    ),
    ("ready-delay-negative", HEAD + "readyDelay: -1\n", "readyDelay", ["greater than or equal to 0"]),
]


@pytest.mark.parametrize(("text", "path", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal_names_file_path_and_words(tmp_path: Path, text: str, path: str, words: list[str]) -> None:
    file, problems = refused(tmp_path, text)
    assert_problem(problems, file, path, *words)


@pytest.mark.parametrize(("text", "path", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_parse_lesson_uses_the_given_source(text: str, path: str, words: list[str]) -> None:
    with pytest.raises(LessonError) as info:
        parse_lesson(text, "somewhere/lesson.yaml")
    assert all(p.source == "somewhere/lesson.yaml" for p in info.value.problems)
    assert str(info.value).startswith("somewhere/lesson.yaml: ")


def test_undecodable_bytes_are_refused(tmp_path: Path) -> None:
    file, problems = refused(tmp_path, b"slug: \xff\xfe\x00 broken\n")
    assert len(problems) == 1
    assert problems[0].source == str(file)
    assert "malformed YAML" in problems[0].message or "not a text file" in problems[0].message


def test_every_problem_of_one_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        HEAD.replace("name: r3", "name: R3")
        + "readyDelay: soon\n"
        + "connections:\n- {a: r1, b: r9}\n- {a: r1, b: r2, subnet: 10.0.0.1/24}\n"
    )
    file, problems = refused(tmp_path, text)
    where = {p.path: p.message for p in problems}
    # structure first (consistency needs a model), but every structural problem at once
    assert set(where) == {"endpoints[2].name", "readyDelay", "connections[1].subnet"}
    assert all(p.source == str(file) for p in problems)

    # with the structure fixed, every consistency problem shows up together
    text = HEAD + "connections:\n- {a: r1, b: r9}\n- {a: r2, b: r2}\n- {a: r5, b: r1}\n"
    file, problems = refused(tmp_path, text, "consistency.yaml")
    assert [p.path for p in problems] == ["connections[0].b", "connections[1]", "connections[2].a"]


def test_an_endpoint_with_a_problem_is_not_also_reported_as_no_endpoints(tmp_path: Path) -> None:
    file, problems = refused(tmp_path, "slug: x\nname: X\nendpoints:\n- name: r1\n")
    assert_problem(problems, file, "endpoints[0].image", "required field is missing")
    file, problems = refused(tmp_path, "slug: x\nname: X\nendpoints: [r1]\n", "other.yaml")
    assert_problem(problems, file, "endpoints[0]", "expected a mapping, got a string")


# --- what is accepted at the edges -------------------------------------------------------------------------


def test_edges_that_are_accepted() -> None:
    text = (
        HEAD.replace("name: r2", "name: " + "r" * 63)
        + "connections:\n"
        + "- {a: r1, b: "
        + "r" * 63
        + ", subnet: 10.0.0.0/29}\n"
        + "- {a: r3, b: r1, subnet: 10.0.0.8/29}\n"
        + "- {a: r3, b: r1}\n"  # a parallel link without a subnet
    )
    lesson = parse_lesson(text)
    assert [c.subnet for c in lesson.connections] == ["10.0.0.0/29", "10.0.0.8/29", None]
    assert lesson.endpoints[1].name == "r" * 63
    ports = parse_lesson(with_endpoint_extra("additionalPorts: [1, 65535]\n"))
    assert ports.endpoints[0].additional_ports == (1, 65535)


@pytest.mark.parametrize(
    "subnet",
    ["8.8.8.0/24", "1.0.0.0/8", "100.64.0.0/29", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
     "172.16.0.0/12", "192.168.0.0/16", "10.0.0.0/8", "126.0.0.0/8", "128.0.0.0/3", "223.255.255.248/29"],
)  # fmt: skip
def test_public_and_private_unicast_subnets_are_accepted(subnet: str) -> None:
    """Labs use public ranges on purpose (an ISP lab, documentation ranges); only special ranges are refused."""
    lesson = parse_lesson(HEAD + f"connections:\n- {{a: r1, b: r2, subnet: {subnet}}}\n")
    assert lesson.connections[0].subnet == subnet


def test_the_same_subnet_on_disjoint_endpoints_is_accepted() -> None:
    text = HEAD + "- name: r4\n  image: busybox\nconnections:\n"
    text += "- {a: r1, b: r2, subnet: 10.0.0.0/24}\n- {a: r3, b: r4, subnet: 10.0.0.0/24}\n"
    lesson = parse_lesson(text)
    assert [c.subnet for c in lesson.connections] == ["10.0.0.0/24", "10.0.0.0/24"]


def test_ports_are_presentations_first_without_repeats() -> None:
    lesson = parse_lesson(
        with_endpoint_extra(
            "additionalPorts: [830, 22, 8080]\npresentations:\n- {name: cli, port: 22, type: ssh}\n"
            "- {name: web, port: 80, type: http}\n"
        )
    )
    assert lesson.endpoints[0].ports == (22, 80, 830, 8080)


def test_antidote_fields_and_additions_are_accepted() -> None:
    text = textwrap.dedent(
        """\
        slug: full
        name: Every field
        description: d
        shortDescription: s
        category: tools
        tier: prod
        prereqs: [linux-basics]
        tags: [a, b]
        collection: c
        authors: [{name: A, link: https://example.com}]
        diagram: https://example.com/d.png
        video: https://example.com/v
        readyDelay: 20
        stages:
        - {description: one, guideType: markdown, stageVideo: https://example.com/s}
        endpoints:
        - name: linux
          image: utility
          configurationType: python
          additionalPorts: [830]
          presentations: [{name: cli, port: 22, type: ssh}]
          command: [sleep]
          args: [infinity]
        """
    )
    lesson = parse_lesson(text)
    assert lesson.ready_delay == 20
    assert lesson.endpoints[0].command == ("sleep",)
    assert lesson.endpoints[0].args == ("infinity",)
    assert lesson.stages[0].guide_type == "markdown"
    assert lesson.authors[0].link == "https://example.com"


def test_image_meta_is_validated_too() -> None:
    image = parse_image("slug: utility\nflavor: trusted\nenableForwarding: true\nsshUser: antidote\n")
    assert (image.slug, image.flavor, image.enable_forwarding) == ("utility", "trusted", True)
    with pytest.raises(LessonError) as info:
        parse_image("slug: utility\nflavour: trusted\n", "images/utility/image.meta.yaml")
    assert_problem(info.value.problems, "images/utility/image.meta.yaml", "flavour", "unknown key 'flavour'")
    with pytest.raises(LessonError) as info:
        parse_image("slug: utility\nflavor: sometimes\n", "i.yaml")
    assert_problem(info.value.problems, "i.yaml", "flavor", "'sometimes' is not one of")


# --- catalogs --------------------------------------------------------------------------------------------


def antidote(tmp_path: Path, lessons: dict[str, str], images: dict[str, str] | None) -> Path:
    root = tmp_path / "catalog"
    for slug, text in lessons.items():
        (root / "lessons" / slug).mkdir(parents=True)
        (root / "lessons" / slug / "lesson.meta.yaml").write_text(text)
    if images is not None:
        (root / "images").mkdir(parents=True)
        for slug, text in images.items():
            (root / "images" / slug).mkdir()
            (root / "images" / slug / "image.meta.yaml").write_text(text)
    return root


def lesson_using(slug: str, image: str, tier: str = "prod") -> str:
    return f"slug: {slug}\nname: {slug}\ntier: {tier}\nendpoints:\n- {{name: linux, image: utility}}\n" + (
        f"- {{name: vr, image: {image}}}\n"
    )


def test_image_slug_missing_from_catalog_is_refused(tmp_path: Path) -> None:
    root = antidote(
        tmp_path,
        {"one": lesson_using("one", "vqfx")},
        {"utility": "slug: utility\n", "crpd": "slug: crpd\nflavor: trusted\n"},
    )
    with pytest.raises(LessonError) as info:
        load_catalog(root)
    assert_problem(
        info.value.problems,
        root / "lessons" / "one" / "lesson.meta.yaml",
        "endpoints[1].image",
        "image 'vqfx' is not in the catalog (known: crpd, utility)",
    )


def test_an_empty_images_folder_still_checks_slugs(tmp_path: Path) -> None:
    root = antidote(tmp_path, {"one": lesson_using("one", "utility")}, {})
    with pytest.raises(LessonError) as info:
        load_catalog(root)
    assert [p.path for p in info.value.problems] == ["endpoints[0].image", "endpoints[1].image"]
    assert all("(known: none)" in p.message for p in info.value.problems)


def test_preview_tier_may_use_images_the_catalog_lacks(tmp_path: Path) -> None:
    root = antidote(tmp_path, {"one": lesson_using("one", "vqfx", tier="ptr")}, {"utility": "slug: utility\n"})
    lesson = load_catalog(root).lessons["one"]
    assert [e.image for e in lesson.endpoints] == ["antidotelabs/utility", "antidotelabs/vqfx"]


def test_catalog_images_resolve_flavor_and_registry(tmp_path: Path) -> None:
    root = antidote(
        tmp_path,
        {"one": lesson_using("one", "crpd")},
        {"utility": "slug: utility\n", "crpd": "slug: crpd\nflavor: trusted\nenableForwarding: true\n"},
    )
    lesson = load_catalog(root, image_registry="registry.example/labs").lessons["one"]
    linux, vr = lesson.endpoints
    assert (linux.image, linux.flavor, linux.forwarding) == ("registry.example/labs/utility", "untrusted", False)
    assert (vr.image, vr.flavor, vr.forwarding) == ("registry.example/labs/crpd", "trusted", True)


def test_without_images_folder_an_image_is_a_reference(tmp_path: Path) -> None:
    root = antidote(tmp_path, {"one": lesson_using("one", "docker.io/library/alpine:3.20")}, None)
    lesson = load_catalog(root).lessons["one"]
    assert [e.image for e in lesson.endpoints] == ["utility", "docker.io/library/alpine:3.20"]
    assert resolve(lesson.lesson, "x", None).endpoints == lesson.endpoints


def test_a_single_lesson_meta_file_uses_its_catalog_images(tmp_path: Path) -> None:
    root = antidote(tmp_path, {"one": lesson_using("one", "vqfx")}, {"utility": "slug: utility\n"})
    file = root / "lessons" / "one" / "lesson.meta.yaml"
    with pytest.raises(LessonError) as info:
        load_paths([file])
    assert_problem(info.value.problems, file, "endpoints[1].image", "'vqfx' is not in the catalog")


def test_a_bad_image_meta_names_its_file(tmp_path: Path) -> None:
    root = antidote(tmp_path, {"one": lesson_using("one", "utility")}, {"utility": "slug: Utility\n"})
    with pytest.raises(LessonError) as info:
        load_catalog(root)
    image_problems = [p for p in info.value.problems if p.source.endswith("image.meta.yaml")]
    assert len(image_problems) == 1
    assert image_problems[0].source == str(root / "images" / "utility" / "image.meta.yaml")
    assert image_problems[0].path == "slug"
    assert "not a DNS-1123 label" in image_problems[0].message


def test_missing_path_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "lesson.yaml"
    with pytest.raises(LessonError) as info:
        load_paths([missing])
    assert_problem(info.value.problems, missing, "", "no such file or directory")


def test_folder_without_lessons_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a lesson")
    with pytest.raises(LessonError) as info:
        load_catalog(tmp_path)
    assert_problem(info.value.problems, tmp_path, "", "no lessons here")


def test_antidote_layout_without_lessons_is_refused(tmp_path: Path) -> None:
    root = antidote(tmp_path, {}, {"utility": "slug: utility\n"})
    (root / "lessons").mkdir()
    with pytest.raises(LessonError) as info:
        load_catalog(root)
    assert_problem(info.value.problems, root, "", "no lessons here")


def test_problems_of_every_file_are_collected(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD.replace("slug: three", "slug: a") + "bogus: 1\n")
    (tmp_path / "b.yaml").write_text("")
    (tmp_path / "c.yaml").write_text(HEAD.replace("slug: three", "slug: c"))
    with pytest.raises(LessonError) as info:
        load_paths([tmp_path, tmp_path / "missing.yaml"])
    assert [(Path(p.source).name, p.path) for p in info.value.problems] == [
        ("a.yaml", "bogus"),
        ("b.yaml", ""),
        ("missing.yaml", ""),
    ]
    assert len(str(info.value).splitlines()) == 3


def test_a_slug_used_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD)
    (tmp_path / "b.yaml").write_text(HEAD)
    with pytest.raises(LessonError) as info:
        load_catalog(tmp_path)
    assert_problem(info.value.problems, tmp_path / "b.yaml", "slug", "'three' is already used by", "a.yaml")


def test_a_huge_file_is_refused_without_parsing(tmp_path: Path) -> None:
    file, problems = refused(tmp_path, "# " + "x" * (300 * 1024) + "\n")
    assert_problem(problems, file, "", "bytes; the limit is")


# --- the real curricula ------------------------------------------------------------------------------------


def test_all_17_nre_labs_lessons_load() -> None:
    catalog = load_catalog(CURRICULUM)
    on_disk = sorted(p.parent.name for p in (CURRICULUM / "lessons").glob("*/lesson.meta.yaml"))
    assert len(on_disk) == 17
    assert sorted(catalog.lessons) == on_disk
    assert {slug for slug, lesson in catalog.lessons.items() if lesson.connections} == WITH_CONNECTIONS


@pytest.mark.parametrize("slug", sorted(p.name for p in (CURRICULUM / "lessons").iterdir() if p.is_dir()))
def test_curriculum_lesson_loads_unchanged(slug: str) -> None:
    """Nothing the author wrote is dropped or altered: the model dumps back to the same document."""
    file = CURRICULUM / "lessons" / slug / "lesson.meta.yaml"
    raw = yaml.safe_load(file.read_text())
    lesson = load_paths([file]).lessons[slug]
    dumped = json.loads(lesson.lesson.model_dump_json(by_alias=True, exclude_unset=True))
    assert dumped == json.loads(json.dumps(raw))
    assert len(lesson.endpoints) == len(raw["endpoints"])
    assert len(lesson.connections) == len(raw.get("connections") or [])
    assert lesson.source == str(file)


def test_config_lessons() -> None:
    catalog = load_catalog(CONFIG_LESSONS)
    assert sorted(catalog.lessons) == ["busybox-hub", "busybox-line", "busybox-triangle"]
    triangle = catalog.lessons["busybox-triangle"]
    assert [e.name for e in triangle.endpoints] == ["bb1", "bb2", "bb3"]
    assert [(c.a, c.b, c.subnet) for c in triangle.connections] == [
        ("bb1", "bb2", "10.10.12.0/24"),
        ("bb2", "bb3", "10.10.23.0/24"),
        ("bb3", "bb1", "10.10.31.0/24"),
    ]
    assert len(catalog.lessons["busybox-line"].connections) == 3
    hub = catalog.lessons["busybox-hub"]
    assert all(c.a == "hub" for c in hub.connections)
    assert len(hub.connections) == len(hub.endpoints) - 1


def test_odd_keys_stay_on_one_line(tmp_path: Path) -> None:
    file, problems = refused(tmp_path, HEAD + '"two\\nlines": 1\n')
    problem = assert_problem(problems, file, "['two\\nlines']", "unknown key 'two\\nlines'")
    assert "\n" not in problem.path
    file, problems = refused(tmp_path, with_endpoint_extra('"image tag": latest\n'), "space.yaml")
    assert_problem(problems, file, "endpoints[0]['image tag']", "unknown key 'image tag'")
    file, problems = refused(tmp_path, HEAD + '"ends\\n": 1\n', "trailing.yaml")
    assert_problem(problems, file, "['ends\\n']", "unknown key 'ends\\n'")


@pytest.mark.parametrize(
    "text",
    ["a: !!int ''", "a: !!float +", "a: !!bool ''", "a: !!timestamp x", "!!int", "a: !!int 0x", "a: " + "1" * 5000],
)
def test_values_yaml_cannot_construct_are_malformed_yaml(tmp_path: Path, text: str) -> None:
    """PyYAML's own constructors raise IndexError, KeyError, AttributeError or ValueError on these."""
    file, problems = refused(tmp_path, text)
    assert_problem(problems, file, "", "malformed YAML: a value cannot be read")


def test_vendored_curriculum_is_the_shared_one_unchanged() -> None:
    """tests/data holds an unchanged copy (CI clones the repository alone): every file matches the SHA-256
    recorded from ../shared/antidote-curriculum when it was copied, and the live ../shared copy when present."""
    import hashlib

    lines = (CURRICULUM.parent / "antidote-curriculum.sha256").read_text().splitlines()
    manifest = {name: digest for digest, name in (line.split(maxsplit=1) for line in lines)}
    ours = {
        str(p.relative_to(CURRICULUM.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in CURRICULUM.rglob("*")
        if p.is_file()
    }
    assert ours == manifest
    shared = REPO.parent / "shared" / "antidote-curriculum"
    if shared.is_dir():
        theirs = {
            str(p.relative_to(shared.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in shared.rglob("*")
            if p.is_file()
        }
        assert ours == theirs
