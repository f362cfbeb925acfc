"""The step table is the one home of the state machine: every derived map agrees with it, and every task
it names is a task the workers register."""

from __future__ import annotations

from scheduler.core import steps


def test_the_chain_runs_from_request_to_ready_in_order() -> None:
    chain, task = [], steps.task_for_status("requested")
    while task is not None:
        chain.append(task)
        task = steps.next_task(task.removeprefix("lessons."))
    assert chain == [f"lessons.{s}" for s in steps.STEPS]
    assert steps.next_task(steps.STEPS[-1]) is None


def test_every_working_status_has_exactly_one_task_and_settled_ones_none() -> None:
    for status in steps.PROVISIONING:
        step = steps.step_at(status)
        assert step is not None and steps.task_for_status(status) == f"lessons.{step}"
        assert status == "requested" or steps.STEP_STATUS[step] == status
    assert steps.task_for_status("deleting") == steps.TEARDOWN_TASK
    for status in ("ready", "failed", "deleted"):
        assert steps.task_for_status(status) is None
    assert {"wait_ready", "verify_connectivity"} == steps.WAITING_STEPS
    assert steps.PROVISIONING | {"ready"} == steps.ACTIVE and not steps.ACTIVE & steps.TERMINAL


def test_every_task_the_table_names_is_registered_by_the_workers() -> None:
    import workers.tasks  # noqa: F401 - registers the tasks
    from workers.app import app

    named = {f"lessons.{s}" for s in steps.STEPS} | {steps.TEARDOWN_TASK}
    assert named <= set(app.tasks), sorted(named - set(app.tasks))
