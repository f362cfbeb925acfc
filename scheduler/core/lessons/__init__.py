"""The lesson model, in two stages, and its loader. Pure.

- :mod:`~scheduler.core.lessons.raw`: the file as written (Antidote's `lesson.meta.yaml`, `image.meta.yaml`)
  and the lesson's own consistency;
- :mod:`~scheduler.core.lessons.resolved`: the lesson resolved against its deployment (images, reserved
  ranges), its links joining resolved endpoints;
- :mod:`~scheduler.core.lessons.loader`: text to a raw model, through strict YAML;
- :mod:`~scheduler.core.lessons.problems`: how a refusal is worded.

Every problem names the source, the path inside it (``connections[1].subnet``) and what is wrong in words.
"""

from __future__ import annotations

from scheduler.core.lessons.loader import parse_image, parse_lesson
from scheduler.core.lessons.raw import Flavor, Image, Lesson, Presentation, check_special
from scheduler.core.lessons.resolved import ResolvedEndpoint, ResolvedLesson, ResolvedLink, check_reserved, resolve

__all__ = [
    "Flavor",
    "Image",
    "Lesson",
    "Presentation",
    "ResolvedEndpoint",
    "ResolvedLesson",
    "ResolvedLink",
    "check_reserved",
    "check_special",
    "parse_image",
    "parse_lesson",
    "resolve",
]
