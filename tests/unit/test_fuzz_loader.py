"""Fuzzing the lesson loader: any bytes or YAML document gives a Lesson or a LessonError, never another exception.

Hypothesis drives five shapes of input, from raw noise to near-valid lessons:

- arbitrary bytes and arbitrary text (encodings, NULs, control characters);
- token soup: YAML syntax (anchors, tags, flow collections, block scalars, directives) glued at random;
- random YAML trees whose keys are mostly the format's own (so validation, not parsing, is exercised);
- mutations of the real lessons in config/lessons and the NRE Labs curriculum (one field changed, removed,
  duplicated or retyped), which reach the consistency checks and subnet rules;
- whole catalogs on disk (flat folder and Antidote layout with fuzzed image files) through ``load_catalog``.

``make test`` runs a bounded number of examples per property (``FUZZ_EXAMPLES``, default 500); the long
run sets ``FUZZ_EXAMPLES=10000``. Each property counts what it ran; ``FUZZ_REPORT=path`` appends the counts
(one JSON line per property) so docs/reliability.md can quote a measured figure.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core.errors import LessonError, SchedulerError
from scheduler.core.lessons import Lesson, parse_image, parse_lesson, resolve
from scheduler.core.plan import make_plan
from scheduler.services.catalog import Catalog, load_catalog
from tests.support.lessons import CURRICULUM, REPO

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    derandomize=os.environ.get("FUZZ_RANDOM", "") == "",  # reproducible in CI; FUZZ_RANDOM=1 explores anew
)

RAN: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    target = os.environ.get("FUZZ_REPORT")
    if target:
        with Path(target).open("a") as handle:
            for name, count in sorted(RAN.items()):
                line = {
                    "property": name,
                    "examples": count,
                    "lessons": OUTCOMES[f"{name}:lesson"],
                    "errors": OUTCOMES[f"{name}:error"],
                }
                handle.write(json.dumps(line) + "\n")


def check_lesson(name: str, data: str | bytes) -> Lesson | None:
    """The property: a Lesson, or a LessonError whose every problem names where and what, in one line each."""
    RAN[name] += 1
    try:
        lesson = parse_lesson(data, "fuzz.yaml")
    except LessonError as exc:
        OUTCOMES[f"{name}:error"] += 1
        assert exc.problems, "a LessonError without a problem"
        for problem in exc.problems:
            assert problem.source == "fuzz.yaml"
            assert problem.message
            assert "\n" not in str(problem), "a problem must stay on one line"
        return None
    OUTCOMES[f"{name}:lesson"] += 1
    assert isinstance(lesson, Lesson)
    # what the loader accepts, the planner can plan (or refuses with a validation error, e.g. a full pool)
    try:
        resolved = resolve(lesson, "fuzz.yaml", None)
        plan = make_plan(resolved, "abcdefghij", "fuzz", instance="fz")
    except SchedulerError as exc:
        assert not exc.transient
        return lesson
    assert len(plan.pods) == len(lesson.endpoints)
    return lesson


# --- strategies ------------------------------------------------------------------------------------------

KEYS = [
    # the format's own keys, at every level, so random trees reach the validators
    "slug", "name", "description", "shortDescription", "category", "tier", "prereqs", "tags", "collection",
    "authors", "link", "diagram", "video", "readyDelay", "stages", "guideType", "stageVideo", "endpoints",
    "connections", "image", "configurationType", "additionalPorts", "presentations", "port", "type", "command",
    "args", "a", "b", "subnet", "flavor", "enableForwarding", "sshUser",
]  # fmt: skip

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["r1", "r2", "bb1", "busybox", "ssh", "http", "10.10.12.0/24", "10.10.12.1/24",
                     "0.0.0.0/0", "255.255.255.255/32", "::1/128", "10.0.0.0/29", "10.0.0.0/30", "prod", "ptr",
                     "local", "trusted", "-", "", "a" * 64, "UPPER", "r1; rm -rf /", "$(id)", "`id`"]),
)  # fmt: skip

KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-5, 5), st.booleans())

TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(KEY, children, max_size=8),
    ),
    max_leaves=16,
)

TOKENS = [
    "slug: ", "name: ", "endpoints:\n", "connections:\n", "- ", "  ", "\n", ": ", "{", "}", "[", "]", ",", "&a ",
    "*a", "*b", "&b ", "!!python/object:os.system ", "!!binary ", "!!str ", "!!int ", "!!map ", "!!set ", "? ",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "|\n", ">-\n", "'", '"', "\\u0000", "\t", "#", "<<: ",
    "~", "null", "true", "0x1F", "0o17", "1e400", ".nan", "2001-01-01", "10.10.12.0/24", "r1", "busybox", "\x00",
    "\ufeff", "\r", "\x85", "\u2028", "=", "!", "@", "`",
]  # fmt: skip

SOUP = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=60).map("".join)


def _examples() -> list[dict[str, Any]]:
    docs = []
    files = sorted((REPO / "config" / "lessons").glob("*.yaml"))
    if CURRICULUM.is_dir():
        files += sorted(CURRICULUM.glob("lessons/*/lesson.meta.yaml"))[:8]
    for path in files:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            docs.append(data)
    return docs


EXAMPLES_DOCS = _examples()


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A real lesson with one to four edits: set a random value, delete, duplicate, or add an unknown key."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(EXAMPLES_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["set", "delete", "duplicate", "extra", "subnet"]))
        if action == "set":
            parent[last] = draw(TREES)
        elif action == "delete":
            del parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(SCALARS)
        elif action == "subnet":
            for conn in doc.get("connections") or []:
                if isinstance(conn, dict):
                    conn["subnet"] = draw(
                        st.one_of(
                            st.sampled_from(["10.10.12.0/24", "10.10.12.0/25", "10.10.12.128/25", "10.0.0.0/8"]),
                            st.builds(lambda a, p: f"10.{a}.0.0/{p}", st.integers(0, 300), st.integers(0, 33)),
                            SCALARS,
                        )
                    )
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


# --- properties ------------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes(data: bytes) -> None:
    check_lesson("bytes", data)


@FUZZ
@given(st.text(max_size=1024))
def test_any_text(text: str) -> None:
    check_lesson("text", text)


@FUZZ
@given(SOUP)
def test_yaml_token_soup(text: str) -> None:
    check_lesson("soup", text)


@FUZZ
@given(TREES)
def test_any_yaml_document(doc: Any) -> None:
    check_lesson("tree", dump(doc))


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=6))
def test_any_top_level_mapping(doc: dict[str, Any]) -> None:
    check_lesson("mapping", dump(doc))


@FUZZ
@given(mutated())
def test_mutated_real_lessons(doc: dict[str, Any]) -> None:
    check_lesson("mutated", dump(doc))


@FUZZ
@given(st.one_of(st.binary(max_size=512), TREES.map(dump), SOUP))
def test_any_image_file(data: str | bytes) -> None:
    RAN["image"] += 1
    try:
        parse_image(data, "image.meta.yaml")
        OUTCOMES["image:lesson"] += 1
    except LessonError as exc:
        OUTCOMES["image:error"] += 1
        assert exc.problems


CONTENT = st.one_of(
    st.binary(max_size=1024),
    SOUP,
    TREES.map(dump),
    mutated().map(dump),
)


def _load(root: Path) -> Catalog | None:
    try:
        catalog = load_catalog(root)
    except LessonError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.source.startswith(str(root)), problem  # every problem names its file
        return None
    assert len(catalog) >= 1
    return catalog


def _outcome(outcome: Catalog | None) -> str:
    return "lesson" if outcome else "error"


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)


@FUZZ
@given(st.lists(CONTENT, min_size=1, max_size=4))
def test_flat_catalog_of_fuzzed_files(files: list[str | bytes]) -> None:
    RAN["catalog-flat"] += 1
    with tempfile.TemporaryDirectory(prefix="fuzz-cat-") as tmp:
        root = Path(tmp)
        for i, data in enumerate(files):
            _write(root / f"lesson{i}.yaml", data)
        outcome = _load(root)
    OUTCOMES["catalog-flat:" + _outcome(outcome)] += 1


IMAGE_DOCS = st.one_of(
    st.builds(
        lambda slug, flavor: dump({"slug": slug, "flavor": flavor}),
        st.sampled_from(["busybox", "utility", "vqfx", "Bad Slug"]),
        st.sampled_from(["trusted", "untrusted", "root", 1]),
    ),
    CONTENT,
)


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "busybox-triangle", "x-y"]), CONTENT), min_size=1, max_size=3),
    st.lists(st.tuples(st.sampled_from(["busybox", "utility", "vqfx"]), IMAGE_DOCS), max_size=3),
)
def test_antidote_catalog_of_fuzzed_files(
    lessons: list[tuple[str, str | bytes]], images: list[tuple[str, str | bytes]]
) -> None:
    RAN["catalog-antidote"] += 1
    with tempfile.TemporaryDirectory(prefix="fuzz-cat-") as tmp:
        root = Path(tmp)
        (root / "lessons").mkdir()
        for slug, data in lessons:
            _write(root / "lessons" / slug / "lesson.meta.yaml", data)
        for slug, data in images:
            _write(root / "images" / slug / "image.meta.yaml", data)
        outcome = _load(root)
    OUTCOMES["catalog-antidote:" + _outcome(outcome)] += 1


def test_the_fuzzers_reach_both_outcomes() -> None:
    """Each property reached real lessons, not only parse errors (else it fuzzes nothing).

    Normally it runs after the properties and reads their counts; run alone (``-k``, a split run), it runs
    the properties it reads first, so it never skips and never passes on counts of zero.
    """
    properties: dict[str, Callable[[], None]] = {
        "mutated": test_mutated_real_lessons,
        "catalog-flat": test_flat_catalog_of_fuzzed_files,
        "catalog-antidote": test_antidote_catalog_of_fuzzed_files,
    }
    for name, prop in properties.items():
        if RAN[name] == 0:
            prop()
        assert RAN[name] > 0, f"the {name} property ran no example"
    assert OUTCOMES["mutated:lesson"] > 0, OUTCOMES
    assert OUTCOMES["mutated:error"] > 0, OUTCOMES
    assert OUTCOMES["catalog-flat:lesson"] + OUTCOMES["catalog-antidote:lesson"] > 0, OUTCOMES


# --- regressions the fuzzers found (fixed in scheduler/core/lessons/) ---------------------------------------------

CONSTRUCTOR_CRASHES = ["a: !!int ''", "a: !!float ''", "a: !!bool ''", "a: !!timestamp x", "!!int", "a: !!int +"]


@pytest.mark.parametrize("text", CONSTRUCTOR_CRASHES)
def test_yaml_constructor_crashes_are_lesson_errors(text: str) -> None:
    """PyYAML's own scalar constructors raise IndexError/KeyError/AttributeError on these."""
    with pytest.raises(LessonError, match="malformed YAML"):
        parse_lesson(text, "fuzz.yaml")


def test_a_key_ending_in_a_newline_is_quoted() -> None:
    """`^...$` also matches before a final newline: such a key must still be quoted, on one line."""
    with pytest.raises(LessonError) as info:
        parse_lesson('slug: a\nname: b\nendpoints: [{name: r1, image: x}]\n"x\\n": 1\n', "fuzz.yaml")
    assert all("\n" not in str(p) for p in info.value.problems), [str(p) for p in info.value.problems]
