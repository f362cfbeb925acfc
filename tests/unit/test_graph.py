"""Topology pictures: Mermaid, dot and SVG of lessons and of live lessons, and `lessonctl graph`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from lessonctl.cli import main
from scheduler.core import drawing as graph
from scheduler.core.lessons import ResolvedLesson, parse_lesson, resolve
from scheduler.core.plan import make_plan
from scheduler.services.catalog import load_catalog, load_paths
from tests.support.lessons import CURRICULUM, REPO, TRIANGLE, live_record, triangle

SVG = "{http://www.w3.org/2000/svg}"


def lesson_from(text: str) -> ResolvedLesson:
    return resolve(parse_lesson(text, "test.yaml"), "test.yaml", None)


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg"
    return root


def links_of(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}path") if e.get("class") == "link"]


# --- lessons -------------------------------------------------------------------------------------------


def test_triangle_topology_has_three_endpoints_and_three_links_with_their_subnets() -> None:
    topology = graph.lesson_topology(triangle())
    assert [n.name for n in topology.nodes] == ["bb1", "bb2", "bb3"]
    assert [(link.name, link.a, link.b, link.subnet) for link in topology.links] == [
        ("bb1-bb2", "bb1", "bb2", "10.10.12.0/24"),
        ("bb2-bb3", "bb2", "bb3", "10.10.23.0/24"),
        ("bb3-bb1", "bb3", "bb1", "10.10.31.0/24"),
    ]
    assert not topology.live and all(link.state is None for link in topology.links)


def test_mermaid_of_the_triangle_names_every_endpoint_and_link() -> None:
    text = graph.to_mermaid(graph.lesson_topology(triangle()))
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "graph LR"
    for name in ("bb1", "bb2", "bb3"):
        assert f'{name}["{name}"]' in lines
    edges = [line for line in lines if "---" in line]
    assert edges == [
        'bb1 ---|"bb1-bb2 10.10.12.0/24"| bb2',
        'bb2 ---|"bb2-bb3 10.10.23.0/24"| bb3',
        'bb3 ---|"bb3-bb1 10.10.31.0/24"| bb1',
    ]
    assert "linkStyle" not in text  # nothing measured, nothing coloured


def test_subnets_left_to_the_pool_are_drawn_as_a_live_lesson_would_get_them() -> None:
    lesson = load_paths([REPO / "config" / "lessons" / "busybox-line.yaml"]).get("busybox-line")
    assert lesson is not None
    topology = graph.lesson_topology(lesson, subnet_pool="172.20.0.0/16")
    assert [link.subnet for link in topology.links] == ["172.20.0.0/24", "172.20.1.0/24", "172.20.2.0/24"]


def test_mermaid_ids_avoid_its_keywords_and_edge_syntax() -> None:
    lesson = lesson_from(
        "slug: odd\nname: Odd names\nendpoints:\n- {name: end, image: busybox}\n- {name: a--b, image: busybox}\n"
        "- {name: ok, image: busybox}\nconnections:\n- {a: end, b: a--b}\n- {a: a--b, b: ok}\n"
    )
    text = graph.to_mermaid(graph.lesson_topology(lesson))
    assert 'node_0["end"]' in text and 'node_1["a--b"]' in text and 'ok["ok"]' in text
    assert 'node_0 ---|"end-a--b 10.10.0.0/24"| node_1' in text
    assert not re.search(r"^\s*end\b", text, re.MULTILINE)  # a bare `end` would close a subgraph


def test_text_is_escaped_in_every_format() -> None:
    nasty = 'Lab "<script>alert(1)</script>" & {x} | \\ done'
    lesson = lesson_from(
        f"slug: nasty\nname: '{nasty}'\nendpoints:\n- {{name: r1, image: busybox}}\n- {{name: r2, image: busybox}}\n"
        "connections:\n- {a: r1, b: r2}\n"
    )
    topology = graph.lesson_topology(lesson)
    assert topology.title == nasty
    mermaid = graph.to_mermaid(topology)
    assert "<script>" not in mermaid and '"<' not in mermaid and "#quot;" in mermaid
    dot = graph.to_dot(topology)
    assert dot.startswith('graph "Lab \\"<script>alert(1)</script>\\" & {x} | \\\\ done" {')
    root = parse_svg(graph.to_svg(topology))
    assert root.findtext(f"{SVG}title") == nasty  # escaped on the way in, intact once parsed
    assert "<script>" not in graph.to_svg(topology)


def test_dot_is_a_graph_with_one_edge_per_link() -> None:
    dot = graph.to_dot(graph.lesson_topology(triangle()))
    assert dot.startswith('graph "Busybox triangle" {') and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    edges = re.findall(r'^\s*"(\w+)" -- "(\w+)" \[label="([^"]+)"\];$', dot, re.MULTILINE)
    assert edges == [
        ("bb1", "bb2", "bb1-bb2 10.10.12.0/24"),
        ("bb2", "bb3", "bb2-bb3 10.10.23.0/24"),
        ("bb3", "bb1", "bb3-bb1 10.10.31.0/24"),
    ]


def test_svg_draws_nodes_links_and_subnet_labels_inside_its_viewbox() -> None:
    root = parse_svg(graph.to_svg(graph.lesson_topology(triangle())))
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert [g.get("data-endpoint") for g in nodes] == ["bb1", "bb2", "bb3"]
    assert [p.get("data-link") for p in links_of(root)] == ["bb1-bb2", "bb2-bb3", "bb3-bb1"]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for expected in ("bb1", "bb2", "bb3", "10.10.12.0/24", "10.10.23.0/24", "10.10.31.0/24"):
        assert expected in texts
    # everything drawn lies inside the viewBox
    x0, y0, w, h = (float(v) for v in root.get("viewBox", "").split())
    for rect in root.iter(f"{SVG}rect"):
        x, y = float(rect.get("x", 0)), float(rect.get("y", 0))
        assert x0 <= x and x + float(rect.get("width", 0)) <= x0 + w
        assert y0 <= y and y + float(rect.get("height", 0)) <= y0 + h


def node_boxes(root: ET.Element) -> list[tuple[float, float, float, float]]:
    boxes = []
    for g in root.iter(f"{SVG}g"):
        rect = g.find(f"{SVG}rect")
        assert rect is not None
        x, y = float(rect.get("x", 0)), float(rect.get("y", 0))
        boxes.append((x, y, x + float(rect.get("width", 0)), y + float(rect.get("height", 0))))
    return boxes


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("slug", ["busybox-triangle", "busybox-hub", "busybox-line"])
def test_svg_node_boxes_and_labels_do_not_overlap(slug: str) -> None:
    lesson = load_catalog(REPO / "config" / "lessons").get(slug)
    assert lesson is not None
    _, record = live_record(lesson)
    root = parse_svg(
        graph.to_svg(graph.live_topology(make_plan(lesson, record.id, "alice", instance="lessons"), record))
    )
    nodes = node_boxes(root)
    plates = [
        (float(r.get("x", 0)), float(r.get("y", 0)), float(r.get("x", 0)) + float(r.get("width", 0)),
         float(r.get("y", 0)) + float(r.get("height", 0)))
        for r in root.iter(f"{SVG}rect") if r.get("class") == "plate"
    ]  # fmt: skip
    for i, a in enumerate(nodes + plates):
        for b in (nodes + plates)[i + 1 :]:
            assert not overlap(a, b), (a, b)


def test_a_star_puts_its_hub_in_the_middle() -> None:
    lesson = load_catalog(REPO / "config" / "lessons").get("busybox-hub")
    assert lesson is not None
    root = parse_svg(graph.to_svg(graph.lesson_topology(lesson)))
    centres = {
        g.get("data-endpoint"): (float(t.get("x", 0)), float(t.get("y", 0)))
        for g in root.iter(f"{SVG}g")
        if (t := g.find(f"{SVG}text")) is not None
    }
    assert centres["hub"] == pytest.approx((0.0, 0.0), abs=0.1)
    spokes = [abs(complex(*centres[f"s{i}"])) for i in range(1, 6)]
    assert max(spokes) - min(spokes) < 0.5


def test_parallel_links_are_drawn_apart() -> None:
    lesson = lesson_from(
        "slug: twice\nname: Twice\nendpoints:\n- {name: r1, image: busybox}\n- {name: r2, image: busybox}\n"
        "connections:\n- {a: r1, b: r2}\n- {a: r2, b: r1}\n- {a: r1, b: r2}\n"
    )
    root = parse_svg(graph.to_svg(graph.lesson_topology(lesson)))
    paths = links_of(root)
    assert [p.get("data-link") for p in paths] == ["r1-r2", "r2-r1", "r1-r2-2"]
    controls = set()
    for p in paths:
        match = re.search(r"Q(-?[\d.]+),(-?[\d.]+)", p.get("d", ""))
        assert match
        controls.add((round(float(match[1])), round(float(match[2]))))
    assert len(controls) == 3


def test_a_single_endpoint_without_links_still_draws() -> None:
    lesson = lesson_from("slug: one\nname: One\nendpoints:\n- {name: solo, image: busybox}\n")
    root = parse_svg(graph.to_svg(graph.lesson_topology(lesson)))
    assert [g.get("data-endpoint") for g in root.iter(f"{SVG}g")] == ["solo"]
    assert graph.to_mermaid(graph.lesson_topology(lesson)).splitlines()[2] == '  solo["solo"]'


def test_every_curriculum_lesson_draws_in_every_format() -> None:
    assert (CURRICULUM / "lessons").is_dir(), f"the vendored curriculum is missing at {CURRICULUM}"
    catalog = load_catalog(CURRICULUM)
    assert len(catalog) > 10
    for lesson in catalog:
        topology = graph.lesson_topology(lesson)
        assert len(topology.links) == len(lesson.connections)
        root = parse_svg(graph.to_svg(topology))
        assert len(links_of(root)) == len(lesson.connections)
        mermaid = graph.to_mermaid(topology)
        assert sum("---|" in line for line in mermaid.splitlines()) == len(lesson.connections)
        assert graph.to_dot(topology).count(" -- ") == len(lesson.connections)


# --- live lessons --------------------------------------------------------------------------------------


def test_live_topology_adds_addresses_and_colours_links_by_their_pings() -> None:
    plan, record = live_record(triangle(), failed=frozenset({"bb2-bb3"}), unmeasured=frozenset({"bb3-bb1"}))
    topology = graph.live_topology(plan, record)
    assert topology.live
    by_name = {link.name: link for link in topology.links}
    assert by_name["bb1-bb2"].state == "ok"
    assert by_name["bb2-bb3"].state == "failed"
    assert by_name["bb3-bb1"].state == "unknown"
    assert (by_name["bb1-bb2"].a_address, by_name["bb1-bb2"].b_address) == ("10.10.12.2/24", "10.10.12.3/24")
    assert {n.name: n.addresses for n in topology.nodes}["bb1"] == ("10.10.12.2/24", "10.10.31.3/24")

    root = parse_svg(graph.to_svg(topology))
    colours = {p.get("data-link"): (p.get("data-state"), p.get("stroke")) for p in links_of(root)}
    assert colours == {
        "bb1-bb2": ("ok", graph.COLOURS["ok"]),
        "bb2-bb3": ("failed", graph.COLOURS["failed"]),
        "bb3-bb1": ("unknown", graph.COLOURS["unknown"]),
    }
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"10.10.12.2/24", "10.10.12.3/24", "10.10.23.2/24", "10.10.23.3/24"} <= texts
    assert {"both directions ok", "ping failed", "not measured"} <= texts

    mermaid = graph.to_mermaid(topology)
    assert 'bb1["bb1<br/>10.10.12.2/24<br/>10.10.31.3/24"]' in mermaid
    assert f"linkStyle 0 stroke:{graph.COLOURS['ok']}" in mermaid
    assert f"linkStyle 1 stroke:{graph.COLOURS['failed']}" in mermaid
    assert f"linkStyle 2 stroke:{graph.COLOURS['unknown']}" in mermaid

    dot = graph.to_dot(topology)
    assert '"bb1" -- "bb2" [label="bb1-bb2 10.10.12.0/24", taillabel="10.10.12.2/24", headlabel="10.10.12.3/24"' in dot
    assert f'color="{graph.COLOURS["failed"]}"' in dot


def test_one_passing_direction_alone_is_not_green() -> None:
    plan, record = live_record(triangle())
    record.checks = [c for c in record.checks if not (c.source == "bb2" and c.target == "bb1")]
    states = {link.name: link.state for link in graph.live_topology(plan, record).links}
    assert states == {"bb1-bb2": "unknown", "bb2-bb3": "ok", "bb3-bb1": "ok"}


def test_a_record_without_its_lesson_still_draws_from_its_interfaces() -> None:
    _, record = live_record(triangle(), failed=frozenset({"bb3-bb1"}))
    topology = graph.from_record(record)
    assert [n.name for n in topology.nodes] == ["bb1", "bb2", "bb3"]
    assert {(link.name, link.state) for link in topology.links} == {
        ("bb1-bb2", "ok"),
        ("bb2-bb3", "ok"),
        ("bb3-bb1", "failed"),
    }
    assert all(link.subnet is None for link in topology.links)
    assert len(links_of(parse_svg(graph.to_svg(topology)))) == 3


def test_livelesson_topology_uses_the_plan_when_the_lesson_is_known() -> None:
    _, record = live_record(triangle())
    known = graph.livelesson_topology(record, triangle())
    assert [link.subnet for link in known.links] == ["10.10.12.0/24", "10.10.23.0/24", "10.10.31.0/24"]
    assert known.title == "Busybox triangle (abcde12345)"
    assert graph.livelesson_topology(record, None) == graph.from_record(record)


def test_render_dispatches_on_the_format_and_refuses_unknown_ones() -> None:
    topology = graph.lesson_topology(triangle())
    assert graph.draw(topology, "mermaid").startswith("graph LR")
    assert graph.draw(topology, "dot").startswith("graph ")
    assert graph.draw(topology, "svg").startswith("<svg")
    with pytest.raises(ValueError, match="unknown format 'png'"):
        graph.draw(topology, "png")


# --- lessonctl graph -----------------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("LESSON_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LESSON_LOG_FORMAT", "console")
    from scheduler.settings import get_settings

    get_settings.cache_clear()
    return CliRunner()


def test_lessonctl_graph_prints_the_triangle_as_mermaid() -> None:
    lessonctl = Path(sys.executable).with_name("lessonctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON_")}
    proc = subprocess.run([str(lessonctl), "graph", str(TRIANGLE)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == graph.to_mermaid(graph.lesson_topology(triangle()))
    assert proc.stdout.startswith("graph LR\n")
    for name in ("bb1", "bb2", "bb3"):
        assert name in proc.stdout
    assert proc.stdout.count("---|") == 3


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "svg"])
def test_lessonctl_graph_formats(runner: CliRunner, fmt: str) -> None:
    result = runner.invoke(main, ["graph", str(TRIANGLE), "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout == graph.draw(graph.lesson_topology(triangle()), fmt)


def test_lessonctl_graph_picks_a_lesson_from_a_folder(runner: CliRunner) -> None:
    result = runner.invoke(main, ["graph", str(REPO / "config" / "lessons"), "--lesson", "busybox-hub"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("---|") == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a lesson PATH or --livelesson ID"),
        ([str(TRIANGLE), "--livelesson", "abcde12345"], "give a lesson PATH or --livelesson ID, not both"),
        (["/nonexistent/lesson.yaml"], "no such file or directory"),
        ([str(TRIANGLE), "--format", "png"], "'png' is not one of"),
        ([str(REPO / "config" / "lessons")], "choose one with --lesson"),
        ([str(REPO / "config" / "lessons"), "--lesson", "nope"], "lesson 'nope' is not there"),
        (["--livelesson", "NOT-AN-ID"], "must be 10 lower-case letters or digits"),
    ],
)
def test_lessonctl_graph_bad_input_exits_2_with_a_message(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(main, ["graph", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_lessonctl_graph_reports_an_invalid_lesson_file(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slug: bad\nname: Bad\nendpoints:\n- {name: r1, image: busybox}\nconnections:\n- {a: r1, b: r9}\n")
    result = runner.invoke(main, ["graph", str(bad)])
    assert result.exit_code == 2
    assert "connections[0].b" in result.stderr and "endpoint 'r9' is not defined (known: r1)" in result.stderr
