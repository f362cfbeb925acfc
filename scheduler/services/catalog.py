"""Loading lessons from disk: one file, a flat folder of ``*.yaml``, or an Antidote catalog.

The Antidote layout is ``lessons/<slug>/lesson.meta.yaml`` with ``images/<slug>/image.meta.yaml``.
Every problem in every file is collected, so one run of ``lessonctl validate`` shows them all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.core.errors import LessonError, Problem, shorten
from scheduler.core.lessons import Image, ResolvedLesson, parse_image, parse_lesson, resolve

if TYPE_CHECKING:
    from scheduler.settings import Settings

__all__ = ["MAX_FILE_BYTES", "Catalog", "configured_catalog", "load_catalog", "load_paths"]

MAX_FILE_BYTES = 256 * 1024  # the largest NRE Labs lesson is 6 KiB; anything near this is not a lesson


@dataclass(frozen=True)
class Catalog:
    lessons: Mapping[str, ResolvedLesson]

    def get(self, slug: str) -> ResolvedLesson | None:
        return self.lessons.get(slug)

    def __iter__(self) -> Iterator[ResolvedLesson]:
        return iter(self.lessons.values())

    def __len__(self) -> int:
        return len(self.lessons)


def _read(path: Path) -> bytes:
    def too_big(size: str) -> LessonError:
        return LessonError([Problem(str(path), "", f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}")])

    try:
        if not path.is_file():  # a FIFO or /dev/zero behind a *.yaml name would never end
            raise LessonError([Problem(str(path), "", "not a regular file")])
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise too_big(str(size))
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # the size may change between stat and read
    except OSError as exc:
        raise LessonError([Problem(str(path), "", f"cannot read: {exc.strerror}")]) from exc
    if len(data) > MAX_FILE_BYTES:
        raise too_big(f"more than {MAX_FILE_BYTES}")
    return data


def _images(root: Path) -> tuple[dict[str, Image] | None, list[Problem]]:
    folder = root / "images"
    if not folder.is_dir():
        return None, []
    images: dict[str, Image] = {}
    problems: list[Problem] = []
    for meta in sorted(folder.glob("*/image.meta.yaml")):
        try:
            image = parse_image(_read(meta), str(meta))
        except LessonError as exc:
            problems.extend(exc.problems)
            continue
        images[image.slug] = image
    return images, problems


def _antidote_root(path: Path) -> Path | None:
    """The catalog root a path belongs to, if it is (inside) an Antidote layout."""
    if path.is_dir() and (path / "lessons").is_dir():
        return path
    if path.is_file() and path.name == "lesson.meta.yaml" and path.parent.parent.name == "lessons":
        return path.parent.parent.parent
    return None


def _lesson_files(path: Path) -> tuple[list[Path], Path | None]:
    root = _antidote_root(path)
    if path.is_file():
        return [path], root
    if root is not None:
        return sorted(root.glob("lessons/*/lesson.meta.yaml")), root
    return sorted([*path.glob("*.yaml"), *path.glob("*.yml")]), None


def load_paths(
    paths: Iterable[Path | str],
    *,
    image_registry: str = "antidotelabs",
    reserved_subnets: Sequence[ipaddress.IPv4Network] = (),
) -> Catalog:
    """Load and resolve every lesson under ``paths``; raise one LessonError with every problem.

    ``reserved_subnets`` (LESSON_RESERVED_SUBNETS) are ranges no lesson subnet may overlap.
    """
    reserved = tuple(reserved_subnets)
    lessons: dict[str, ResolvedLesson] = {}
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            problems.append(Problem(str(path), "", "no such file or directory"))
            continue
        files, root = _lesson_files(path)
        if not files:
            problems.append(
                Problem(
                    str(path),
                    "",
                    "no lessons here (expected *.yaml files or lessons/<slug>/lesson.meta.yaml)",
                )
            )
            continue
        images, image_problems = _images(root) if root is not None else (None, [])
        problems.extend(image_problems)
        for file in files:
            try:
                lesson = parse_lesson(_read(file), str(file))
                resolved = resolve(lesson, str(file), images, image_registry=image_registry, reserved_subnets=reserved)
            except LessonError as exc:
                problems.extend(exc.problems)
                continue
            first = lessons.get(lesson.slug)
            if first is not None and first.source != resolved.source:
                problems.append(
                    Problem(str(file), "slug", f"slug {shorten(lesson.slug)} is already used by {first.source}")
                )
                continue
            lessons[lesson.slug] = resolved
    if problems:
        raise LessonError(problems)
    return Catalog(lessons)


def load_catalog(
    path: Path | str,
    *,
    image_registry: str = "antidotelabs",
    reserved_subnets: Sequence[ipaddress.IPv4Network] = (),
) -> Catalog:
    return load_paths([path], image_registry=image_registry, reserved_subnets=reserved_subnets)


def configured_catalog(settings: Settings, paths: Sequence[Path] | None = None) -> Catalog:
    """The deployment's catalog (or ``paths``), checked against its settings: every process that loads
    lessons (API, workers, the CLI, the demo) loads them the same way."""
    return load_paths(
        [settings.catalog] if paths is None else paths,
        image_registry=settings.image_registry,
        reserved_subnets=settings.reserved,
    )
