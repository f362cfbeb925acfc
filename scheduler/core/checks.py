"""Every check of an identifier, written once: live-lesson ids, sessions, DNS-1123 labels, node names and image
references. Pure.

Each pattern is applied with ``fullmatch`` and nothing else: ``re.match`` with a trailing ``$`` lets
``"name\\n"`` through (``$`` also matches before a final newline), and these values go on to build Redis
keys, namespace names, paths and label values.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from scheduler.core.errors import InvalidRequest, shorten

__all__ = [
    "DNS1123_LABEL",
    "DNS1123_LABEL_MAX",
    "ID_PATTERN",
    "IMAGE_REFERENCE",
    "IMAGE_REFERENCE_MAX",
    "NODE_NAME",
    "SESSION_PATTERN",
    "check_id",
    "check_image_reference",
    "dns1123_label_problem",
    "is_dns1123_label",
    "is_id",
    "is_node_name",
    "is_session",
]

# a live lesson's id (records.new_id makes them): it builds Redis keys, namespace names and state paths
ID_PATTERN = re.compile(r"[a-z0-9]{10}")
# a session becomes a Kubernetes label value: 63 characters, alphanumerics with - _ . inside. Anchored although
# it is only fullmatched here: the API hands its text to the request schema, whose patterns search.
SESSION_PATTERN = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL_MAX = 63
# a node's name: a DNS-1123 subdomain (a Kubernetes node name); a local node's is a label of it
NODE_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")

# an image reference as container runtimes parse it (distribution/reference): [host[:port]/]path[:tag][@digest]
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
IMAGE_REFERENCE_MAX = 255


def is_id(value: object) -> TypeGuard[str]:
    """True when ``value`` is a live-lesson id: 10 lower-case letters or digits, nothing after them."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(value: object, what: str = "live lesson id") -> str:
    """``value`` if it is a live-lesson id; InvalidRequest otherwise. Ids build Redis keys, namespace names
    and state paths, so every boundary (task arguments, HTTP paths, the CLI, the backends) asks this."""
    if is_id(value):
        return value
    raise InvalidRequest(f"{what} {shorten(value)} is not valid: 10 lower-case letters or digits")


def is_session(value: object) -> TypeGuard[str]:
    """True when ``value`` can be a session: a Kubernetes label value that is not empty."""
    return isinstance(value, str) and SESSION_PATTERN.fullmatch(value) is not None


def is_dns1123_label(value: str) -> bool:
    return dns1123_label_problem(value) is None


def dns1123_label_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (a lesson's slug, an endpoint's name), or None."""
    if len(value) > DNS1123_LABEL_MAX:
        too_long = f"{shorten(value[:20] + '...')} is {len(value)} characters"
        return f"{too_long}; a DNS-1123 label has at most {DNS1123_LABEL_MAX}"
    if not DNS1123_LABEL.fullmatch(value):
        return (
            f"{shorten(value)} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    return None


def is_node_name(value: object) -> TypeGuard[str]:
    """True when ``value`` is a node's name (a DNS-1123 subdomain of at most 253 characters)."""
    return isinstance(value, str) and NODE_NAME.fullmatch(value) is not None


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
