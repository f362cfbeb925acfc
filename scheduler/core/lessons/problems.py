"""How a refused lesson or image file is worded: a pydantic ValidationError as :class:`Problem` lines, each
naming the path inside the file (``connections[1].subnet``) and what is wrong in words. Pure.

Every text quoted from the file is shortened, and a path stays on one line whatever its keys hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from scheduler.core.errors import Problem, shorten

__all__ = ["cut", "kind_of", "known_names", "path_of", "validation_problems"]


def known_names(names: Sequence[str], limit: int = 10) -> str:
    """A list of known names for a message: the first ``limit``, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def cut(text: str, limit: int = 200) -> str:
    """A message from PyYAML or a constructor may quote the input (a tag, a scalar): keep it short."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: object) -> str:
    """What ``value`` is, in words: "a string", "a list", "nothing (null)"."""
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "list": "a list",
        "dict": "a mapping",
        "NoneType": "nothing (null)",
    }.get(type(value).__name__, type(value).__name__)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def path_of(loc: Sequence[int | str]) -> str:
    """A location inside the file as written: ``connections[1].subnet``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):  # a key with spaces or a newline: quoted, so it stays one line
            out += f"[{shorten(str(part))}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that owns the key at ``loc`` (to list the allowed keys on a typo)."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        inner = field.annotation
        for arg in (*getattr(inner, "__args__", ()), inner):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
        else:
            return None
    return current


def validation_problems(exc: ValidationError, model: type[BaseModel], source: str) -> list[Problem]:
    """One Problem per error of ``exc`` (raised validating ``model``), in words."""
    worded = ((err["loc"], _message(err, model)) for err in exc.errors())
    return [Problem(source, path_of(loc), message) for loc, message in worded if message is not None]


def _message(err: ErrorDetails, model: type[BaseModel]) -> str | None:
    """What is wrong, in words; None for an error that other errors already explain."""
    loc, kind, value = err["loc"], err["type"], err.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(model, loc)
        allowed = ", ".join(sorted(f.alias or n for n, f in owner.model_fields.items())) if owner else ""
        return f"unknown key {shorten(loc[-1])}" + (f" (allowed: {allowed})" if allowed else "")
    if kind == "missing":
        return "required field is missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {kind_of(value)}"
    if kind == "literal_error":
        return f"{shorten(value)} is not one of {err.get('ctx', {}).get('expected', '')}"
    if kind == "too_short" and tuple(loc) == ("endpoints",):
        # endpoints that were given but failed validation have their own problems, which say why
        return None if value else "a lesson needs at least one endpoint"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return cut(err["msg"][0].lower() + err["msg"][1:])
