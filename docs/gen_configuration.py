"""Regenerate the settings table in docs/configuration.md from scheduler/settings.py.

    .venv/bin/python docs/gen_configuration.py          # rewrite the table
    .venv/bin/python docs/gen_configuration.py --check  # exit 1 when the file has drifted

Only the block between the two markers is generated; the prose around it is edited by hand.
tests/unit/test_configuration_doc.py runs the same check.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scheduler.settings import Settings  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: docs/gen_configuration.py -->"
END = "<!-- END GENERATED -->"


def env_name(field: str) -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def _type(annotation: Any, info: FieldInfo) -> str:
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        (annotation,) = [a for a in args if a is not type(None)]
    if typing.get_origin(annotation) is Literal:
        text = " | ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    else:
        text = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(
            annotation, getattr(annotation, "__name__", str(annotation))
        )
    bounds = [f"≥ {m.ge}" for m in info.metadata if isinstance(m, Ge)]
    if bounds:
        text += " " + " ".join(bounds)
    return text + (", optional" if optional else "")


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Path) and value.is_relative_to(REPO):
        # a path inside the source tree: shown relative to it, so the table does not depend on the checkout
        return f"`{value.relative_to(REPO)}` (in the source tree)"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The generated block, markers included."""
    rows = [
        "| Setting | Environment variable | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        rows.append(
            f"| `{name}` | `{env_name(name)}` | {_cell(_type(info.annotation, info))} | "
            f"{_cell(_default(info.default))} | {_cell(info.description or '')} |"
        )
    return "\n".join([BEGIN, *rows, END])


def splice(text: str, block: str) -> str:
    """``text`` with its generated block replaced by ``block``."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = splice(current, render())
    if "--check" in argv:
        if current != wanted:
            sys.stderr.write(f"{DOC} is out of date: run .venv/bin/python docs/gen_configuration.py\n")
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted)
        sys.stderr.write(f"updated {DOC}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
