"""Which plan a live lesson gets: :func:`plan_for` gathers every input of :func:`~scheduler.core.plan.make_plan`
from the record and the deployment's settings. The pipeline that executes a plan, the status page and
`lessonctl graph` that draw one, and `lessonctl render` that prints one all ask here, so none of them can
make a plan other than the one that runs. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from scheduler.core.lessons import ResolvedLesson
from scheduler.core.plan import MAIN_POOL, SUBNET_POOL, Plan, make_plan

__all__ = ["Draft", "PlanOptions", "PlanSettings", "Planned", "plan_for"]


class PlanSettings(Protocol):
    """The deployment's settings a plan depends on; ``scheduler.settings.Settings`` has every one."""

    @property
    def subnet_pool(self) -> str: ...  # LESSON_SUBNET_POOL

    @property
    def main_pool(self) -> str: ...  # LESSON_MAIN_POOL

    @property
    def image_substitute(self) -> str | None: ...  # LESSON_IMAGE_SUBSTITUTE

    @property
    def check_names(self) -> bool: ...  # LESSON_CHECK_NAMES


@dataclass(frozen=True)
class PlanOptions:
    """:class:`PlanSettings` as plain values, for a plan made without the deployment's settings (a test, a
    lesson file's picture). The defaults are the settings' defaults."""

    subnet_pool: str = SUBNET_POOL
    main_pool: str = MAIN_POOL
    image_substitute: str | None = None
    check_names: bool = True


class Planned(Protocol):
    """What a plan reads of a live lesson's record (``scheduler.core.records.LiveLesson`` has every one)."""

    @property
    def id(self) -> str: ...

    @property
    def session(self) -> str: ...

    @property
    def instance(self) -> str: ...

    @property
    def placement(self) -> Mapping[str, str] | None: ...  # endpoint -> node, once placed


@dataclass(frozen=True)
class Draft:
    """A live lesson that has no record: the one `lessonctl render` prints, or a lesson file's picture."""

    id: str
    session: str
    instance: str
    placement: Mapping[str, str] | None = None


def plan_for(record: Planned, lesson: ResolvedLesson, settings: PlanSettings, *, deployment: str = "") -> Plan:
    """The plan of ``record``'s live lesson, as the pipeline executes it. ``deployment`` is the store's
    deployment id (``Store.deployment()``); a plan that no backend applies may leave it empty."""
    return make_plan(
        lesson,
        record.id,
        record.session,
        instance=record.instance,
        subnet_pool=settings.subnet_pool,
        deployment=deployment,
        image_substitute=settings.image_substitute,
        main_pool=settings.main_pool,
        names=settings.check_names,
        placement=record.placement,
    )
