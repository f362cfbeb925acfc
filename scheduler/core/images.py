"""Image references in their one canonical spelling, as a container runtime stores and pulls them. Pure.

``busybox`` and ``docker.io/library/busybox:latest`` name the same image (Docker's rules, which
containerd, CRI-O and skopeo all follow): a first component without a dot, a colon or ``localhost`` is a
Docker Hub repository, a Hub repository without an organisation is in ``library/``, and no tag means
``latest``. The local image store files every image under this canonical name, so a lesson's ``busybox``
finds the image that ``lessonctl images import`` filed as ``docker.io/library/busybox:latest``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_REGISTRY", "canonical"]

DEFAULT_REGISTRY = "docker.io"


def canonical(reference: str) -> str:
    """``reference`` with its registry, repository path and tag (or digest) spelled out.

    ``reference`` must already be valid (``scheduler.core.checks.check_image_reference``)."""
    name, at, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:  # a colon after the last slash is a tag, not a registry's port
        name, tag = name[:colon], name[colon + 1 :]
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        first, rest = DEFAULT_REGISTRY, name
    if first == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    if at:
        return f"{first}/{rest}{':' + tag if tag else ''}@{digest}"
    return f"{first}/{rest}:{tag or 'latest'}"
