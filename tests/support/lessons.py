"""Sample lessons: repository paths, the seed triangle and a ready record of any lesson."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from scheduler.core.lessons import ResolvedLesson, parse_lesson, resolve
from scheduler.core.plan import Plan, make_plan
from scheduler.core.records import Check, EndpointState, Interface, LiveLesson, StepTiming, now
from scheduler.services.catalog import load_paths

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "config" / "lessons"
CURRICULUM = REPO / "tests" / "data" / "antidote-curriculum"
TRIANGLE = CATALOG / "busybox-triangle.yaml"


# h1 - h2 - h3; h1 serves http on 8080 (busybox httpd, its root /etc) and declares it as a presentation
NAMES_LESSON = """\
slug: names
name: Names
description: Endpoints reach each other by name
shortDescription: Names
category: fundamentals
tier: prod
endpoints:
- name: h1
  image: busybox
  command: [httpd, -f, -p, "8080", -h, /etc]
  presentations: [{name: web, type: http, port: 8080}]
- name: h2
  image: busybox
  command: [sleep, infinity]
- name: h3
  image: busybox
  command: [sleep, infinity]
connections:
- {a: h1, b: h2}
- {a: h2, b: h3}
"""


def names_catalog(folder: Path) -> Path:
    """A catalog folder under ``folder`` with NAMES_LESSON (slug ``names``) and the seed's triangle."""
    catalog = folder / "catalog"
    catalog.mkdir()
    (catalog / "names.yaml").write_text(NAMES_LESSON)
    (catalog / "busybox-triangle.yaml").write_text(TRIANGLE.read_text())
    return catalog


def ring_lesson(count: int, slug: str = "ring") -> str:
    """A lesson file of ``count`` busybox hosts h1..hN in a ring (h1-h2, ..., hN-h1)."""
    lines = [f"slug: {slug}", f"name: Ring of {count}", "description: A ring", "shortDescription: Ring"]
    lines += ["category: fundamentals", "tier: prod", "endpoints:"]
    lines += [f"- {{name: h{k}, image: busybox, command: [sleep, infinity]}}" for k in range(1, count + 1)]
    lines += ["connections:"]
    lines += [f"- {{a: h{k}, b: h{k % count + 1}}}" for k in range(1, count + 1)]
    return "\n".join(lines) + "\n"


def ring(count: int) -> ResolvedLesson:
    """:func:`ring_lesson`, resolved."""
    return resolve(parse_lesson(ring_lesson(count)), f"<ring of {count}>", None)


def triangle() -> ResolvedLesson:
    """The seed's busybox-triangle (12-net, 23-net, 31-net), resolved."""
    lesson = load_paths([TRIANGLE]).get("busybox-triangle")
    assert lesson is not None
    return lesson


def live_record(
    lesson: ResolvedLesson,
    livelesson: str = "abcde12345",
    *,
    failed: frozenset[str] = frozenset(),
    unmeasured: frozenset[str] = frozenset(),
    instance: str = "lessons",
    session: str = "alice",
) -> tuple[Plan, LiveLesson]:
    """A ready record as the pipeline writes it: .2 on side a, .3 on side b, pings per ``failed``."""
    plan = make_plan(lesson, livelesson, session, instance=instance)
    address: dict[tuple[str, str], str] = {}
    endpoints = {}
    for pod in plan.pods:
        interfaces = []
        for itf in pod.attachments:
            net = plan.network(itf.network)
            host = net.subnet.network_address + (2 if pod.endpoint == net.a else 3)
            address[(pod.endpoint, itf.network)] = (
                pod.main_address if itf.network == "main" else f"{host}/{net.subnet.prefixlen}"
            )
            interfaces.append(
                Interface(name=itf.name, network=itf.network, address=address[(pod.endpoint, itf.network)])
            )
        endpoints[pod.endpoint] = EndpointState(pod=pod.name, ready=True, interfaces=interfaces)
    checks = [
        Check(
            source=c.source,
            target=c.target,
            network=c.network,
            address=address[(c.target, c.network)].split("/")[0],
            by_name=c.by_name,
            sent=3,
            received=0 if c.network in failed else 3,
            rtt_avg_ms=None if c.network in failed else 0.042,
            ok=c.network not in failed,
        )
        for c in plan.checks
        if c.network not in unmeasured
    ]
    t0 = now() - timedelta(seconds=20)
    steps = {
        step: StepTiming(started_at=t0 + timedelta(seconds=i), finished_at=t0 + timedelta(seconds=i + 0.5), attempts=1)
        for i, step in enumerate(("create_networks", "schedule_pods", "wait_ready", "verify_connectivity"))
    }
    record = LiveLesson(
        id=livelesson,
        lesson=lesson.slug,
        session=session,
        instance=instance,
        backend="local",
        status="ready",
        namespace=f"{instance}-{livelesson}",
        node=f"{instance}-node",
        created_at=t0,
        ready_at=t0 + timedelta(seconds=4),
        expires_at=t0 + timedelta(minutes=30),
        updated_at=t0 + timedelta(seconds=4),
        steps=steps,
        endpoints=endpoints,
        checks=checks,
    )
    return plan, record
