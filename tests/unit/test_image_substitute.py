"""LESSON_IMAGE_SUBSTITUTE: every endpoint runs a local image instead of its own, explicitly and visibly.

The plan (images, commands, names unchanged), the setting's validation, the record, ``lessonctl status``
and ``render``, the status page and the pipeline step that records it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from lessonctl import output
from scheduler.core.checks import check_image_reference
from scheduler.core.lessons import ResolvedLesson, parse_lesson, resolve
from scheduler.core.plan import SUBSTITUTE_COMMAND, Plan, make_plan
from scheduler.core.records import LiveLesson, substitute_note
from scheduler.core.render import render
from scheduler.http.pages import livelesson_html
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.cli import documents, no_traceback
from tests.support.cli import offline as lessonctl
from tests.support.fake_backend import FakeBackend
from tests.support.lessons import CATALOG, CURRICULUM, live_record, triangle
from workers.pipeline import Next, Pipeline

ENV = "LESSON_IMAGE_SUBSTITUTE"
NOTE = "images: every endpoint runs busybox instead of its own image (LESSON_IMAGE_SUBSTITUTE)"

# endpoints with and without command and args, and one that already runs the substitute
MIXED = """\
slug: mixed
name: Mixed
endpoints:
- name: plain
  image: antidotelabs/utility
- name: commanded
  image: antidotelabs/crpd
  command: [/sbin/init, --verbose]
  args: [--level, "3"]
- name: argued
  image: antidotelabs/vqfx
  args: [--config, /etc/router.conf]
- name: own
  image: busybox
connections:
- {a: plain, b: commanded}
- {a: commanded, b: argued}
- {a: argued, b: own}
"""


def mixed() -> ResolvedLesson:
    return resolve(parse_lesson(MIXED, "mixed.yaml"), "mixed.yaml", None)


def jsnapy() -> ResolvedLesson:
    """A real NRE Labs lesson: four endpoints on antidotelabs images, three links, no commands."""
    lesson = load_catalog(CURRICULUM).get("jsnapy-network-testing")
    assert lesson is not None
    return lesson


def plans(lesson: ResolvedLesson, substitute: str | None = "busybox") -> tuple[Plan, Plan]:
    args: dict[str, Any] = {"instance": "lessons", "subnet_pool": "10.10.0.0/16", "deployment": "d1"}
    return (
        make_plan(lesson, "abcde12345", "alice", **args),
        make_plan(lesson, "abcde12345", "alice", image_substitute=substitute, **args),
    )


# --- the plan -------------------------------------------------------------------------------------------------


def test_off_by_default_changes_nothing() -> None:
    lesson = jsnapy()
    plain, off = plans(lesson, None)
    assert plain == off == plans(lesson, "")[1]  # empty is off, as an unset variable
    assert plain.image_substitute is None
    for pod, ep in zip(plain.pods, lesson.endpoints, strict=True):
        assert (pod.image, pod.declared_image, pod.command, pod.args) == (ep.image, ep.image, ep.command, ep.args)
        assert not pod.substituted


def test_every_pod_runs_the_substitute_and_sleeps() -> None:
    lesson = jsnapy()
    _, sub = plans(lesson)
    assert sub.image_substitute == "busybox"
    assert [p.image for p in sub.pods] == ["busybox"] * 4
    assert [p.declared_image for p in sub.pods] == [e.image for e in lesson.endpoints]
    assert {p.declared_image for p in sub.pods} == {"antidotelabs/utility", "antidotelabs/crpd"}
    assert all(p.substituted for p in sub.pods)
    assert all(p.command == ("sleep", "infinity") == SUBSTITUTE_COMMAND for p in sub.pods)
    assert all(p.args is None for p in sub.pods)


def test_commands_given_by_the_lesson_are_kept() -> None:
    _, sub = plans(mixed())
    pods = {p.endpoint: p for p in sub.pods}
    assert (pods["plain"].command, pods["plain"].args) == (SUBSTITUTE_COMMAND, None)
    assert (pods["commanded"].command, pods["commanded"].args) == (("/sbin/init", "--verbose"), ("--level", "3"))
    # args were meant for the replaced image's entrypoint: `sleep infinity --config ...` would not run
    assert (pods["argued"].command, pods["argued"].args) == (SUBSTITUTE_COMMAND, None)
    # already the substitute: not substituted, left as the lesson wrote it
    assert (pods["own"].image, pods["own"].command, pods["own"].substituted) == ("busybox", None, False)
    assert [p.image for p in sub.pods] == ["busybox"] * 4


@pytest.mark.parametrize("lesson", [jsnapy, mixed, triangle], ids=["jsnapy", "mixed", "triangle"])
def test_names_subnets_and_checks_do_not_depend_on_it(lesson: Callable[[], ResolvedLesson]) -> None:
    plain, sub = plans(lesson(), "registry.local:5000/lab/busybox:1.36")
    assert sub.networks == plain.networks
    assert [n.bridge for n in sub.networks] == [n.bridge for n in plain.networks]
    assert [n.cni_name for n in sub.networks] == [n.cni_name for n in plain.networks]
    assert (sub.namespace, sub.labels, sub.checks, sub.node_netns) == (
        plain.namespace,
        plain.labels,
        plain.checks,
        plain.node_netns,
    )
    for a, b in zip(plain.pods, sub.pods, strict=True):
        assert (a.name, a.netns, a.labels, a.interfaces, a.ports, a.flavor, a.forwarding) == (
            b.name,
            b.netns,
            b.labels,
            b.interfaces,
            b.ports,
            b.flavor,
            b.forwarding,
        )
    # nothing else differs
    assert dataclasses.replace(sub, pods=plain.pods, image_substitute=None) == plain


def test_deterministic() -> None:
    assert plans(jsnapy())[1] == plans(jsnapy())[1]


def test_rendered_pods_run_the_substitute() -> None:
    _, sub = plans(jsnapy())
    containers = [o["spec"]["containers"][0] for o in render(sub) if o["kind"] == "Pod"]
    assert len(containers) == 4
    assert all(c["image"] == "busybox" and c["command"] == ["sleep", "infinity"] for c in containers)
    assert all("args" not in c for c in containers)


# --- the setting ----------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"LESSON_{name.upper()}", raising=False)
    return monkeypatch


def test_setting_off_by_default_and_when_empty(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings().image_substitute is None
    clean_env.setenv(ENV, "")
    assert Settings().image_substitute is None


@pytest.mark.parametrize(
    "value",
    [
        "busybox",
        "busybox:1.36",
        "docker.io/library/alpine:3.20",
        "localhost:5000/lab/busybox",
        "busybox@sha256:" + "a" * 64,
    ],
)
def test_setting_accepts_image_references(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv(ENV, value)
    assert Settings().image_substitute == value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (" ", "whitespace or control characters"),
        ("busy box", "whitespace or control characters"),
        ("busybox\t", "whitespace or control characters"),
        ("busy\x07box", "whitespace or control characters"),
        ("b" * 256, "is 256 characters; at most 255"),
        ("BusyBox", "is not an image reference"),
        ("busybox:", "is not an image reference"),
        ("/busybox", "is not an image reference"),
        ("busybox;rm", "is not an image reference"),
    ],
)
def test_setting_refuses_what_is_not_an_image(clean_env: pytest.MonkeyPatch, value: str, words: str) -> None:
    clean_env.setenv(ENV, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    message = str(info.value)
    assert ENV in message and words in message
    assert check_image_reference(value) is not None


def test_cli_names_the_variable_of_a_bad_value() -> None:
    result = lessonctl("render", "config/lessons/busybox-triangle.yaml", "--session", "s1", env={ENV: "not an image"})
    assert result.returncode == 2
    assert ENV in result.stderr and "whitespace" in result.stderr
    no_traceback(result)


# --- lessonctl render -------------------------------------------------------------------------------------------


def test_render_honours_the_setting() -> None:
    args = ("render", str(CURRICULUM), "--lesson", "jsnapy-network-testing", "--session", "s1", "--id", "abcde12345")
    plain, sub = lessonctl(*args), lessonctl(*args, env={ENV: "busybox"})
    assert plain.returncode == 0 and sub.returncode == 0, plain.stderr + sub.stderr
    plain_docs, sub_docs = documents(plain.stdout), documents(sub.stdout)
    images = [d["spec"]["containers"][0]["image"] for d in sub_docs if d["kind"] == "Pod"]
    assert images == ["busybox"] * 4
    assert {d["spec"]["containers"][0]["image"] for d in plain_docs if d["kind"] == "Pod"} == {
        "antidotelabs/utility",
        "antidotelabs/crpd",
    }
    # everything but the containers is the same document for document
    for a, b in zip(plain_docs, sub_docs, strict=True):
        if a["kind"] == "Pod":
            a["spec"]["containers"][0].pop("image"), b["spec"]["containers"][0].pop("image")
            a["spec"]["containers"][0].pop("command", None), b["spec"]["containers"][0].pop("command")
        assert a == b


# --- the record, lessonctl status, the status page ---------------------------------------------------------------


def test_record_round_trip_and_old_records() -> None:
    _, record = live_record(triangle())
    record.image_substitute = "busybox"
    text = record.to_json()
    assert json.loads(text)["image_substitute"] == "busybox"
    assert LiveLesson.model_validate_json(text) == record
    old = json.loads(text)
    del old["image_substitute"]  # a record written before the setting existed
    assert LiveLesson.model_validate_json(json.dumps(old)).image_substitute is None


def test_status_says_it(capsys: pytest.CaptureFixture[str]) -> None:
    _, record = live_record(triangle())
    output.print_record(record, as_json=False)
    assert "LESSON_IMAGE_SUBSTITUTE" not in capsys.readouterr().out
    record.image_substitute = "busybox"
    output.print_record(record, as_json=False)
    assert substitute_note("busybox") == NOTE
    assert NOTE in " ".join(capsys.readouterr().out.split())
    output.print_record(record, as_json=True)
    assert json.loads(capsys.readouterr().out)["image_substitute"] == "busybox"


def test_status_page_says_it(clean_env: pytest.MonkeyPatch) -> None:
    lesson = triangle()
    _, record = live_record(lesson)
    catalog, settings = load_catalog(CATALOG), Settings()
    at = record.updated_at + timedelta(seconds=1)
    assert "LESSON_IMAGE_SUBSTITUTE" not in bytes(livelesson_html(record, catalog, settings, at).body).decode()
    record.image_substitute = "busybox"
    page = bytes(livelesson_html(record, catalog, settings, at).body).decode()
    assert f'<p class="meta substitute">{NOTE}.</p>' in page
    assert page.index(NOTE) < page.index('<table class="endpoints">')  # where the pods are shown


# --- the pipeline records it --------------------------------------------------------------------------------------


@pytest.mark.parametrize("substitute", [None, "busybox"])
def test_the_pipeline_plans_with_it_and_records_it(
    settings_for: Callable[..., Settings], substitute: str | None
) -> None:
    settings = settings_for(image_substitute=substitute, catalog=CURRICULUM)
    store = Store.from_settings(settings)
    backend = FakeBackend(instance=settings.instance, deployment=store.deployment())
    pipeline = Pipeline(settings, store, backend, load_catalog(CURRICULUM))
    record = store.create("jsnapy-network-testing", "alice", backend="local").record
    assert isinstance(pipeline.create_networks(record.id), Next)
    assert isinstance(pipeline.schedule_pods(record.id), Next)
    after = store.require(record.id)
    assert after.image_substitute == substitute
    assert [p.image_substitute for p in backend.applied] == [substitute, substitute]
    pods = backend.applied[-1].pods
    if substitute is None:
        assert "antidotelabs/utility" in {p.image for p in pods}
    else:
        assert {p.image for p in pods} == {substitute}
