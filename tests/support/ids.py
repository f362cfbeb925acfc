"""Unique names: test instances and live-lesson ids."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_lowercase + string.digits


def unique(prefix: str = "t") -> str:
    """``prefix`` and six random characters: a LESSON_INSTANCE, a worker name."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(6))


def new_id() -> str:
    """A live-lesson id of ten random characters."""
    return "".join(secrets.choice(ALPHABET) for _ in range(10))
