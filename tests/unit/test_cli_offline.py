"""``lessonctl validate`` and ``lessonctl render``: the installed console script, run as a real process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.core.render import NETWORKS_ANNOTATION
from tests.support.cli import documents, no_traceback
from tests.support.cli import offline as lessonctl

TRIANGLE = "config/lessons/busybox-triangle.yaml"


def kinds(docs: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in docs:
        out[d["kind"]] = out.get(d["kind"], 0) + 1
    return out


# --- validate ----------------------------------------------------------------------------------------------


def test_validate_the_nre_labs_curriculum() -> None:
    result = lessonctl("validate", "tests/data/antidote-curriculum")
    assert result.returncode == 0, result.stderr
    assert "17 lesson(s) valid" in result.stderr
    no_traceback(result)


def test_validate_several_paths() -> None:
    result = lessonctl("validate", "config/lessons", TRIANGLE, "tests/data/antidote-curriculum")
    assert result.returncode == 0, result.stderr
    assert "20 lesson(s) valid" in result.stderr


BAD = """\
slug: bad
name: Bad
endpoints:
- name: r1
  image: busybox
  additionalPorts: [70000]
- name: r2
  image: busybox
  colour: blue
connections:
- {a: r1, b: r2, subnet: 10.0.0.1/24}
"""


def test_validate_a_bad_file_prints_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = lessonctl("validate", str(bad))
    assert result.returncode == 2
    no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"{bad}: endpoints[0].additionalPorts[0]: port 70000 is outside 1-65535",
        f"{bad}: endpoints[1].colour: unknown key 'colour' (allowed: additionalPorts, args, command, "
        "configurationType, image, name, presentations)",
        f"{bad}: connections[0].subnet: '10.0.0.1/24' has host bits set; did you mean 10.0.0.0/24?",
    ]


def test_validate_reports_consistency_problems(tmp_path: Path) -> None:
    bad = tmp_path / "lesson.yaml"
    bad.write_text(
        "slug: x\nname: X\nendpoints:\n- {name: r1, image: a}\n- {name: r2, image: a}\n- {name: r3, image: a}\n"
        "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r4}\n"
    )
    result = lessonctl("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{bad}: connections[1].b: endpoint 'r4' is not defined (known: r1, r2, r3)"]


def test_validate_collects_problems_across_paths(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "list.yaml").write_text("- 1\n")
    missing = tmp_path / "missing"
    result = lessonctl("validate", TRIANGLE, str(tmp_path), str(missing))
    assert result.returncode == 2
    no_traceback(result)
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'empty.yaml'}: the file is empty",
        f"{tmp_path / 'list.yaml'}: the top level must be a mapping, not a list",
        f"{missing}: no such file or directory",
    ]


def test_validate_malformed_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("slug: [unclosed\n")
    result = lessonctl("validate", str(bad))
    assert result.returncode == 2
    no_traceback(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{bad}: malformed YAML: line ")


def test_validate_needs_a_path() -> None:
    result = lessonctl("validate")
    assert result.returncode == 2
    assert "Usage" in result.stderr
    no_traceback(result)


# --- render ------------------------------------------------------------------------------------------------


def render_triangle(*extra: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = lessonctl("render", TRIANGLE, "--session", "s1", *extra, env=env)
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    return documents(result.stdout)


def nad_configs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(d["spec"]["config"]) for d in docs if d["kind"] == "NetworkAttachmentDefinition"]


def test_render_the_triangle() -> None:
    docs = render_triangle()
    assert kinds(docs) == {"Namespace": 1, "NetworkAttachmentDefinition": 3, "NetworkPolicy": 1, "Service": 3, "Pod": 3}
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    ns = namespace["metadata"]["name"]
    assert ns.startswith("lessons-") and len(ns) == len("lessons-") + 10
    pods = [d for d in docs if d["kind"] == "Pod"]
    for pod in pods:
        assert pod["metadata"]["namespace"] == ns
        assert pod["metadata"]["labels"]["lessons.io/session"] == "s1"
        networks = json.loads(pod["metadata"]["annotations"][NETWORKS_ANNOTATION])
        assert [n["interface"] for n in networks] == ["net1", "net2"]
        (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        (expr,) = term["labelSelector"]["matchExpressions"]
        assert expr == {"key": "lessons.io/livelesson", "operator": "In", "values": [ns.removeprefix("lessons-")]}
    subnets = [c["ipam"]["subnet"] for c in nad_configs(docs)]
    assert subnets == ["10.10.12.0/24", "10.10.23.0/24", "10.10.31.0/24"]


def test_two_renders_cannot_collide() -> None:
    one, two = render_triangle(), render_triangle()
    ns_one = next(d for d in one if d["kind"] == "Namespace")["metadata"]["name"]
    ns_two = next(d for d in two if d["kind"] == "Namespace")["metadata"]["name"]
    assert ns_one != ns_two
    conf_one, conf_two = nad_configs(one), nad_configs(two)
    assert not {c["bridge"] for c in conf_one} & {c["bridge"] for c in conf_two}
    assert not {c["name"] for c in conf_one} & {c["name"] for c in conf_two}
    for conf in conf_one + conf_two:
        assert len(conf["bridge"]) <= 15
        assert conf["bridge"] not in {"12-bridge", "23-bridge", "31-bridge"}


def test_render_with_a_fixed_id_is_deterministic() -> None:
    first = lessonctl("render", TRIANGLE, "--session", "s1", "--id", "abcde12345")
    again = lessonctl("render", TRIANGLE, "--session", "s1", "--id", "abcde12345")
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout
    assert "namespace: lessons-abcde12345" in first.stdout


def test_render_follows_the_instance_setting() -> None:
    docs = render_triangle("--id", "abcde12345", env={"LESSON_INSTANCE": "ci-one"})
    other = render_triangle("--id", "abcde12345", env={"LESSON_INSTANCE": "ci-two"})
    assert next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"] == "ci-one-abcde12345"
    assert not {c["bridge"] for c in nad_configs(docs)} & {c["bridge"] for c in nad_configs(other)}


def test_render_picks_a_lesson_from_a_folder() -> None:
    result = lessonctl("render", "config/lessons", "--session", "s1", "--lesson", "busybox-line")
    assert result.returncode == 0, result.stderr
    docs = documents(result.stdout)
    assert kinds(docs)["NetworkAttachmentDefinition"] == 3
    assert kinds(docs)["Pod"] == 4
    assert [c["ipam"]["subnet"] for c in nad_configs(docs)] == ["10.10.0.0/24", "10.10.1.0/24", "10.10.2.0/24"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--session", "bad session"], "session 'bad session' is not valid"),
        (["--session", "s;rm -rf"], "is not valid"),
        (["--session", "x" * 64], "is not valid"),
        (["--session", "trailing-"], "is not valid"),
        (["--session", "s1", "--id", "UPPERCASE1"], "--id"),
        (["--session", "s1", "--id", "short"], "--id"),
    ],
)
def test_render_refuses_bad_input(args: list[str], words: str) -> None:
    result = lessonctl("render", TRIANGLE, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert words in result.stderr
    no_traceback(result)


def test_render_needs_a_session() -> None:
    result = lessonctl("render", TRIANGLE)
    assert result.returncode == 2
    assert "--session" in result.stderr
    no_traceback(result)


def test_render_a_folder_of_several_lessons_needs_a_choice() -> None:
    result = lessonctl("render", "config/lessons", "--session", "s1")
    assert result.returncode == 2
    assert "--lesson" in result.stderr
    result = lessonctl("render", "config/lessons", "--session", "s1", "--lesson", "nope")
    assert result.returncode == 2
    assert "'nope'" in result.stderr and "busybox-triangle" in result.stderr
    no_traceback(result)


def test_render_an_invalid_lesson(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = lessonctl("render", str(bad), "--session", "s1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 3
    no_traceback(result)
