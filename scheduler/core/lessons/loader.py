"""Lesson and image files read from text: strict YAML (no duplicate keys, anchors, aliases or merge keys),
then the raw models, then the lesson's own consistency. Pure: text in, a model or a
:class:`~scheduler.core.errors.LessonError` naming every problem out. Reading files is
``scheduler.services.catalog``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from scheduler.core.errors import LessonError, Problem, shorten
from scheduler.core.lessons.problems import cut, kind_of, validation_problems
from scheduler.core.lessons.raw import Image, Lesson, consistency_problems

__all__ = ["parse_image", "parse_lesson"]


def parse_lesson(text: str | bytes, source: str = "<lesson>") -> Lesson:
    """Parse and validate one lesson document (structure and the lesson's own consistency)."""
    data = _load_yaml(text, source)
    try:
        lesson = Lesson.model_validate(data)
    except ValidationError as exc:
        raise LessonError(validation_problems(exc, Lesson, source)) from exc
    problems = consistency_problems(lesson, source)
    if problems:
        raise LessonError(problems)
    return lesson


def parse_image(text: str | bytes, source: str = "<image>") -> Image:
    data = _load_yaml(text, source)
    try:
        return Image.model_validate(data)
    except ValidationError as exc:
        raise LessonError(validation_problems(exc, Image, source)) from exc


# --- strict YAML ---------------------------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """Well-formed YAML that a lesson file may not use (anchors, aliases, merge keys)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice: YAML keeps the last one, silently dropping the first
    (a second ``connections:`` would erase the links above it).

    It also refuses anchors, aliases and merge keys before anything is built from them: nine anchors of
    nine aliases each expand to 9**9 values from a few hundred bytes (the "billion laughs"), and the
    Antidote format never needs them.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"YAML aliases (*{shorten(event.anchor)[1:-1]}) are not allowed in lesson files", event.start_mark
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                f"YAML anchors (&{shorten(anchor)[1:-1]}) and aliases are not allowed in lesson files",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused("YAML merge keys (<<) are not allowed in lesson files", key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"the key {shorten(key)} appears twice", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def _load_yaml(text: str | bytes, source: str) -> Mapping[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise LessonError([Problem(source, "", f"{_where(exc.problem_mark)}{exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        where = _where(getattr(exc, "problem_mark", None))
        problem = cut(getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0])
        raise LessonError([Problem(source, "", f"malformed YAML: {where}{problem}")]) from exc
    except UnicodeDecodeError as exc:  # undecodable bytes
        raise LessonError([Problem(source, "", f"not a text file: {exc}")]) from exc
    except RecursionError as exc:
        raise LessonError([Problem(source, "", "malformed YAML: nested too deeply")]) from exc
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        # PyYAML's own scalar constructors fail like this on odd values: `!!int ''`, `!!bool ''`,
        # `!!timestamp x`, `!!float +`, an integer of 5000 digits
        detail = cut((str(exc).splitlines() or [""])[0]) or type(exc).__name__
        raise LessonError([Problem(source, "", f"malformed YAML: a value cannot be read ({detail})")]) from exc
    if data is None:
        raise LessonError([Problem(source, "", "the file is empty")])
    if not isinstance(data, dict):
        raise LessonError([Problem(source, "", f"the top level must be a mapping, not {kind_of(data)}")])
    return data


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
