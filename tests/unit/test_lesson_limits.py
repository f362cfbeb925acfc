"""Bounded parsing and subnets a deployment keeps for itself (issue 11, items 4 and 8).

- YAML anchors, aliases and merge keys are refused before anything is built from them: a "billion laughs"
  of a few hundred bytes once made ``lessonctl validate`` print megabytes and exhaust 1 GiB.
- Every value quoted in a message is shortened, so a hostile file cannot flood a terminal or a log.
- ``reserved_subnets`` (LESSON_RESERVED_SUBNETS: the cluster's pod and service ranges, the management
  network) refuses any lesson subnet that overlaps one, naming the connection and the reserved range.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scheduler.core.errors import LessonError, Problem, shorten
from scheduler.core.lessons import check_reserved, check_special, parse_image, parse_lesson, resolve
from scheduler.services.catalog import load_catalog, load_paths
from tests.support.lessons import CATALOG as CONFIG_LESSONS
from tests.support.lessons import CURRICULUM, REPO

LESSONCTL = Path(sys.executable).parent / "lessonctl"

HEAD = """\
slug: bomb
name: Bomb
endpoints:
- name: r1
  image: busybox
- name: r2
  image: busybox
"""


def laughs(levels: int = 9, width: int = 9, *, mapping: bool = False, field: str = "description") -> str:
    """The classic bomb: level 0 holds ``width`` strings, each further level ``width`` aliases of the one
    before, so the last expands to width**levels values. ``field`` receives the last level."""
    lines = []
    for level in range(levels):
        items = ['"lol"'] * width if level == 0 else [f"*l{level - 1}"] * width
        if mapping:
            body = "{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}"
        else:
            body = "[" + ", ".join(items) + "]"
        lines.append(f"x{level}: &l{level} {body}")
    # the anchors sit under an unknown key, the bomb goes off in a real field (once repr'd in a message)
    return HEAD + "bombs:\n" + textwrap.indent("\n".join(lines), "  ") + f"\n{field}: *l{levels - 1}\n"


MERGE_BOMB = HEAD + "".join(
    f"m{level}: &m{level} {{<<: [{', '.join([f'*m{level - 1}'] * 9)}], k{level}: v}}\n" if level else "m0: &m0 {a: b}\n"
    for level in range(9)
)

BOMBS = {
    # id: (document, line, column, words); line and column are 1-based and point at the first anchor
    "sequences-9x9": (laughs(), 9, 7, ["YAML anchors (&l0)", "not allowed in lesson files"]),
    "mappings-9x9": (laughs(mapping=True), 9, 7, ["YAML anchors (&l0)", "not allowed"]),
    "into-tags": (laughs(field="tags"), 9, 7, ["YAML anchors (&l0)"]),
    "into-endpoints": (laughs(field="endpoints"), 9, 7, ["YAML anchors (&l0)"]),
    "wide-shallow": (laughs(levels=4, width=60), 9, 7, ["YAML anchors (&l0)"]),
    "merge-keys": (MERGE_BOMB, 8, 5, ["YAML anchors (&m0)"]),
    "recursive": (HEAD + "tags: &r [*r, *r]\n", 8, 7, ["YAML anchors (&r)"]),
    "alias-only": (HEAD + "description: *none\n", 8, 14, ["YAML aliases (*none) are not allowed in lesson files"]),
    "alias-as-key": (HEAD + "? *k\n: 1\n", 8, 3, ["YAML aliases (*k) are not allowed"]),
    "anchor-on-root": ("&root\n" + HEAD, 1, 1, ["YAML anchors (&root)"]),
    "inline-merge": (HEAD + "connections:\n- {<<: {a: r1}, b: r2}\n", 9, 4, ["YAML merge keys (<<) are not allowed"]),
    "tagged-merge": (HEAD + "connections:\n- {!!merge x: {a: r1}, b: r2}\n", 9, 4, ["YAML merge keys (<<)"]),
}  # fmt: skip


def written(tmp_path: Path, text: str, name: str = "bomb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def the_problem(exc: LessonError) -> Problem:
    assert len(exc.problems) == 1, [str(p) for p in exc.problems]
    return exc.problems[0]


@pytest.mark.parametrize(("text", "line", "column", "words"), BOMBS.values(), ids=BOMBS.keys())
def test_alias_bombs_are_refused_at_once_and_briefly(
    tmp_path: Path, text: str, line: int, column: int, words: list[str]
) -> None:
    assert len(text.encode()) < 2048  # a few hundred bytes, far under the 256 KiB file limit
    file = written(tmp_path, text)
    started = time.monotonic()
    with pytest.raises(LessonError) as info:
        load_paths([file])
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    problem = the_problem(info.value)
    assert problem.source == str(file)
    assert problem.message.startswith(f"line {line}, column {column}: "), problem.message
    for word in words:
        assert word in problem.message, f"{word!r} not in {problem.message!r}"
    assert "\n" not in str(problem)
    assert len(str(info.value)) < 1024


def test_the_bombs_really_are_bombs() -> None:
    """Without the refusal each would expand: PyYAML's plain SafeLoader builds the 9x9 one as 9**9 leaves."""
    import yaml

    data = yaml.safe_load(laughs())
    total, node = 1, data["description"]
    while isinstance(node, list):
        total *= len(node)
        node = node[0]
    assert total == 9**9


def test_image_files_refuse_aliases_too() -> None:
    with pytest.raises(LessonError) as info:
        parse_image("slug: &s busybox\ndescription: *s\n", "image.meta.yaml")
    assert "YAML anchors (&s)" in the_problem(info.value).message


def test_curricula_use_no_anchors_aliases_or_merge_keys() -> None:
    """The refusal costs nothing real: no lesson or image file the project ships uses them."""
    files = [*CURRICULUM.rglob("*.yaml"), *CONFIG_LESSONS.glob("*.yaml")]
    assert len(files) >= 20
    import yaml

    for file in files:
        for event in yaml.parse(file.read_text()):
            assert not isinstance(event, yaml.AliasEvent), file
            assert getattr(event, "anchor", None) is None, file
        assert "<<:" not in file.read_text(), file


_MEASURE = """\
import json, resource, subprocess, sys, time
started = time.monotonic()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
print(json.dumps({
    "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
    "seconds": time.monotonic() - started,
    "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
}))
"""


def run_measured(*argv: str) -> dict[str, object]:
    """Run ``argv`` from a fresh interpreter and report its exit, output, time and peak memory (KiB)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("bomb", ["sequences-9x9", "mappings-9x9", "merge-keys"])
def test_lessonctl_validate_refuses_a_bomb_with_little_output_and_memory(tmp_path: Path, bomb: str) -> None:
    assert LESSONCTL.exists(), f"{LESSONCTL} is missing: pip install -e '.[test]'"
    file = written(tmp_path, BOMBS[bomb][0])
    result = run_measured(str(LESSONCTL), "validate", str(file))
    stderr = str(result["stderr"])
    assert result["rc"] == 2, result
    assert "Traceback" not in stderr + str(result["stdout"])
    assert str(file) in stderr and "are not allowed in lesson files" in stderr
    assert len(stderr) < 1024, stderr
    assert result["stdout"] == ""
    # generous: the interpreter and its imports are most of it; the 447-byte bomb once took more than 1 GiB
    assert int(str(result["maxrss_kib"])) < 200 * 1024, result["maxrss_kib"]


# --- values quoted in messages are shortened ---------------------------------------------------------------

LONG = "x" * 100_000


def long_value_documents() -> dict[str, str]:
    endpoint = "- name: r1\n  image: busybox\n"
    many = "".join(f"- name: e{i}\n  image: busybox\n" for i in range(2000))
    return {
        "endpoint-name": HEAD.replace("name: r2", f"name: {LONG}"),
        "endpoint-name-symbols": HEAD.replace("name: r2", f"name: '{'!' * 100_000}'"),
        "slug": HEAD.replace("slug: bomb", f"slug: {LONG}"),
        "unknown-key": HEAD + f"{LONG}: 1\n",
        "unknown-nested-key": HEAD.replace("image: busybox", f"image: busybox\n  '{LONG} x': 1", 1),
        "connection-end": HEAD + f"connections:\n- {{a: r1, b: {LONG}}}\n",
        "self-connection": HEAD.replace("name: r1", f"name: {'a' * 63}")
        + f"connections:\n- {{a: {'a' * 63}, b: {'a' * 63}}}\n",
        "subnet-words": HEAD + f"connections:\n- {{a: r1, b: r2, subnet: {LONG}}}\n",
        "presentation-type": HEAD.replace(
            "image: busybox", f"image: busybox\n  presentations: [{{name: cli, port: 22, type: {LONG}}}]", 1
        ),
        "duplicate-key": HEAD + f"{LONG}: 1\n{LONG}: 2\n",
        "unknown-tag": HEAD + f"description: !{LONG} x\n",
        "python-tag": HEAD + f"description: !!python/object:{LONG} x\n",
        "huge-integer": HEAD + f"readyDelay: {'9' * 100_000}\n",
        "many-endpoints-one-bad-link": "slug: many\nname: Many\nendpoints:\n" + endpoint + many
        + "connections:\n" + "".join(f"- {{a: r1, b: nope{i}}}\n" for i in range(3)),
    }  # fmt: skip


@pytest.mark.parametrize(("text"), long_value_documents().values(), ids=long_value_documents().keys())
def test_long_values_are_shortened_in_messages(tmp_path: Path, text: str) -> None:
    assert len(text.encode()) < 256 * 1024
    file = written(tmp_path, text)
    with pytest.raises(LessonError) as info:
        load_paths([file])
    for problem in info.value.problems:
        assert problem.source == str(file)
        assert len(problem.path) < 200, problem.path
        assert len(problem.message) < 400, problem.message
        assert "\n" not in str(problem)
    assert len(str(info.value)) < 2048


def test_an_image_missing_from_the_catalog_is_named_briefly(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    (root / "lessons" / "one").mkdir(parents=True)
    (root / "lessons" / "one" / "lesson.meta.yaml").write_text(
        HEAD.replace("slug: bomb", "slug: one").replace("image: busybox", f"image: {LONG}", 1)
    )
    for i in range(40):
        (root / "images" / f"img{i:02}").mkdir(parents=True)
        (root / "images" / f"img{i:02}" / "image.meta.yaml").write_text(f"slug: img{i:02}\n")
    with pytest.raises(LessonError) as info:
        load_catalog(root)
    messages = [p.message for p in info.value.problems]
    assert len(messages) == 2  # r1's long image and r2's busybox
    assert all(len(m) < 400 for m in messages), messages
    assert "img00, img01" in messages[0] and "(20 more)" in messages[0]


def test_shorten_keeps_short_values_exact_and_cuts_long_ones() -> None:
    assert shorten("r1") == "'r1'"
    assert shorten(12) == "12"
    assert len(shorten(LONG)) <= 90 and shorten(LONG).startswith("'xxx") and "..." in shorten(LONG)
    assert len(shorten(10**4000)) <= 120
    assert len(shorten([LONG] * 1000)) <= 120
    assert len(shorten({"k" * 1000: [LONG]})) <= 120
    assert "\n" not in shorten("a\nb" * 1000)


# --- special ranges (the pure check) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "words"),
    [
        ("0.0.0.0/0", "default route"),
        ("0.0.0.0/8", '"this network"'),
        ("0.0.0.0/1", '"this network"'),  # the first range it touches
        ("127.0.0.0/29", "loopback"),
        ("169.254.169.248/29", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("230.1.2.0/24", "multicast"),
        ("248.0.0.0/8", "reserved"),
        ("255.255.255.248/29", "broadcast"),
    ],
)
def test_check_special_names_the_range(subnet: str, words: str) -> None:
    message = check_special(ipaddress.IPv4Network(subnet))
    assert message is not None and words in message and subnet in message


@pytest.mark.parametrize("subnet", ["10.10.12.0/24", "8.8.8.0/24", "126.255.255.248/29", "223.0.0.0/8", "1.0.0.0/8"])
def test_check_special_passes_unicast(subnet: str) -> None:
    assert check_special(ipaddress.IPv4Network(subnet)) is None


# --- reserved subnets (LESSON_RESERVED_SUBNETS) ------------------------------------------------------------

# Kubernetes' default service and pod ranges, and a management network
RESERVED = tuple(ipaddress.IPv4Network(n) for n in ("10.96.0.0/12", "10.244.0.0/16", "172.31.0.0/16"))

THREE = (
    HEAD
    + "- name: r3\n  image: busybox\nconnections:\n"
    + "- {a: r1, b: r2, subnet: 192.168.12.0/24}\n- {a: r2, b: r3}\n- {a: r3, b: r1, subnet: SUBNET}\n"
)


def test_check_reserved_returns_the_first_overlap() -> None:
    net = ipaddress.IPv4Network
    assert check_reserved(net("10.244.3.0/24"), RESERVED) == net("10.244.0.0/16")
    assert check_reserved(net("10.0.0.0/8"), RESERVED) == net("10.96.0.0/12")  # containing one overlaps too
    assert check_reserved(net("10.10.0.0/16"), RESERVED) is None
    assert check_reserved(net("10.244.0.0/16"), ()) is None


@pytest.mark.parametrize(
    ("subnet", "reserved"),
    [
        ("10.244.1.0/24", "10.244.0.0/16"),  # inside the pod range
        ("10.96.0.0/29", "10.96.0.0/12"),  # inside the service range
        ("10.0.0.0/8", "10.96.0.0/12"),  # contains the service range
        ("172.31.255.248/29", "172.31.0.0/16"),  # the management network's last /29
    ],
)
def test_a_subnet_overlapping_a_reserved_range_is_refused(tmp_path: Path, subnet: str, reserved: str) -> None:
    file = written(tmp_path, THREE.replace("SUBNET", subnet))
    with pytest.raises(LessonError) as info:
        load_paths([file], reserved_subnets=RESERVED)
    problem = the_problem(info.value)
    assert problem.source == str(file)
    assert problem.path == "connections[2].subnet"
    assert f"{subnet} overlaps {reserved}" in problem.message
    assert "LESSON_RESERVED_SUBNETS" in problem.message
    # the same file, without reserved ranges, is a good lesson: nothing changes for existing callers
    assert load_paths([file]).get("bomb") is not None


def test_load_catalog_and_resolve_take_reserved_subnets(tmp_path: Path) -> None:
    written(tmp_path, THREE.replace("SUBNET", "10.244.0.0/24"), "a.yaml")
    with pytest.raises(LessonError, match=r"connections\[2\]\.subnet: 10\.244\.0\.0/24 overlaps 10\.244\.0\.0/16"):
        load_catalog(tmp_path, reserved_subnets=RESERVED)
    lesson = parse_lesson(THREE.replace("SUBNET", "10.244.0.0/24"), "x.yaml")
    with pytest.raises(LessonError) as info:
        resolve(lesson, "x.yaml", None, reserved_subnets=RESERVED)
    assert [p.path for p in info.value.problems] == ["connections[2].subnet"]
    assert resolve(lesson, "x.yaml", None).slug == "bomb"


def test_every_overlapping_connection_is_reported(tmp_path: Path) -> None:
    text = HEAD + "connections:\n- {a: r1, b: r2, subnet: 10.96.0.0/24}\n- {a: r2, b: r1, subnet: 10.244.0.0/24}\n"
    file = written(tmp_path, text)
    with pytest.raises(LessonError) as info:
        load_paths([file], reserved_subnets=list(RESERVED))  # any sequence
    assert [(p.path, p.message.split(",")[0]) for p in info.value.problems] == [
        ("connections[0].subnet", "10.96.0.0/24 overlaps 10.96.0.0/12"),
        ("connections[1].subnet", "10.244.0.0/24 overlaps 10.244.0.0/16"),
    ]


def test_the_curricula_load_with_the_default_reserved_ranges() -> None:
    assert len(load_catalog(CURRICULUM, reserved_subnets=RESERVED)) == 17
    assert len(load_catalog(CONFIG_LESSONS, reserved_subnets=RESERVED)) == 3
