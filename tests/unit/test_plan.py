"""Property tests of the plan over generated valid lessons, and a fuzz of the lesson parser.

Lessons are generated as documents (dicts dumped to YAML) and go through ``parse_lesson`` and ``resolve``,
the way a file would, so the generator also checks that every valid lesson is accepted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import string
import subprocess
import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler.core.checks import is_dns1123_label
from scheduler.core.errors import LessonError
from scheduler.core.lessons import Lesson, ResolvedLesson, parse_lesson, resolve
from scheduler.core.plan import Plan, make_plan
from scheduler.services.catalog import load_catalog
from tests.support.lessons import REPO

POOL = "10.10.0.0/16"

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# what the CNI spec allows as a network name (libcni validates it)
CNI_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
IFNAMSIZ = 16  # Linux interface names: 15 characters and the NUL

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies -----------------------------------------------------------------------------------------


def _label_from(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=min_size, max_size=max_size).filter(is_dns1123_label)


# a small alphabet with '-' makes "a-b" + "c" vs "a" + "b-c" likely; long names push every limit
names = st.one_of(
    _label_from("ab-", 1, 3),
    _label_from("ab1-", 1, 5),
    _label_from(string.ascii_lowercase + string.digits + "-", 1, 63),
    _label_from("z", 63, 63),
)
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=10, max_size=10)
instances = _label_from(string.ascii_lowercase + string.digits + "-", 1, 40)
sessions = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")


@st.composite
def lesson_documents(draw: st.DrawFn, max_endpoints: int = 8, max_connections: int = 12) -> dict[str, Any]:
    endpoint_names = draw(st.lists(names, min_size=1, max_size=max_endpoints, unique=True))
    endpoints = []
    for name in endpoint_names:
        ep: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["busybox", "alpine:3.20"]))}
        ports = draw(st.lists(st.integers(1, 65535), max_size=3))
        if ports:
            ep["additionalPorts"] = ports
        if draw(st.booleans()):
            ep["presentations"] = [{"name": "cli", "port": draw(st.integers(1, 65535)), "type": "ssh"}]
        endpoints.append(ep)
    connections = []
    if len(endpoint_names) >= 2:
        pairs = st.tuples(st.sampled_from(endpoint_names), st.sampled_from(endpoint_names)).filter(
            lambda p: p[0] != p[1]
        )
        for k, (a, b) in enumerate(draw(st.lists(pairs, max_size=max_connections))):
            conn: dict[str, Any] = {"a": a, "b": b}
            kind = draw(st.sampled_from(["pool", "pool", "outside", "inside"]))
            # explicit subnets never overlap one another: each sits in its own /24
            if kind == "outside":
                conn["subnet"] = f"172.16.{k}.0/{draw(st.integers(24, 29))}"
            elif kind == "inside":  # inside the pool: allocation must step around it
                conn["subnet"] = f"10.10.{draw(st.integers(0, 20)) * 13 % 256}.0/24"
            connections.append(conn)
        # two "inside" subnets may have hit the same /24; keep the first
        seen: set[str] = set()
        for conn in connections:
            if "subnet" in conn and conn["subnet"] in seen:
                del conn["subnet"]
            seen.add(conn.get("subnet", ""))
    doc: dict[str, Any] = {"slug": draw(names), "name": "Generated", "endpoints": endpoints}
    if connections:
        doc["connections"] = connections
    if draw(st.booleans()):
        doc["readyDelay"] = draw(st.integers(0, 3600))
    return doc


class _NoAliases(yaml.SafeDumper):
    """Writes a repeated object out again instead of as an anchor and alias (lesson files refuse those)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_lesson(doc: dict[str, Any]) -> ResolvedLesson:
    lesson = parse_lesson(yaml.dump(doc, Dumper=_NoAliases), "generated.yaml")
    return resolve(lesson, "generated.yaml", None)


lessons = lesson_documents().map(to_lesson)


def all_plan_names(plan: Plan) -> dict[str, list[str]]:
    return {
        "bridge": [n.bridge for n in plan.networks],
        "cni": [n.cni_name for n in plan.networks],
        "nad": [n.nad for n in plan.networks],
        "pod": [p.name for p in plan.pods],
        "netns": [p.netns for p in plan.pods],
    }


# --- names: limits and uniqueness -----------------------------------------------------------------------


@PROPERTY
@given(lesson=lessons, livelesson=ids, session=sessions, instance=instances)
def test_every_name_is_within_its_limit(lesson: ResolvedLesson, livelesson: str, session: str, instance: str) -> None:
    plan = make_plan(lesson, livelesson, session, instance=instance, subnet_pool=POOL)
    assert is_dns1123_label(plan.namespace)
    assert plan.namespace == f"{instance}-{livelesson}"
    for n in plan.networks:
        assert 1 <= len(n.bridge) < IFNAMSIZ
        assert re.fullmatch(r"[a-z0-9]+", n.bridge), n.bridge  # no '/', no space, not '.' or '..'
        assert 1 <= len(n.cni_name) <= 15
        assert CNI_NAME.match(n.cni_name)
        assert len(n.nad) <= 253
        assert DNS1123_SUBDOMAIN.match(n.nad), n.nad
    for p in plan.pods:
        assert is_dns1123_label(p.name)
        assert len(p.netns) <= 255  # a file under /run/netns
        assert re.fullmatch(r"[a-z0-9][-a-z0-9]*", p.netns)
        assert p.netns.startswith(plan.namespace + "-")  # GC finds it by the instance's prefix
        for itf in p.interfaces:
            assert len(itf.name) < IFNAMSIZ
        for key, value in p.labels.items():
            prefix, _, name = key.rpartition("/")
            assert DNS1123_SUBDOMAIN.match(prefix) and len(prefix) <= 253
            assert LABEL_NAME.match(name) and len(name) <= 63
            assert LABEL_VALUE.match(value) and len(value) <= 63, (key, value)
    assert plan.node_netns and "/" not in plan.node_netns


@PROPERTY
@given(lesson=lessons, livelesson=ids, instance=instances)
def test_every_name_is_unique_within_a_plan(lesson: ResolvedLesson, livelesson: str, instance: str) -> None:
    plan = make_plan(lesson, livelesson, "s1", instance=instance, subnet_pool=POOL)
    for kind, values in all_plan_names(plan).items():
        assert len(values) == len(set(values)), (kind, values)
    for p in plan.pods:
        assert len({i.name for i in p.interfaces}) == len(p.interfaces)
    # one pod per endpoint, in endpoint order
    assert [p.endpoint for p in plan.pods] == [e.name for e in lesson.endpoints]


# names whose "<a>-<b>" joins meet each other and the parallel-link suffix "-2"
HYPHENATED = ["a", "b", "c", "a-b", "b-c", "c-2"]


@st.composite
def hyphenated_documents(draw: st.DrawFn) -> dict[str, Any]:
    pairs = st.tuples(st.sampled_from(HYPHENATED), st.sampled_from(HYPHENATED)).filter(lambda p: p[0] != p[1])
    return {
        "slug": "hyphens",
        "name": "Hyphens",
        "endpoints": [{"name": n, "image": "busybox"} for n in HYPHENATED],
        "connections": [{"a": a, "b": b} for a, b in draw(st.lists(pairs, min_size=2, max_size=20))],
    }


@PROPERTY
@given(doc=hyphenated_documents())
def test_nad_names_are_unique_when_names_contain_hyphens(doc: dict[str, Any]) -> None:
    plan = make_plan(to_lesson(doc), "abcdefghij", "s1", instance="lessons")
    nads = [n.nad for n in plan.networks]
    assert len(nads) == len(set(nads)), nads


def test_nad_names_stay_unique_when_endpoint_names_contain_hyphens() -> None:
    """ "a-b" + "c" and "a" + "b-c" both read "a-b-c"; and a parallel link's "-2" can meet a real name."""
    doc = {
        "slug": "hyphens",
        "name": "Hyphens",
        "endpoints": [{"name": n, "image": "busybox"} for n in ["a", "b", "c", "a-b", "b-c", "c-2"]],
        "connections": [
            {"a": "a-b", "b": "c"},
            {"a": "a", "b": "b-c"},
            {"a": "b", "b": "c"},
            {"a": "b", "b": "c"},
            {"a": "b", "b": "c-2"},
        ],
    }
    plan = make_plan(to_lesson(doc), "abcdefghij", "s1", instance="lessons")
    nads = [n.nad for n in plan.networks]
    assert len(set(nads)) == 5, nads
    assert nads[0] == "a-b-c"
    assert nads[2] == "b-c"
    assert nads[3].startswith("b-c-")  # the parallel link
    # every interface points at the network of its own connection
    for n in plan.networks:
        for end, peer in ((n.a, n.b), (n.b, n.a)):
            assert [i.peer for i in plan.pod(end).interfaces if i.network == n.nad] == [peer]


# --- determinism and isolation ---------------------------------------------------------------------------


@PROPERTY
@given(doc=lesson_documents(), livelesson=ids, session=sessions, instance=instances)
def test_the_plan_is_deterministic(doc: dict[str, Any], livelesson: str, session: str, instance: str) -> None:
    first = make_plan(to_lesson(doc), livelesson, session, instance=instance, subnet_pool=POOL)
    again = make_plan(to_lesson(doc), livelesson, session, instance=instance, subnet_pool=POOL)
    assert first == again
    assert [n.cni_json() for n in first.networks] == [n.cni_json() for n in again.networks]


def test_the_plan_does_not_depend_on_the_process() -> None:
    """Hash randomisation (PYTHONHASHSEED) must not leak into names or order."""
    code = (
        "from scheduler.services.catalog import load_catalog; from scheduler.core.plan import make_plan\n"
        f"c = load_catalog({str(REPO / 'config' / 'lessons')!r})\n"
        "for l in sorted(c, key=lambda l: l.slug):\n"
        "    print(repr(make_plan(l, 'abcde12345', 's1', instance='lessons')))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert "lsb" in outputs.pop()


@PROPERTY
@given(lesson=lessons, pair=st.tuples(ids, ids).filter(lambda p: p[0] != p[1]), instance=instances)
def test_two_live_lessons_share_no_bridge_or_cni_network(
    lesson: ResolvedLesson, pair: tuple[str, str], instance: str
) -> None:
    one, two = (make_plan(lesson, x, "s1", instance=instance, subnet_pool=POOL) for x in pair)
    assert not {n.bridge for n in one.networks} & {n.bridge for n in two.networks}
    assert not {n.cni_name for n in one.networks} & {n.cni_name for n in two.networks}
    assert one.namespace != two.namespace
    assert not {p.netns for p in one.pods} & {p.netns for p in two.pods}


@PROPERTY
@given(lesson=lessons, livelesson=ids, pair=st.tuples(instances, instances).filter(lambda p: p[0] != p[1]))
def test_two_instances_share_no_bridge_or_cni_network(
    lesson: ResolvedLesson, livelesson: str, pair: tuple[str, str]
) -> None:
    one, two = (make_plan(lesson, livelesson, "s1", instance=x, subnet_pool=POOL) for x in pair)
    assert not {n.bridge for n in one.networks} & {n.bridge for n in two.networks}
    assert not {n.cni_name for n in one.networks} & {n.cni_name for n in two.networks}


def test_many_live_lessons_of_the_triangle_never_share_a_bridge() -> None:
    triangle = load_catalog(REPO / "config" / "lessons").lessons["busybox-triangle"]
    bridges: set[str] = set()
    cni: set[str] = set()
    for k in range(2000):
        plan = make_plan(triangle, f"{k:010d}", "s1", instance="lessons")
        bridges.update(n.bridge for n in plan.networks)
        cni.update(n.cni_name for n in plan.networks)
    assert len(bridges) == len(cni) == 6000


# --- interfaces, checks, subnets ----------------------------------------------------------------------


@PROPERTY
@given(lesson=lessons, livelesson=ids)
def test_interfaces_follow_connection_order(lesson: ResolvedLesson, livelesson: str) -> None:
    plan = make_plan(lesson, livelesson, "s1", instance="lessons", subnet_pool=POOL)
    assert [(n.a, n.b) for n in plan.networks] == [(c.a, c.b) for c in lesson.connections]
    assert [n.index for n in plan.networks] == list(range(len(lesson.connections)))
    for pod in plan.pods:
        mine = [n for n in plan.networks if pod.endpoint in (n.a, n.b)]
        assert [i.name for i in pod.interfaces] == [f"net{k}" for k in range(1, len(mine) + 1)]
        assert [i.network for i in pod.interfaces] == [n.nad for n in mine]
        assert [i.peer for i in pod.interfaces] == [n.b if n.a == pod.endpoint else n.a for n in mine]


@PROPERTY
@given(lesson=lessons, livelesson=ids)
def test_two_checks_per_connection(lesson: ResolvedLesson, livelesson: str) -> None:
    plan = make_plan(lesson, livelesson, "s1", instance="lessons", subnet_pool=POOL)
    links = [c for c in plan.checks if not c.by_name]
    assert len(links) == 2 * len(lesson.connections)
    # and one by name per direction of each pair of linked endpoints, over eth0
    named = [c for c in plan.checks if c.by_name]
    assert [(c.source, c.target) for c in named] == list(dict.fromkeys((c.source, c.target) for c in links))
    assert {(c.network, c.interface) for c in named} <= {("main", "eth0")}
    for k, n in enumerate(plan.networks):
        there, back = links[2 * k], links[2 * k + 1]
        assert (there.source, there.target, there.network) == (n.a, n.b, n.nad)
        assert (back.source, back.target, back.network) == (n.b, n.a, n.nad)
        for check in (there, back):
            target_itf = [i for i in plan.pod(check.target).interfaces if i.network == n.nad]
            assert [check.interface] == [i.name for i in target_itf]


@PROPERTY
@given(lesson=lessons, livelesson=ids)
def test_subnets_come_from_the_pool_in_definition_order(lesson: ResolvedLesson, livelesson: str) -> None:
    plan = make_plan(lesson, livelesson, "s1", instance="lessons", subnet_pool=POOL)
    explicit = [c.network for c in lesson.connections if c.network is not None]
    for n, c in zip(plan.networks, lesson.connections, strict=True):
        if c.subnet is not None:
            assert n.subnet == ipaddress.IPv4Network(c.subnet)
    free = (s for s in ipaddress.IPv4Network(POOL).subnets(new_prefix=24) if not any(s.overlaps(e) for e in explicit))
    allocated = [n.subnet for n, c in zip(plan.networks, lesson.connections, strict=True) if c.subnet is None]
    assert allocated == [next(free) for _ in allocated]
    # the generator's explicit subnets are disjoint, so the whole plan is
    subnets = [n.subnet for n in plan.networks]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)


def test_subnets_without_explicit_ones_are_the_pool_in_order() -> None:
    line = load_catalog(REPO / "config" / "lessons").lessons["busybox-line"]
    plan = make_plan(line, "abcde12345", "s1", instance="lessons", subnet_pool="172.20.0.0/16")
    assert [str(n.subnet) for n in plan.networks] == ["172.20.0.0/24", "172.20.1.0/24", "172.20.2.0/24"]


def test_an_exhausted_pool_is_a_lesson_error() -> None:
    doc = {
        "slug": "big",
        "name": "Big",
        "endpoints": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}],
        "connections": [{"a": "a", "b": "b"}] * 3,
    }
    with pytest.raises(LessonError) as info:
        make_plan(to_lesson(doc), "abcde12345", "s1", instance="lessons", subnet_pool="10.9.0.0/23")
    (problem,) = info.value.problems
    assert problem.path == "connections[2].subnet"
    assert "10.9.0.0/23 is exhausted" in problem.message


def test_the_triangle_plan() -> None:
    triangle = load_catalog(REPO / "config" / "lessons").lessons["busybox-triangle"]
    plan = make_plan(triangle, "abcde12345", "s1", instance="lessons")
    assert [(n.nad, str(n.subnet)) for n in plan.networks] == [
        ("bb1-bb2", "10.10.12.0/24"),
        ("bb2-bb3", "10.10.23.0/24"),
        ("bb3-bb1", "10.10.31.0/24"),
    ]
    assert {p.endpoint: [(i.name, i.network) for i in p.interfaces] for p in plan.pods} == {
        "bb1": [("net1", "bb1-bb2"), ("net2", "bb3-bb1")],
        "bb2": [("net1", "bb1-bb2"), ("net2", "bb2-bb3")],
        "bb3": [("net1", "bb2-bb3"), ("net2", "bb3-bb1")],
    }
    assert len([c for c in plan.checks if not c.by_name]) == 6
    assert len([c for c in plan.checks if c.by_name]) == 6  # each linked pair, both ways, by name
    assert plan.pod("bb1").labels["lessons.io/endpoint"] == "bb1"
    assert plan.labels == {
        "app.kubernetes.io/managed-by": "lesson-scheduler",
        "lessons.io/instance": "lessons",
        "lessons.io/livelesson": "abcde12345",
        "lessons.io/lesson": "busybox-triangle",
        "lessons.io/session": "s1",
        "lessons.io/deployment": "",
    }
    deployed = make_plan(triangle, "abcde12345", "s1", instance="lessons", deployment="d3ploy01")
    assert deployed.labels["lessons.io/deployment"] == "d3ploy01" and deployed.deployment == "d3ploy01"
    assert all(p.labels["lessons.io/deployment"] == "d3ploy01" for p in deployed.pods)


# --- fuzz: the parser answers with a Lesson or a LessonError, nothing else ---------------------------------


def _parse_only_lessons_or_errors(data: str | bytes) -> None:
    try:
        result = parse_lesson(data, "fuzz.yaml")
    except LessonError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.source == "fuzz.yaml"
            assert problem.message
            assert "\n" not in str(problem), str(problem)  # the CLI prints one line per problem
    else:
        assert isinstance(result, Lesson)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_bytes(data: bytes) -> None:
    _parse_only_lessons_or_errors(data)


@FUZZ
@given(text=st.text(max_size=400))
def test_fuzz_text(text: str) -> None:
    _parse_only_lessons_or_errors(text)


yaml_keys = st.one_of(
    st.sampled_from(
        [
            "slug",
            "name",
            "endpoints",
            "connections",
            "image",
            "a",
            "b",
            "subnet",
            "presentations",
            "port",
            "type",
            "additionalPorts",
            "readyDelay",
            "stages",
            "authors",
            "tier",
            "command",
        ]
    ),
    st.text(max_size=10),
    st.integers(),
    st.none(),
    st.booleans(),
)
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(["r1", "r2", "10.0.0.0/24", "ssh", "http", "10.0.0.1/33", "busybox"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(yaml_keys, inner, max_size=4)),
    max_leaves=25,
)


@FUZZ
@given(doc=yaml_values)
def test_fuzz_arbitrary_yaml_documents(doc: object) -> None:
    _parse_only_lessons_or_errors(yaml.safe_dump(doc))


def _mutate(doc: Any, path: list[Any], junk: object) -> Any:
    if not path:
        return junk
    head, *rest = path
    if isinstance(doc, dict):
        key = list(doc)[head % len(doc)] if doc else "x"
        return {**doc, key: _mutate(doc.get(key), rest, junk)}
    if isinstance(doc, list) and doc:
        i = head % len(doc)
        return [*doc[:i], _mutate(doc[i], rest, junk), *doc[i + 1 :]]
    return junk


@FUZZ
@given(
    doc=lesson_documents(max_endpoints=4, max_connections=4),
    path=st.lists(st.integers(0, 10), max_size=5),
    junk=yaml_values,
)
def test_fuzz_mutated_valid_lessons(doc: dict[str, Any], path: list[int], junk: object) -> None:
    """Valid lessons with one part replaced by junk: near misses reach deeper than random documents."""
    mutated = _mutate(doc, path, junk)
    assume(mutated != doc)
    text = yaml.safe_dump(mutated)
    _parse_only_lessons_or_errors(text)
    try:
        lesson = parse_lesson(text, "fuzz.yaml")
    except LessonError:
        return
    # whatever is accepted can be planned and its check list is consistent
    plan = make_plan(resolve(lesson, "fuzz.yaml", None), "abcde12345", "s1", instance="lessons")
    assert len([c for c in plan.checks if not c.by_name]) == 2 * len(plan.networks)


@FUZZ
@given(doc=lesson_documents(max_endpoints=4, max_connections=4), cut=st.integers(0, 10_000))
def test_fuzz_truncated_lessons(doc: dict[str, Any], cut: int) -> None:
    text = yaml.safe_dump(doc)
    _parse_only_lessons_or_errors(text[: cut % (len(text) + 1)])


@PROPERTY
@given(doc=lesson_documents())
def test_valid_documents_are_accepted_and_round_trip(doc: dict[str, Any]) -> None:
    lesson = parse_lesson(yaml.safe_dump(doc), "generated.yaml")
    assert json.loads(lesson.model_dump_json(by_alias=True, exclude_unset=True)) == doc
