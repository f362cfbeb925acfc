"""The lesson model, in two stages: raw (as written, Antidote's `lesson.meta.yaml`) and resolved.

Pure: text in, models or a :class:`~scheduler.core.errors.LessonError` out. Reading files is
``scheduler.services.catalog``'s job. Every problem names the source, the path inside it
(``connections[1].subnet``) and what is wrong in words.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from scheduler.core.errors import LessonError, Problem, shorten

__all__ = [
    "DNS1123_LABEL",
    "MIN_PREFIX",
    "SPECIAL_SUBNETS",
    "Connection",
    "Endpoint",
    "Image",
    "Lesson",
    "Presentation",
    "ResolvedEndpoint",
    "ResolvedLesson",
    "ResolvedLink",
    "check_image_reference",
    "check_reserved",
    "check_special",
    "is_dns1123_label",
    "parse_image",
    "parse_lesson",
    "resolve",
    "shorten",
]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PREVIEW_TIERS = frozenset({"ptr", "local"})
MIN_PREFIX = 29  # a /29 leaves six hosts: enough for a link and its gateway-less peers

# ranges no lesson link may use, whatever the deployment: what each one is, in words. Public ranges stay
# allowed (labs use them on purpose); the deployment's own ranges come from LESSON_RESERVED_SUBNETS.
SPECIAL_SUBNETS: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (ipaddress.IPv4Network("0.0.0.0/8"), '"this network" (RFC 1122: a source only, never a destination)'),
    (ipaddress.IPv4Network("127.0.0.0/8"), "loopback"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "multicast"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "reserved (former class E, with the broadcast address 255.255.255.255)"),
)

# an image reference as container runtimes parse it (distribution/reference): [host[:port]/]path[:tag][@digest]
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)
IMAGE_REFERENCE_MAX = 255


def check_image_reference(value: str) -> str | None:
    """Why ``value`` is not an image reference (``busybox``, ``registry:5000/org/img:1.2@sha256:...``),
    or None."""
    if not value:
        return "is empty"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"{shorten(value)} contains whitespace or control characters"
    if len(value) > IMAGE_REFERENCE_MAX:
        return f"{shorten(value[:20] + '...')} is {len(value)} characters; at most {IMAGE_REFERENCE_MAX}"
    if not IMAGE_REFERENCE.fullmatch(value):
        return (
            f"{shorten(value)} is not an image reference such as busybox, busybox:1.36 or "
            "registry.example:5000/org/image:tag"
        )
    return None


def _names(names: Sequence[str], limit: int = 10) -> str:
    """A list of known names for a message: the first ``limit``, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_special(net: ipaddress.IPv4Network) -> str | None:
    """Why ``net`` cannot carry a lesson link (default route, loopback, link-local, ...), or None."""
    if net.prefixlen == 0:
        return f"{net} is the default route (every IPv4 address); a link needs a unicast range such as 10.10.12.0/24"
    for special, what in SPECIAL_SUBNETS:
        if net.overlaps(special):
            how = "is inside" if net.subnet_of(special) else "overlaps"
            return f"{net} {how} {special}, which is {what}; a link needs a unicast range such as 10.10.12.0/24"
    return None


def check_reserved(
    net: ipaddress.IPv4Network, reserved: Sequence[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network | None:
    """The first of the deployment's ``reserved`` ranges (LESSON_RESERVED_SUBNETS) that ``net`` overlaps."""
    return next((r for r in reserved if net.overlaps(r)), None)


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(DNS1123_LABEL.match(value))


def _label(value: str) -> str:
    if len(value) > 63:
        raise ValueError(f"{shorten(value[:20] + '...')} is {len(value)} characters; a DNS-1123 label has at most 63")
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{shorten(value)} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is outside 1-65535")
    return value


class _Model(BaseModel):
    # scalars are strict (Str/Int/Bool below): a port written "22" or a name written 12 is a mistake
    # worth reporting, not coercing
    # only the documented (camelCase) keys: "ready_delay" would be a second spelling that passes silently
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class Presentation(_Model):
    name: StrictStr
    port: StrictInt
    type: Literal["ssh", "http"]

    _name = field_validator("name")(_label)
    _port = field_validator("port")(_port)


class Endpoint(_Model):
    name: StrictStr
    image: str = Field(min_length=1)
    configuration_type: StrictStr | None = None
    additional_ports: tuple[Annotated[StrictInt, AfterValidator(_port)], ...] = ()  # path names the item
    presentations: tuple[Presentation, ...] = ()
    # additions to Antidote's format: what the pod runs, when the image's default is not wanted
    command: tuple[StrictStr, ...] | None = None
    args: tuple[StrictStr, ...] | None = None

    _name = field_validator("name")(_label)

    @property
    def ports(self) -> tuple[int, ...]:
        """Every declared port, presentations first, without repeats."""
        seen: dict[int, None] = {}
        for port in (*(p.port for p in self.presentations), *self.additional_ports):
            seen.setdefault(port, None)
        return tuple(seen)


class Connection(_Model):
    a: StrictStr
    b: StrictStr
    subnet: StrictStr | None = None

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            net = ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            raise ValueError(f"{shorten(value)} is not an IPv4 CIDR such as 10.10.12.0/24") from None
        if "/" not in value:
            raise ValueError(f"{shorten(value)} has no prefix length; write it as {net.network_address}/24")
        try:
            ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{shorten(value)} has host bits set; did you mean {net}?") from None
        if net.prefixlen > MIN_PREFIX:
            raise ValueError(f"{shorten(value)} is smaller than /{MIN_PREFIX}; a link needs at least /{MIN_PREFIX}")
        special = check_special(net)
        if special is not None:
            raise ValueError(special)
        return str(net)

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        return ipaddress.IPv4Network(self.subnet) if self.subnet else None


class Stage(_Model):
    description: StrictStr = ""
    guide_type: StrictStr | None = None
    stage_video: StrictStr | None = None


class Author(_Model):
    name: StrictStr
    link: str | None = None


class Lesson(_Model):
    slug: StrictStr
    name: str
    description: StrictStr = ""
    short_description: StrictStr = ""
    category: StrictStr | None = None
    tier: StrictStr | None = None
    prereqs: tuple[StrictStr, ...] = ()
    tags: tuple[StrictStr, ...] = ()
    collection: StrictStr | None = None
    authors: tuple[Author, ...] = ()
    diagram: StrictStr | None = None
    video: StrictStr | None = None
    ready_delay: StrictInt = Field(default=0, ge=0, le=3600)
    stages: tuple[Stage, ...] = ()
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)
    connections: tuple[Connection, ...] = ()

    _slug = field_validator("slug")(_label)


class Image(_Model):
    """An Antidote `images/<slug>/image.meta.yaml`."""

    slug: StrictStr
    description: str = ""
    flavor: Literal["trusted", "untrusted"] = "untrusted"
    enable_forwarding: StrictBool = False
    ssh_user: StrictStr | None = None
    ssh_password: StrictStr | None = None
    config_user: StrictStr | None = None
    config_password: StrictStr | None = None

    _slug = field_validator("slug")(_label)


@dataclass(frozen=True)
class ResolvedEndpoint:
    name: str
    image: str  # the reference a runtime pulls, e.g. "busybox" or "antidotelabs/utility"
    flavor: Literal["trusted", "untrusted"]
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


# --- parsing -------------------------------------------------------------------------------------------


class _Refused(yaml.YAMLError):
    """Well-formed YAML that a lesson file may not use (anchors, aliases, merge keys)."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice: YAML keeps the last one, silently dropping the first
    (a second ``connections:`` would erase the links above it).

    It also refuses anchors, aliases and merge keys before anything is built from them: nine anchors of
    nine aliases each expand to 9**9 values from a few hundred bytes (the "billion laughs"), and the
    Antidote format never needs them.
    """

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                f"YAML aliases (*{shorten(event.anchor)[1:-1]}) are not allowed in lesson files", event.start_mark
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _Refused(
                f"YAML anchors (&{shorten(anchor)[1:-1]}) and aliases are not allowed in lesson files",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused("YAML merge keys (<<) are not allowed in lesson files", key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"the key {shorten(key)} appears twice", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def _load_yaml(text: str | bytes, source: str) -> Mapping[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise LessonError([Problem(source, "", f"{_where(exc.problem_mark)}{exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        where = _where(getattr(exc, "problem_mark", None))
        problem = _cut(getattr(exc, "problem", None) or (str(exc).splitlines() or [""])[0])
        raise LessonError([Problem(source, "", f"malformed YAML: {where}{problem}")]) from exc
    except UnicodeDecodeError as exc:  # undecodable bytes
        raise LessonError([Problem(source, "", f"not a text file: {exc}")]) from exc
    except RecursionError as exc:
        raise LessonError([Problem(source, "", "malformed YAML: nested too deeply")]) from exc
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as exc:
        # PyYAML's own scalar constructors fail like this on odd values: `!!int ''`, `!!bool ''`,
        # `!!timestamp x`, `!!float +`, an integer of 5000 digits
        detail = _cut((str(exc).splitlines() or [""])[0]) or type(exc).__name__
        raise LessonError([Problem(source, "", f"malformed YAML: a value cannot be read ({detail})")]) from exc
    if data is None:
        raise LessonError([Problem(source, "", "the file is empty")])
    if not isinstance(data, dict):
        raise LessonError([Problem(source, "", f"the top level must be a mapping, not {_kind(data)}")])
    return data


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _cut(text: str, limit: int = 200) -> str:
    """A message from PyYAML or a constructor may quote the input (a tag, a scalar): keep it short."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "list": "a list",
        "dict": "a mapping",
        "NoneType": "nothing (null)",
    }.get(type(value).__name__, type(value).__name__)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):  # a key with spaces or a newline: quoted, so it stays one line
            out += f"[{shorten(str(part))}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that owns the key at ``loc`` (to list the allowed keys on a typo)."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        inner = field.annotation
        for arg in (*getattr(inner, "__args__", ()), inner):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
        else:
            return None
    return current


def _problems(exc: ValidationError, model: type[BaseModel], source: str, data: object) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = ", ".join(sorted(f.alias or n for n, f in owner.model_fields.items())) if owner else ""
            message = f"unknown key {shorten(loc[-1])}" + (f" (allowed: {allowed})" if allowed else "")
        elif kind == "missing":
            message = "required field is missing"
        elif kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]}, got {_kind(value)}"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"{shorten(value)} is not one of {expected}"
        elif kind == "too_short" and tuple(loc) == ("endpoints",):
            if value:  # endpoints were given but failed validation; their own problems say why
                continue
            message = "a lesson needs at least one endpoint"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            message = _cut(err["msg"][0].lower() + err["msg"][1:])
        problems.append(Problem(source, _path(loc), message))
    return problems


def parse_lesson(text: str | bytes, source: str = "<lesson>") -> Lesson:
    """Parse and validate one lesson document (structure and the lesson's own consistency)."""
    data = _load_yaml(text, source)
    try:
        lesson = Lesson.model_validate(data)
    except ValidationError as exc:
        raise LessonError(_problems(exc, Lesson, source, data)) from exc
    problems = _consistency(lesson, source)
    if problems:
        raise LessonError(problems)
    return lesson


def parse_image(text: str | bytes, source: str = "<image>") -> Image:
    data = _load_yaml(text, source)
    try:
        return Image.model_validate(data)
    except ValidationError as exc:
        raise LessonError(_problems(exc, Image, source, data)) from exc


def _consistency(lesson: Lesson, source: str) -> list[Problem]:
    problems: list[Problem] = []
    names: list[str] = []
    for i, ep in enumerate(lesson.endpoints):
        if ep.name in names:
            problems.append(Problem(source, f"endpoints[{i}].name", f"duplicate endpoint name {shorten(ep.name)}"))
        names.append(ep.name)
    known = _names(names)
    subnets: dict[str, list[tuple[int, ipaddress.IPv4Network]]] = {}
    for i, conn in enumerate(lesson.connections):
        for side in ("a", "b"):
            name = getattr(conn, side)
            if name not in names:
                problems.append(
                    Problem(
                        source,
                        f"connections[{i}].{side}",
                        f"endpoint {shorten(name)} is not defined (known: {known})",
                    )
                )
        if conn.a == conn.b:
            problems.append(Problem(source, f"connections[{i}]", f"endpoint {shorten(conn.a)} is connected to itself"))
        net = conn.network
        if net is None:
            continue
        # one report per link (its first clash), so n clashing links give n lines, not n^2/2
        clash = next(
            ((name, j, other) for name in sorted({conn.a, conn.b}) for j, other in subnets.get(name, [])
             if net.overlaps(other)),
            None,
        )  # fmt: skip
        if clash is not None:
            name, j, other = clash
            problems.append(
                Problem(
                    source,
                    f"connections[{i}].subnet",
                    f"{net} overlaps {other} of connections[{j}] on endpoint {shorten(name)}",
                )
            )
        for name in {conn.a, conn.b}:
            subnets.setdefault(name, []).append((i, net))
    return problems


def _reference(slug: str, registry: str) -> str:
    return f"{registry}/{slug}" if registry else slug


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
        flavor: Literal["trusted", "untrusted"] = "untrusted"
        forwarding = False
        reference = ep.image
        if images is not None:
            image = images.get(ep.image)
            if image is None and lesson.tier in PREVIEW_TIERS:
                # Antidote served preview-tier lessons whose images were not in the catalog yet
                # (three in the NRE Labs curriculum); they run from the plain reference
                endpoints.append(
                    ResolvedEndpoint(
                        ep.name,
                        _reference(ep.image, image_registry),
                        "untrusted",
                        ep.ports,
                        ep.command,
                        ep.args,
                        False,
                        ep.presentations,
                    )
                )
                continue
            if image is None:
                known = _names(sorted(images), limit=20) or "none"
                problems.append(
                    Problem(
                        source,
                        f"endpoints[{i}].image",
                        f"image {shorten(ep.image)} is not in the catalog (known: {known})",
                    )
                )
                continue
            flavor, forwarding = image.flavor, image.enable_forwarding
            reference = _reference(image.slug, image_registry)
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
