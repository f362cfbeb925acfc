"""The local backend's image store: one OCI image layout, filled by skopeo, unpacked by umoci.

No image code of ours: ``skopeo copy`` moves images between transports (a registry, a docker or OCI
archive, a layout), ``umoci`` builds and unpacks them. This module only chooses the paths and names and
reads the layout's JSON index (``index.json``, manifests and image configs are plain JSON files).

Layout::

    <image_dir>/
        store.lock            exclusive for writes to the layout, shared for reads
        oci/                  the OCI image layout; each image's ``org.opencontainers.image.ref.name`` is
                              its canonical reference (scheduler.core.images), e.g.
                              docker.io/library/busybox:latest
        unpacked/<digest>/    umoci's bundle of one manifest (``rootfs/``, ``config.json``) plus
                              ``image.json`` (the image's config): read-only lower layers of containers,
                              shared by every lesson; made once, atomically (rename)
        tmp/                  work folders, removed after use

Guarantees: an image is either fully in the layout or not at all (skopeo writes blobs before the index);
an unpacked folder exists only complete; a reference that is not in the store and cannot be pulled fails
with a message naming it and the ways to provide it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from scheduler.core.checks import check_image_reference
from scheduler.core.errors import InvalidRequest, PermanentError, PrerequisiteMissing, TemporaryError
from scheduler.core.images import canonical

__all__ = ["BUSYBOX", "ImageStore", "StoredImage", "Unpacked", "tool_message"]

log = structlog.get_logger(__name__)

BUSYBOX = "docker.io/library/busybox:latest"
REF_NAME = "org.opencontainers.image.ref.name"
PULL_TIMEOUT = 300.0
TOOL_TIMEOUT = 120.0


@dataclass(frozen=True)
class StoredImage:
    reference: str  # canonical
    digest: str  # the manifest's, sha256:...
    size: int  # bytes of config and layers, compressed


@dataclass(frozen=True)
class Unpacked:
    """One image, unpacked: the bundle's ``rootfs`` and the runtime config umoci derived from the image."""

    reference: str
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def runtime_config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        return loaded

    def image_config(self) -> dict[str, Any]:
        """The image's ``config`` (Entrypoint, Cmd, Env, WorkingDir, User), empty if it has none."""
        loaded: dict[str, Any] = json.loads((self.path / "image.json").read_text()).get("config") or {}
        return loaded


def _run(argv: list[str], what: str, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise PrerequisiteMissing(f"{argv[0]} is not installed ({what} needs it): apt-get install {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise TemporaryError(f"{what} did not finish within {timeout:.0f} s") from exc
    return proc


def tool_message(output: str) -> str:
    """A Go tool's last line (skopeo, umoci, runc), without logrus's ``time=... level=... msg="..."``."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    if ' msg="' in last:
        last = last.split(' msg="', 1)[1].rsplit('"', 1)[0].replace('\\"', '"')
    return last


def _tool_error(proc: subprocess.CompletedProcess[str]) -> str:
    return tool_message(proc.stderr or proc.stdout) or f"exit status {proc.returncode}"


class ImageStore:
    def __init__(self, root: Path, *, insecure_registries: frozenset[str] = frozenset()) -> None:
        self.root = root
        # registries (host[:port]) reached without TLS verification (LESSON_INSECURE_REGISTRIES)
        self.insecure_registries = insecure_registries
        self.layout = root / "oci"
        self.unpacked_dir = root / "unpacked"

    @classmethod
    def configured(cls, state_dir: Path, image_dir: Path | None = None, insecure_registries: str = "") -> ImageStore:
        """The store LESSON_IMAGE_DIR names, else ``<state_dir>/images``."""
        insecure = frozenset(r.strip() for r in insecure_registries.split(",") if r.strip())
        return cls(image_dir or state_dir / "images", insecure_registries=insecure)

    # --- locking -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _workdir(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(dir=tmp))

    # --- reading the layout ------------------------------------------------------------------------------

    def _index(self) -> list[dict[str, Any]]:
        try:
            manifests: list[dict[str, Any]] = json.loads((self.layout / "index.json").read_text())["manifests"]
        except FileNotFoundError:
            return []
        return manifests

    def _blob(self, digest: str) -> Path:
        algorithm, _, value = digest.partition(":")
        if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise PermanentError(f"the image store's index names a malformed digest {digest!r}")
        return self.layout / "blobs" / "sha256" / value

    def stored(self) -> list[StoredImage]:
        """Every image in the store, by canonical reference."""
        with self._locked(exclusive=False):
            images = []
            for entry in self._index():
                reference = (entry.get("annotations") or {}).get(REF_NAME)
                if not reference:
                    continue
                manifest = json.loads(self._blob(entry["digest"]).read_text())
                size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest.get("layers", []))
                images.append(StoredImage(reference, entry["digest"], size))
        return sorted(images, key=lambda i: i.reference)

    def digest(self, reference: str) -> str | None:
        wanted = canonical(reference)
        for entry in self._index():
            if (entry.get("annotations") or {}).get(REF_NAME) == wanted:
                digest: str = entry["digest"]
                return digest
        return None

    # --- filling the store -------------------------------------------------------------------------------

    def _copy_in(
        self, source: str, reference: str, what: str, timeout: float = TOOL_TIMEOUT, options: tuple[str, ...] = ()
    ) -> None:
        with self._locked(exclusive=True):
            argv = ["skopeo", "copy", "--quiet", *options, source, f"oci:{self.layout}:{reference}"]
            proc = _run(argv, what, timeout)
        if proc.returncode != 0:
            raise PermanentError(f"{what} failed: {_tool_error(proc)}")
        log.info("image stored", image=reference, source=source.split(":", 1)[0])

    def import_archive(self, path: Path, name: str | None = None) -> list[str]:
        """Import a docker archive (``docker save``) or an OCI archive; returns the references stored.

        The references come from the archive (its RepoTags, or its ref.name annotations); ``name`` files a
        single-image archive under that reference instead. Raises ``InvalidRequest`` for a path that is not
        such an archive or names nothing."""
        if not path.is_file():
            raise InvalidRequest(f"{path}: no such file (an image archive: docker save or an OCI archive)")
        kind, names = _archive_names(path)
        if name is not None:
            if (why := check_image_reference(name)) is not None:
                raise InvalidRequest(f"--name {why}")
            if len(names) > 1:
                raise InvalidRequest(f"{path} holds {len(names)} images; --name fits an archive of one")
            pairs = [(names[0] if names else "", canonical(name))]
        else:
            if not names:
                raise InvalidRequest(f"{path} names no image; give it one with --name REFERENCE")
            pairs = []
            for found in names:
                if (why := check_image_reference(found)) is not None:
                    raise InvalidRequest(f"{path}: the archive's image name {why}")
                pairs.append((found, canonical(found)))
        stored = []
        for found, reference in pairs:
            # docker-archive takes a RepoTag; oci-archive takes the ref.name as the archive holds it
            source = f"{kind}:{path}" + (f":{found}" if found else "")
            self._copy_in(source, reference, f"importing {path}")
            stored.append(reference)
        return stored

    def pull(self, reference: str, timeout: float = PULL_TIMEOUT) -> None:
        """Copy ``reference`` from its registry into the store (the registries' settings are the host's,
        /etc/containers/registries.conf, as for podman and skopeo)."""
        ref = canonical(reference)
        insecure = ref.split("/", 1)[0] in self.insecure_registries
        options = ("--src-tls-verify=false",) if insecure else ()
        self._copy_in(f"docker://{ref}", ref, f"pulling {ref}", timeout, options)

    def build_busybox(self, busybox: Path = Path("/bin/busybox")) -> str:
        """Build ``docker.io/library/busybox:latest`` from a static busybox binary on this host (Debian's
        busybox-static), with umoci: one layer with ``/bin/busybox`` and a link per applet, ``sh`` as its
        command, like Docker Hub's image. Replaces an earlier one. Returns the reference."""
        if not busybox.is_file():
            raise PrerequisiteMissing(f"{busybox} is missing: apt-get install busybox-static")
        work = self._workdir()
        try:
            layout, bundle = work / "layout", work / "bundle"
            steps = [
                ["umoci", "init", "--layout", str(layout)],
                ["umoci", "new", "--image", f"{layout}:busybox"],
                ["umoci", "unpack", "--image", f"{layout}:busybox", str(bundle)],
            ]
            for argv in steps:
                if (proc := _run(argv, "building busybox")).returncode != 0:
                    raise PermanentError(f"building busybox: {' '.join(argv[:2])} failed: {_tool_error(proc)}")
            rootfs = bundle / "rootfs"
            for folder in ("bin", "etc", "tmp", "root"):
                (rootfs / folder).mkdir(exist_ok=True)
            (rootfs / "tmp").chmod(0o1777)
            shutil.copy2(busybox, rootfs / "bin" / "busybox")
            applets = _run([str(busybox), "--list"], "listing busybox's applets").stdout.split()
            for applet in applets:
                if applet != "busybox" and "/" not in applet:
                    (rootfs / "bin" / applet).symlink_to("busybox")
            (rootfs / "etc" / "passwd").write_text(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
            )
            (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
            steps = [
                ["umoci", "repack", "--image", f"{layout}:busybox", str(bundle)],
                [
                    "umoci", "config", "--image", f"{layout}:busybox", "--config.cmd", "sh",
                    "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ],
            ]  # fmt: skip
            for argv in steps:
                if (proc := _run(argv, "building busybox")).returncode != 0:
                    raise PermanentError(f"building busybox: {' '.join(argv[:2])} failed: {_tool_error(proc)}")
            self._copy_in(f"oci:{layout}:busybox", BUSYBOX, "storing busybox")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return BUSYBOX

    # --- unpacking ---------------------------------------------------------------------------------------

    def unpacked(self, reference: str, *, pull: bool = True) -> Unpacked:
        """The image unpacked, pulling it first when it is not in the store and ``pull`` is set.

        Raises ``PermanentError`` naming the image and how to provide it when it cannot be had."""
        ref = canonical(reference)
        with self._locked(exclusive=False):
            digest = self.digest(ref)
        if digest is None and pull:
            try:
                self.pull(ref)
            except PermanentError as exc:
                raise PermanentError(_not_available(ref, str(exc))) from exc
            with self._locked(exclusive=False):
                digest = self.digest(ref)
        if digest is None:
            raise PermanentError(_not_available(ref, "it is not in the local image store"))
        target = self.unpacked_dir / digest.replace(":", "-")
        if (target / "image.json").is_file():
            return Unpacked(ref, target)
        with self._locked(exclusive=True):  # one unpack at a time; a second caller finds it done
            if not (target / "image.json").is_file():
                self._unpack(ref, digest, target)
        return Unpacked(ref, target)

    def _unpack(self, ref: str, digest: str, target: Path) -> None:
        work = self._workdir()
        try:
            bundle = work / "bundle"
            proc = _run(["umoci", "unpack", "--image", f"{self.layout}:{ref}", str(bundle)], f"unpacking {ref}")
            if proc.returncode != 0:
                raise PermanentError(f"unpacking {ref} failed: {_tool_error(proc)}")
            manifest = json.loads(self._blob(digest).read_text())
            shutil.copyfile(self._blob(manifest["config"]["digest"]), bundle / "image.json")
            self.unpacked_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # an incomplete one (no image.json) from a crash
            bundle.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("image unpacked", image=ref, digest=digest)


def _not_available(reference: str, why: str) -> str:
    if reference == BUSYBOX:
        how = "build it with `lessonctl images build-busybox` (from Debian's busybox-static)"
    else:
        how = (
            "import it with `lessonctl images import ARCHIVE` (docker save or an OCI archive), make a registry "
            "that has it reachable, or set LESSON_IMAGE_SUBSTITUTE=busybox to run busybox in its place"
        )
    return f"image {reference} is not available: {why}; {how}"


def _archive_names(path: Path) -> tuple[str, list[str]]:
    """(skopeo transport, image names) of an archive, read from its index without extracting anything."""
    try:
        with tarfile.open(path) as archive:
            members = {m.name.lstrip("./"): m for m in archive.getmembers() if m.isfile()}
            if "manifest.json" in members:
                manifest = _member_json(archive, members["manifest.json"])
                names = [tag for entry in manifest for tag in (entry.get("RepoTags") or [])]
                return "docker-archive", names
            if "index.json" in members and "oci-layout" in members:
                index = _member_json(archive, members["index.json"])
                names = [
                    name
                    for entry in index.get("manifests", [])
                    if (name := (entry.get("annotations") or {}).get(REF_NAME))
                ]
                return "oci-archive", names
    except (tarfile.TarError, OSError, ValueError, AttributeError, TypeError) as exc:
        raise InvalidRequest(f"{path} is not a readable image archive: {exc}") from exc
    raise InvalidRequest(f"{path} is neither a docker archive (manifest.json) nor an OCI archive (index.json)")


def _member_json(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    if member.size > 1 << 20:
        raise ValueError(f"{member.name} is {member.size} bytes; an index is far smaller")
    handle = archive.extractfile(member)
    if handle is None:
        raise ValueError(f"{member.name} cannot be read")
    return json.loads(handle.read())
