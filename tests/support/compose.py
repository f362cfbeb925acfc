"""Compose's variable interpolation (the subset of https://compose-spec.io "Interpolation" compose.yaml may
use), to read compose.yaml as ``docker compose`` would."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Resolve ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
    ``${VAR:+alt}`` and ``$$`` in every string of a loaded compose file, as ``docker compose config`` does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            return arg if (unset_or_empty if op == ":-" else current is None) else current  # type: ignore[return-value]
        if op in (":?", "?"):
            if unset_or_empty if op == ":?" else current is None:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return current  # type: ignore[return-value]
        if op == ":+":
            return arg if not unset_or_empty else ""
        return current or ""

    return _VARIABLE.sub(one, value)
