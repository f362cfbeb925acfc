"""A lesson file as written (Antidote's `lesson.meta.yaml`, and `image.meta.yaml`): the raw models, strict
about keys and scalar types, and the lesson's own consistency (endpoint names, connection ends, overlapping
subnets). Pure: nothing here reads a file or knows the deployment.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.alias_generators import to_camel

from scheduler.core.checks import dns1123_label_problem
from scheduler.core.errors import Problem, shorten
from scheduler.core.lessons.problems import known_names

__all__ = [
    "MIN_PREFIX",
    "SPECIAL_SUBNETS",
    "Author",
    "Connection",
    "Endpoint",
    "Flavor",
    "Image",
    "Lesson",
    "Presentation",
    "Stage",
    "check_special",
    "consistency_problems",
]

Flavor = Literal["trusted", "untrusted"]  # an image's: trusted ones run privileged
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


def check_special(net: ipaddress.IPv4Network) -> str | None:
    """Why ``net`` cannot carry a lesson link (default route, loopback, link-local, ...), or None."""
    if net.prefixlen == 0:
        return f"{net} is the default route (every IPv4 address); a link needs a unicast range such as 10.10.12.0/24"
    for special, what in SPECIAL_SUBNETS:
        if net.overlaps(special):
            how = "is inside" if net.subnet_of(special) else "overlaps"
            return f"{net} {how} {special}, which is {what}; a link needs a unicast range such as 10.10.12.0/24"
    return None


def _label(value: str) -> str:
    problem = dns1123_label_problem(value)
    if problem is not None:
        raise ValueError(problem)
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
    flavor: Flavor = "untrusted"
    enable_forwarding: StrictBool = False
    ssh_user: StrictStr | None = None
    ssh_password: StrictStr | None = None
    config_user: StrictStr | None = None
    config_password: StrictStr | None = None

    _slug = field_validator("slug")(_label)


_SubnetsByEndpoint = dict[str, list[tuple[int, ipaddress.IPv4Network]]]  # endpoint -> (connection, subnet)


def consistency_problems(lesson: Lesson, source: str) -> list[Problem]:
    """What the lesson gets wrong about itself: repeated endpoint names, connections to unknown endpoints
    or to themselves, subnets that overlap on one endpoint. In file order, connection by connection."""
    names = [ep.name for ep in lesson.endpoints]
    problems = [
        Problem(source, f"endpoints[{i}].name", f"duplicate endpoint name {shorten(name)}")
        for i, name in enumerate(names)
        if name in names[:i]
    ]
    subnets: _SubnetsByEndpoint = {}
    for i, conn in enumerate(lesson.connections):
        problems += _end_problems(source, i, conn, names)
        problems += _subnet_clash(source, i, conn, subnets)
    return problems


def _end_problems(source: str, i: int, conn: Connection, names: list[str]) -> list[Problem]:
    """The connection's ends that name no endpoint, or the same one."""
    problems = [
        Problem(
            source, f"connections[{i}].{side}", f"endpoint {shorten(name)} is not defined (known: {known_names(names)})"
        )
        for side, name in (("a", conn.a), ("b", conn.b))
        if name not in names
    ]
    if conn.a == conn.b:
        problems.append(Problem(source, f"connections[{i}]", f"endpoint {shorten(conn.a)} is connected to itself"))
    return problems


def _subnet_clash(source: str, i: int, conn: Connection, subnets: _SubnetsByEndpoint) -> list[Problem]:
    """The connection's subnet against those already on its ends (``subnets``, which then records it): one
    report per link (its first clash), so n clashing links give n lines, not n^2/2."""
    net = conn.network
    if net is None:
        return []
    clash = next(
        ((name, j, other) for name in sorted({conn.a, conn.b}) for j, other in subnets.get(name, [])
         if net.overlaps(other)),
        None,
    )  # fmt: skip
    for name in {conn.a, conn.b}:
        subnets.setdefault(name, []).append((i, net))
    if clash is None:
        return []
    name, j, other = clash
    return [
        Problem(
            source,
            f"connections[{i}].subnet",
            f"{net} overlaps {other} of connections[{j}] on endpoint {shorten(name)}",
        )
    ]
