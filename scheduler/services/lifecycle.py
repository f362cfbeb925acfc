"""Starting a live lesson: the one code path behind the HTTP API and the ``lessons.request`` task."""

from __future__ import annotations

from scheduler.core.checks import check_id, is_session
from scheduler.core.errors import InvalidRequest, NotFound, shorten
from scheduler.core.records import LiveLesson
from scheduler.core.steps import ACTIVE, FIRST_TASK
from scheduler.core.task_names import TEARDOWN_TASK
from scheduler.services.catalog import Catalog
from scheduler.services.queue import enqueue_step
from scheduler.services.state import Created, Store
from scheduler.settings import Settings

__all__ = ["delete_lesson", "request_lesson", "validate_session", "validate_slug"]


def validate_session(session: object) -> str:
    # fullmatch: `$` in the pattern would also accept a trailing newline ("x\n"), not a valid label value
    if not is_session(session):
        raise InvalidRequest(
            f"session {shorten(session)} is not valid: 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return session


def validate_slug(lesson: object) -> str:
    """A lesson slug as a request names it (a task argument may be anything JSON can carry)."""
    if not isinstance(lesson, str) or not 0 < len(lesson) <= 63:
        raise InvalidRequest(f"lesson {shorten(lesson)} is not valid: a slug of 1-63 characters")
    return lesson


def request_lesson(settings: Settings, store: Store, catalog: Catalog, lesson: str, session: str) -> Created:
    """Create the live lesson of (lesson, session) and start provisioning, or return the active one."""
    validate_session(session)
    validate_slug(lesson)
    if catalog.get(lesson) is None:
        known = ", ".join(sorted(catalog.lessons)) or "none"
        raise NotFound(f"lesson {shorten(lesson)} is not in the catalog (known: {known})")
    created = store.create(lesson, session, backend=settings.backend)
    if created.new:
        store.metrics.inc("lessons_requested_total")
        # if this send is lost, the record's lease runs out and GC sends it again
        enqueue_step(settings, FIRST_TASK, created.record.id)
    # the record and the step's message on the replicas before anyone hears "accepted": a failover right
    # after cannot lose them (Store.confirm covers every write made before it, whichever connection made it)
    store.confirm(f"the request for {lesson}/{session}")
    return created


def delete_lesson(settings: Settings, store: Store, livelesson: str) -> LiveLesson:
    """Mark ``deleting`` (so readers see it at once) and enqueue the teardown. Idempotent."""
    check_id(livelesson)
    record = store.transition(livelesson, ACTIVE, "deleting")
    if record is None:
        record = store.require(livelesson)
        if record.status == "deleted":
            return record  # nothing left to tear down; deleting and failed ones get the teardown again
    enqueue_step(settings, TEARDOWN_TASK, livelesson)
    store.confirm(f"the deletion of {livelesson}")
    return record
