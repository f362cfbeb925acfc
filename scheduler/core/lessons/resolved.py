"""A lesson resolved against its deployment: each endpoint carries the image reference a runtime pulls and
the image's flavor, and each link joins resolved endpoints, so nothing after resolving joins names again.
Pure: the catalog's images and the deployment's reserved ranges are given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.core.errors import LessonError, Problem, shorten
from scheduler.core.lessons.problems import known_names
from scheduler.core.lessons.raw import Connection, Endpoint, Flavor, Image, Lesson, Presentation

__all__ = [
    "PREVIEW_TIERS",
    "ResolvedEndpoint",
    "ResolvedLesson",
    "ResolvedLink",
    "check_reserved",
    "resolve",
]

PREVIEW_TIERS = frozenset({"ptr", "local"})


@dataclass(frozen=True)
class ResolvedEndpoint:
    name: str
    image: str  # the reference a runtime pulls, e.g. "busybox" or "antidotelabs/utility"
    flavor: Flavor
    ports: tuple[int, ...]
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    forwarding: bool
    presentations: tuple[Presentation, ...] = ()  # what a learner's terminal or browser connects to


@dataclass(frozen=True)
class ResolvedLink:
    """A connection whose ends are resolved endpoints (containerlab's RawLink -> Link): nothing after
    resolving joins names again."""

    index: int  # its place in the file: subnets are allocated and NADs named in this order
    a: ResolvedEndpoint
    b: ResolvedEndpoint
    subnet: ipaddress.IPv4Network | None  # None: allocated from the pool by the plan


@dataclass(frozen=True)
class ResolvedLesson:
    """A lesson whose endpoints carry concrete images and whose links join resolved endpoints."""

    lesson: Lesson
    source: str
    endpoints: tuple[ResolvedEndpoint, ...]
    links: tuple[ResolvedLink, ...] = ()

    @property
    def slug(self) -> str:
        return self.lesson.slug

    @property
    def connections(self) -> tuple[Connection, ...]:
        return self.lesson.connections

    @property
    def ready_delay(self) -> int:
        return self.lesson.ready_delay


def check_reserved(
    net: ipaddress.IPv4Network, reserved: Sequence[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network | None:
    """The first of the deployment's ``reserved`` ranges (LESSON_RESERVED_SUBNETS) that ``net`` overlaps."""
    return next((r for r in reserved if net.overlaps(r)), None)


def resolve(
    lesson: Lesson,
    source: str,
    images: Mapping[str, Image] | None,
    *,
    image_registry: str = "antidotelabs",
    reserved_subnets: Sequence[ipaddress.IPv4Network] = (),
) -> ResolvedLesson:
    """Attach concrete images and check the lesson against its deployment.

    With a catalog's ``images`` (even empty), every slug of a production lesson must be known there.
    No connection's ``subnet`` may overlap one of ``reserved_subnets`` (the deployment's own ranges:
    the cluster's pod and service networks, the management network; LESSON_RESERVED_SUBNETS).
    """
    problems = []
    endpoints = []
    for i, ep in enumerate(lesson.endpoints):
        found = _image_of(ep, lesson.tier, images, image_registry)
        if found is None:
            problems.append(_unknown_image(source, i, ep, images or {}))
            continue
        reference, flavor, forwarding = found
        endpoints.append(
            ResolvedEndpoint(ep.name, reference, flavor, ep.ports, ep.command, ep.args, forwarding, ep.presentations)
        )
    problems += _reserved_problems(lesson, source, reserved_subnets)
    if problems:
        raise LessonError(problems)
    by_name = {e.name: e for e in endpoints}
    links = tuple(
        ResolvedLink(i, by_name[conn.a], by_name[conn.b], conn.network) for i, conn in enumerate(lesson.connections)
    )
    return ResolvedLesson(lesson, source, tuple(endpoints), links)


def _image_of(
    ep: Endpoint, tier: str | None, images: Mapping[str, Image] | None, registry: str
) -> tuple[str, Flavor, bool] | None:
    """The reference ``ep`` runs, its flavor and whether it forwards; None when the catalog lacks its image."""
    if images is None:  # no catalog: the reference as written
        return ep.image, "untrusted", False
    image = images.get(ep.image)
    if image is not None:
        return _reference(image.slug, registry), image.flavor, image.enable_forwarding
    if tier in PREVIEW_TIERS:
        # Antidote served preview-tier lessons whose images were not in the catalog yet (three in the NRE
        # Labs curriculum); they run from the plain reference
        return _reference(ep.image, registry), "untrusted", False
    return None


def _unknown_image(source: str, index: int, ep: Endpoint, images: Mapping[str, Image]) -> Problem:
    known = known_names(sorted(images), limit=20) or "none"
    return Problem(
        source, f"endpoints[{index}].image", f"image {shorten(ep.image)} is not in the catalog (known: {known})"
    )


def _reference(slug: str, registry: str) -> str:
    return f"{registry}/{slug}" if registry else slug


def _reserved_problems(lesson: Lesson, source: str, reserved: Sequence[ipaddress.IPv4Network]) -> list[Problem]:
    problems = []
    for i, conn in enumerate(lesson.connections):
        net = conn.network
        clash = check_reserved(net, reserved) if net is not None else None
        if clash is not None:
            problems.append(
                Problem(
                    source,
                    f"connections[{i}].subnet",
                    f"{net} overlaps {clash}, a range this deployment reserves (LESSON_RESERVED_SUBNETS)",
                )
            )
    return problems
