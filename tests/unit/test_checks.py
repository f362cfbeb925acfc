"""The identifier checks (scheduler.core.checks): each refuses a value followed by a newline, which
``re.match`` with a trailing ``$`` lets through, and so does every boundary that asks them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from lessonctl.cli import main
from scheduler.core import checks
from scheduler.core.drawing import Node, Topology, to_mermaid
from scheduler.core.errors import InvalidRequest, LessonError, PermanentError
from scheduler.core.lessons import parse_lesson
from scheduler.core.plan import make_plan
from scheduler.http.api import create_app
from scheduler.settings import Settings
from tests.support.lessons import TRIANGLE, triangle

LESSON = "slug: {slug}\nname: x\nendpoints:\n- {{name: {name}, image: busybox}}\n"


@pytest.mark.parametrize(
    ("accepts", "good"),
    [
        (checks.is_id, "abcde12345"),
        (checks.is_session, "alice"),
        (checks.is_dns1123_label, "bb1"),
        (checks.is_node_name, "node-1.example"),
        (lambda value: checks.check_image_reference(value) is None, "registry:5000/org/img:1.2"),
    ],
    ids=["id", "session", "dns1123-label", "node-name", "image-reference"],
)
def test_each_check_refuses_a_trailing_newline(accepts: Callable[[str], bool], good: str) -> None:
    assert accepts(good)
    for bad in (good + "\n", good + "\r\n", "\n" + good, good + "\n" + good):
        assert not accepts(bad), repr(bad)


def test_check_id_raises_on_a_trailing_newline() -> None:
    assert checks.check_id("abcde12345") == "abcde12345"
    with pytest.raises(InvalidRequest, match="is not valid"):
        checks.check_id("abcde12345\n")


def test_every_pattern_is_applied_whole() -> None:
    """The patterns themselves refuse the newline when fullmatched, as every caller must apply them."""
    for pattern, good in (
        (checks.ID_PATTERN, "abcde12345"),
        (checks.SESSION_PATTERN, "alice"),
        (checks.DNS1123_LABEL, "bb1"),
        (checks.NODE_NAME, "node-1"),
        (checks.IMAGE_REFERENCE, "busybox"),
    ):
        assert pattern.fullmatch(good)
        assert not pattern.fullmatch(good + "\n"), pattern.pattern


@pytest.mark.parametrize(("slug", "name"), [('"three\\n"', "h1"), ("three", '"h1\\n"')])
def test_a_lesson_refuses_a_slug_or_endpoint_name_with_a_newline(slug: str, name: str) -> None:
    with pytest.raises(LessonError, match="is not a DNS-1123 label"):
        parse_lesson(LESSON.format(slug=slug, name=name), "newline.yaml")


def test_a_placement_refuses_a_node_name_with_a_newline() -> None:
    placement = {"bb1": "node-a", "bb2": "node-a", "bb3": "node-a\n"}
    with pytest.raises(PermanentError, match="not node names"):
        make_plan(triangle(), "abcde12345", "s1", instance="lessons", placement=placement)


def test_mermaid_gives_a_name_with_a_newline_a_neutral_id() -> None:
    text = to_mermaid(Topology("t", (Node("bb1\n"),), ()))
    assert '  node_0["bb1 "]' in text.splitlines()


@pytest.mark.parametrize(
    "args",
    [
        ["render", str(TRIANGLE), "-s", "alice", "--id", "abcde12345\n"],
        ["graph", "--livelesson", "abcde12345\n"],
    ],
    ids=["render --id", "graph --livelesson"],
)
def test_the_cli_refuses_an_id_with_a_newline(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "must be 10 lower-case letters or digits" in result.stderr


def test_the_status_page_refuses_an_id_with_a_newline(settings_for: Callable[..., Settings]) -> None:
    with TestClient(create_app(settings_for())) as client:
        page = client.get("/livelessons/abcde12345%0A")
    assert page.status_code == 404
    assert "does not exist" in page.text
