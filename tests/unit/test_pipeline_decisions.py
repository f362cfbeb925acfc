"""The pipeline's retry and fail decisions, on the in-memory fake backend: no root, no kernel, no Celery.

Records live in a private redis-server (the ``redis_server`` fixture), as the pipeline keeps them; the steps
are called as the queue would call them, one task after another, an ``Again`` re-run at once rather than
after its countdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.records import LiveLesson
from scheduler.core.steps import STEPS, next_task, step_at
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.fake_backend import FakeBackend
from tests.support.ids import unique
from tests.support.lessons import CATALOG
from workers.pipeline import Again, Next, Outcome, Pipeline

LESSON = "busybox-line"  # h1 - h2 - h3 - h4
MAX_ATTEMPTS = 3


@dataclass
class World:
    pipeline: Pipeline
    store: Store
    fake: FakeBackend

    def request(self) -> str:
        return self.store.create(LESSON, "alice", backend="local").record.id

    def run(self, step: str, livelesson: str, *, limit: int = 20) -> list[Outcome]:
        """``step`` until it is done or gives up: its outcomes, the last not an ``Again``."""
        outcomes: list[Outcome] = []
        while len(outcomes) < limit:
            outcomes.append(getattr(self.pipeline, step)(livelesson))
            if not isinstance(outcomes[-1], Again):
                return outcomes
        raise AssertionError(f"{step} still says Again after {limit} runs")

    def provision(self, livelesson: str) -> LiveLesson:
        """From the step the record is at, each step in order while each hands on to the next; the record at
        the end."""
        step = step_at(self.store.require(livelesson).status)
        while step is not None:
            outcome = self.run(step, livelesson)[-1]
            following = STEPS.index(step) + 1
            step = STEPS[following] if isinstance(outcome, Next) and following < len(STEPS) else None
        return self.store.require(livelesson)

    def leftovers(self, livelesson: str) -> list[str]:
        """What of the live lesson the backend still holds."""
        return [f"{t.kind} {t.name}" for t in self.fake.world.of(livelesson)]


@pytest.fixture
def world(redis_server: PrivateRedis, tmp_path: Path) -> Iterator[World]:
    settings = Settings(
        redis_url=redis_server.url,
        instance=unique(),
        catalog=CATALOG,
        state_dir=tmp_path / "state",
        step_max_attempts=MAX_ATTEMPTS,
        ping_probes=2,
    )
    store = Store.from_settings(settings)
    fake = FakeBackend(instance=settings.instance, deployment=store.deployment())
    yield World(Pipeline(settings, store, fake, load_catalog(CATALOG)), store, fake)
    store.r.close()


def assert_failed(world: World, livelesson: str, step: str, *words: str) -> LiveLesson:
    """Failed at ``step`` with ``words`` in its message, and nothing of it left on the backend."""
    record = world.store.require(livelesson)
    assert record.status == "failed", record.status
    assert record.error is not None and record.error.step == step, record.error
    assert all(w in record.error.message for w in words), record.error.message
    assert world.leftovers(livelesson) == []
    assert world.fake.list() == []
    return record


def test_without_faults_every_step_passes_once_and_the_lesson_is_ready(world: World) -> None:
    livelesson = world.request()
    record = world.provision(livelesson)
    assert record.status == "ready", record.error
    assert {s: t.attempts for s, t in record.steps.items()} == dict.fromkeys(STEPS, 1)
    assert record.checks and all(c.ok for c in record.checks)
    assert record.endpoints["h1"].interfaces[0].address == "10.250.0.2/24"
    assert world.fake.list() == [livelesson]


def test_a_transient_error_is_retried_with_a_growing_countdown_then_the_lesson_is_ready(world: World) -> None:
    world.fake.fail("apply_pods", TemporaryError("the runtime is briefly away"), times=2)
    livelesson = world.request()
    assert world.run("create_networks", livelesson) == [Next(next_task("create_networks"))]
    outcomes = world.run("schedule_pods", livelesson)
    assert outcomes[:2] == [Again(1.0), Again(2.0)] and isinstance(outcomes[2], Next), outcomes
    record = world.provision(livelesson)
    assert record.status == "ready", record.error
    assert record.steps["schedule_pods"].attempts == 3


def test_a_transient_error_past_the_attempt_limit_fails_the_lesson_naming_the_step(world: World) -> None:
    world.fake.fail("apply_networks", TemporaryError("the runtime is away"), times=MAX_ATTEMPTS)
    livelesson = world.request()
    outcomes = world.run("create_networks", livelesson)
    assert outcomes == [Again(1.0), Again(2.0), None]
    assert_failed(world, livelesson, "create_networks", f"gave up after {MAX_ATTEMPTS} attempts", "away")


def test_a_permanent_error_fails_the_lesson_at_once_naming_the_step(world: World) -> None:
    livelesson = world.request()
    assert isinstance(world.run("create_networks", livelesson)[-1], Next)
    world.fake.fail("apply_pods", PermanentError("pod h2 exists but is not this live lesson's"))
    assert world.run("schedule_pods", livelesson) == [None]
    record = assert_failed(world, livelesson, "schedule_pods", "pod h2 exists but is not this live lesson's")
    assert record.steps["schedule_pods"].attempts == 1


def test_a_crash_in_a_step_fails_the_lesson_as_an_internal_error(world: World) -> None:
    world.fake.fail("observe", KeyError("status"))
    livelesson = world.request()
    world.provision(livelesson)
    assert_failed(world, livelesson, "wait_ready", "internal error: KeyError")


def test_a_pod_that_never_gets_ready_is_waited_for_until_the_deadline_then_fails(world: World) -> None:
    world.fake.never_ready("h3")
    livelesson = world.request()
    for step in ("create_networks", "schedule_pods"):
        assert isinstance(world.run(step, livelesson)[-1], Next)
    # within the deadline, a waiting step looks again and again
    for _ in range(MAX_ATTEMPTS + 2):
        assert isinstance(world.pipeline.wait_ready(livelesson), Again)
    waiting = world.store.require(livelesson)
    assert waiting.status == "booting" and not waiting.endpoints["h3"].ready and waiting.endpoints["h1"].ready

    def late(rec: LiveLesson) -> LiveLesson:
        rec.created_at -= timedelta(seconds=world.pipeline.settings.provision_timeout_seconds + 1)
        return rec

    world.store.update(livelesson, late)
    assert world.pipeline.wait_ready(livelesson) is None
    assert_failed(world, livelesson, "wait_ready", "pods not ready by the deadline", "h3: ContainerCreating")


def test_a_waiting_step_retries_transient_errors_past_the_attempt_limit(world: World) -> None:
    # the deadline bounds a waiting step, not a count: a watch that keeps breaking off is looked at again
    world.fake.fail("observe", TemporaryError("the watch broke off"), times=MAX_ATTEMPTS + 1)
    livelesson = world.request()
    for step in ("create_networks", "schedule_pods"):
        assert isinstance(world.run(step, livelesson)[-1], Next)
    outcomes = world.run("wait_ready", livelesson)
    assert [type(o) for o in outcomes] == [Again] * (MAX_ATTEMPTS + 1) + [Next], outcomes
    assert world.provision(livelesson).status == "ready"


def test_a_pod_that_cannot_start_fails_the_lesson_at_once(world: World) -> None:
    world.fake.fatal("h2", "ErrImagePull: busybox:nosuchtag not found")
    livelesson = world.request()
    record = world.provision(livelesson)
    assert record.steps["wait_ready"].attempts == 1
    assert_failed(world, livelesson, "wait_ready", "pods cannot start", "h2: ErrImagePull")


def test_a_step_whose_answer_was_lost_runs_again_harmlessly(world: World) -> None:
    # both applies did their work, then the caller heard an error: the retries find everything made
    world.fake.fail("apply_networks", TemporaryError("connection reset"), after=True)
    world.fake.fail("apply_pods", TemporaryError("connection reset"), after=True)
    livelesson = world.request()
    record = world.provision(livelesson)
    assert record.status == "ready", record.error
    assert world.fake.calls["apply_networks"] == world.fake.calls["apply_pods"] == 2
    assert len(world.fake.made) == len(set(world.fake.made)) == 1 + 3 + 4  # namespace, links, pods: once each


def test_a_redelivered_step_after_its_record_moved_on_does_nothing(world: World) -> None:
    livelesson = world.request()
    assert world.provision(livelesson).status == "ready"
    calls = world.fake.calls.copy()
    for step in STEPS:  # Celery delivers a task again after a worker died before acknowledging it
        assert getattr(world.pipeline, step)(livelesson) is None
    assert world.fake.calls == calls
    assert world.store.require(livelesson).status == "ready"


def test_a_teardown_that_fails_after_a_failure_is_finished_by_the_next_teardown(world: World) -> None:
    world.fake.fatal("h4", "CrashLoopBackOff")
    world.fake.fail("destroy", TemporaryError("namespace still terminating"))
    livelesson = world.request()
    record = world.provision(livelesson)
    assert record.status == "failed"
    assert world.leftovers(livelesson), "the failed teardown removed nothing: GC's orphan pass is to finish it"
    assert world.fake.list() == [livelesson]
    world.pipeline.teardown(livelesson)  # what GC's orphan pass does
    after = assert_failed(world, livelesson, "wait_ready", "h4: CrashLoopBackOff")  # keeps its status and error
    assert after.error == record.error


def test_a_placing_backend_has_the_lesson_placed_once_on_its_nodes(world: World) -> None:
    world.pipeline.backend = world.fake = FakeBackend(
        world.fake.world, instance=world.fake.instance, deployment=world.fake.deployment,
        nodes=("node-a", "node-b"), node_max_pods=2,
    )  # fmt: skip
    livelesson = world.request()
    record = world.provision(livelesson)
    assert record.status == "ready", record.error
    assert record.placement is not None and sorted(record.placement.values()) == ["node-a"] * 2 + ["node-b"] * 2
    assert world.fake.calls["rooms"] == 1  # decided once, then kept in the record
    assert [r.pods for r in world.fake.rooms() or []] == [0, 0]
