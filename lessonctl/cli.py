"""``lessonctl``: exit 0 on success, 1 on a runtime failure, 2 on bad input or usage.

The one composition root allowed to reach both ``scheduler`` and ``workers`` (``demo`` starts a worker,
``gc`` runs a pass with the backend).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.table import Table

from lessonctl.output import err, out, print_record, status_markup
from scheduler.core.checks import check_image_reference, is_id
from scheduler.core.drawing import FORMATS
from scheduler.core.errors import InvalidRequest, LessonError, LimitExceeded, NotFound, SchedulerError
from scheduler.core.plan_inputs import Draft, plan_for
from scheduler.core.records import new_id, now
from scheduler.core.render import render as render_objects
from scheduler.core.render import to_yaml
from scheduler.services.catalog import Catalog, configured_catalog
from scheduler.services.logging import configure
from scheduler.settings import Settings, get_settings

__all__ = ["main"]

BAD_INPUT = (LessonError, InvalidRequest, NotFound, LimitExceeded)


def _fail(message: str, code: int) -> NoReturn:
    err.print("[red]error:[/red] ", end="")
    err.print(message, highlight=False, soft_wrap=True, markup=False)
    sys.exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Bad input exits 2, anything else our code raises exits 1; never a traceback."""
    try:
        yield
    except LessonError as exc:
        for problem in exc.problems:
            err.print(str(problem), highlight=False, soft_wrap=True, markup=False)
        sys.exit(2)
    except BAD_INPUT as exc:
        _fail(str(exc), 2)
    except SchedulerError as exc:
        _fail(str(exc), 1)


def _settings() -> Settings:
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's ValidationError: a bad LESSON_ variable
        _fail(f"invalid settings in the environment: {exc}", 2)
    configure(settings.log_format if settings.log_format == "json" else "console", settings.log_level)
    return settings


def _catalog(settings: Settings) -> Catalog:
    return configured_catalog(settings)


def _store(settings: Settings) -> Any:
    from scheduler.services.state import Store

    return Store.from_settings(settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lesson-scheduler")
def main() -> None:
    """Schedule hands-on networking lessons (Antidote / NRE Labs compatible)."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Validate lesson files or catalog folders; problems go to stderr, one per line."""
    settings = _settings()
    with _errors():
        catalog = configured_catalog(settings, paths)
    err.print(f"{len(catalog)} lesson(s) valid: {', '.join(sorted(catalog.lessons))}", highlight=False)


@main.command(name="render")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--session", "-s", required=True, help="The session the objects are labelled with.")
@click.option("--id", "livelesson", default=None, help="Live-lesson id (default: a new random one).")
@click.option("--lesson", "slug", default=None, help="Which lesson, when PATH holds several.")
def render_command(path: Path, session: str, livelesson: str | None, slug: str | None) -> None:
    """Print the Kubernetes objects of one live lesson as multi-document YAML."""
    from scheduler.services.lifecycle import validate_session

    settings = _settings()
    with _errors():
        validate_session(session)
        if livelesson is not None and not is_id(livelesson):
            raise InvalidRequest(f"--id {livelesson!r} must be 10 lower-case letters or digits")
        catalog = configured_catalog(settings, [path])
        lesson = _pick(catalog, slug)
        plan = plan_for(Draft(livelesson or new_id(), session, settings.instance), lesson, settings)
        click.echo(to_yaml(render_objects(plan)), nl=False)


def _pick(catalog: Catalog, slug: str | None) -> Any:
    if slug is not None:
        lesson = catalog.get(slug)
        if lesson is None:
            raise NotFound(f"lesson {slug!r} is not there (known: {', '.join(sorted(catalog.lessons))})")
        return lesson
    if len(catalog) != 1:
        raise InvalidRequest(f"the path holds {len(catalog)} lessons; choose one with --lesson")
    return next(iter(catalog))


@main.command()
@click.argument("slug")
@click.option("--session", "-s", required=True)
@click.option("--wait", "wait_", is_flag=True, help="Wait until ready (or failed).")
@click.option("--timeout", default=None, type=float, help="Seconds to wait (default: the provisioning timeout).")
@click.option("--json", "as_json", is_flag=True)
def up(slug: str, session: str, wait_: bool, timeout: float | None, as_json: bool) -> None:
    """Request a live lesson of SLUG for a session."""
    from scheduler.client import Client
    from scheduler.services.lifecycle import request_lesson

    settings = _settings()
    with _errors():
        store = _store(settings)
        created = request_lesson(settings, store, _catalog(settings), slug, session)
        record = created.record
        if wait_:
            record = Client(settings).wait(record.id, timeout or settings.provision_timeout_seconds + 5)
        print_record(record, as_json)
        if wait_ and record.status != "ready":
            sys.exit(1)


@main.command()
@click.argument("livelesson")
@click.option("--json", "as_json", is_flag=True)
def status(livelesson: str, as_json: bool) -> None:
    """Show one live lesson."""
    settings = _settings()
    with _errors():
        print_record(_store(settings).require(livelesson), as_json)


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000), help="At most this many.")
def ls(as_json: bool, limit: int) -> None:
    """List the live lessons of this instance, newest first."""
    settings = _settings()
    with _errors():
        records, more = _store(settings).page(limit=limit)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = Table()
    for column in ("id", "lesson", "session", "status", "age", "expires in"):
        table.add_column(column)
    t = now()
    for r in records:
        table.add_row(r.id, r.lesson, r.session, status_markup(r.status), _ago(t, r.created_at), _ago(r.expires_at, t))
    out.print(table)
    if more is not None:
        err.print(f"(the newest {limit} shown; --limit for more)", highlight=False)


def _ago(later: datetime, earlier: datetime) -> str:
    seconds = int((later - earlier).total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 0 else "expired"


@main.command()
@click.argument("livelesson")
def keepalive(livelesson: str) -> None:
    """Extend a live lesson's expiry by the TTL."""
    settings = _settings()
    with _errors():
        record = _store(settings).keepalive(livelesson)
    out.print(f"{record.id} expires at {record.expires_at.isoformat()}")


@main.command()
@click.argument("livelesson")
@click.option("--wait", "wait_", is_flag=True, help="Wait until the teardown is done.")
def down(livelesson: str, wait_: bool) -> None:
    """Tear a live lesson down."""
    from scheduler.client import Client
    from scheduler.core.steps import TERMINAL
    from scheduler.services.lifecycle import delete_lesson

    settings = _settings()
    with _errors():
        record = delete_lesson(settings, _store(settings), livelesson)
        if wait_:
            record = Client(settings).wait(livelesson, 60, until=TERMINAL)
    out.print(f"{record.id} {status_markup(record.status)}")


@main.command()
def gc() -> None:
    """Run one garbage-collection pass now (expired, stuck and orphaned live lessons)."""
    from scheduler.services.queue import enqueue_step
    from scheduler.services.state import release
    from workers.backends import get_backend
    from workers.gc import collect
    from workers.pipeline import Pipeline

    settings = _settings()
    with _errors():
        store = _store(settings)
        pipeline = Pipeline(settings, store, get_backend(settings, deployment=store.deployment()), _catalog(settings))
        lock = store.lock("gc", timeout=120)
        if not lock.acquire():
            _fail("another GC pass is running", 1)
        try:
            counts = collect(pipeline, lambda task, livelesson: enqueue_step(settings, task, livelesson))
        finally:
            release(lock, "gc")
    if counts.get("node_removed"):
        out.print("the node namespace was removed: no live lesson was left on it")
    out.print(" ".join(f"{k}={v}" for k, v in counts.items()))


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("livelesson", metavar="ID")
@click.argument("endpoint")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
@click.option("--tty", "-t", is_flag=True, help="A terminal in the pod (stdin must be one), as docker/kubectl exec -t.")
def exec_command(livelesson: str, endpoint: str, argv: tuple[str, ...], tty: bool) -> None:
    """Run a command (no shell) in ENDPOINT's pod; put -- before it.

    stdin, stdout and stderr are the pod command's, and its exit status is lessonctl's. A live lesson that
    is not ready is a runtime condition (exit 1); an unknown id or endpoint is bad input (exit 2)."""
    if tty and not sys.stdin.isatty():
        _fail("--tty needs stdin to be a terminal; leave it out to pipe input", 2)
    _attach(livelesson, endpoint, argv, tty=tty)


@main.command()
@click.argument("livelesson", metavar="ID")
@click.argument("endpoint")
@click.option("--shell", "shell_path", default="sh", show_default=True, help="The shell to run in the pod.")
def shell(livelesson: str, endpoint: str, shell_path: str) -> None:
    """An interactive terminal in ENDPOINT's pod, until its shell exits (with the shell's exit status).

    Needs a terminal (else exit 2; lessonctl exec runs a command without one). A live lesson that is not
    ready is a runtime condition (exit 1); an unknown id or endpoint is bad input (exit 2)."""
    if not sys.stdin.isatty():
        _fail(f"lessonctl shell needs a terminal; use lessonctl exec {livelesson} {endpoint} -- CMD", 2)
    _attach(livelesson, endpoint, (shell_path,), tty=True)


def _attach(livelesson: str, endpoint: str, argv: tuple[str, ...], *, tty: bool) -> NoReturn:
    """Run ``argv`` in the endpoint's pod of a ready live lesson; exits with its status. Writes nothing to
    stdout itself: that is the pod command's alone."""
    with _ready_pod(livelesson, endpoint) as (backend, plan):
        try:
            code = backend.attach(plan, endpoint, argv, tty=tty)
        except KeyboardInterrupt:
            code = 130  # ^C without a terminal in the pod stops us; a shell reports 128 + SIGINT
    sys.exit(code)


@contextmanager
def _ready_pod(livelesson: str, endpoint: str) -> Iterator[tuple[Any, Any]]:
    """(backend, plan) of a ready live lesson that has ``endpoint``, inside :func:`_errors`: an unknown id
    or endpoint exits 2, a live lesson that is not ready exits 1. The backend is closed on the way out."""
    from workers.backends import get_backend
    from workers.pipeline import Pipeline

    settings = _settings()
    with _errors():
        if not is_id(livelesson):
            raise InvalidRequest(f"live lesson id {livelesson!r} must be 10 lower-case letters or digits")
        store = _store(settings)
        record = store.require(livelesson)
        catalog = _catalog(settings)
        backend = get_backend(settings, deployment=store.deployment())
        try:
            plan = Pipeline(settings, store, backend, catalog).plan(record)
            if endpoint not in {pod.endpoint for pod in plan.pods}:
                known = ", ".join(pod.endpoint for pod in plan.pods)
                raise InvalidRequest(f"live lesson {record.id} has no endpoint {endpoint!r} (known: {known})")
            if record.status != "ready":
                _fail(
                    f"live lesson {record.id} is not ready (status: {record.status}); "
                    f"lessonctl status {record.id} shows its progress",
                    1,
                )
            yield backend, plan
        finally:
            backend.close()


@main.command(name="port-forward")
@click.argument("livelesson", metavar="ID")
@click.argument("endpoint")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--local-port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: any free port.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Where to listen: a loopback address.")
def port_forward(livelesson: str, endpoint: str, port: int, local_port: int, address: str) -> None:
    """Forward ADDRESS:LOCAL_PORT on this machine to PORT in ENDPOINT's pod, until Ctrl-C.

    Like kubectl port-forward: each connection is relayed into the pod and reaches its loopback (a
    presentation's ssh or http, e.g. `ssh -p LOCAL_PORT user@127.0.0.1`). The first line printed says where
    it listens. Only loopback addresses: nothing off this machine may connect (exit 2 otherwise)."""
    from lessonctl.portforward import Forwarder

    if not _loopback(address) or address == "localhost":
        _fail(f"--address {address!r} must be a loopback address such as 127.0.0.1 or ::1", 2)
    with _ready_pod(livelesson, endpoint) as (backend, plan):
        try:
            forwarder = Forwarder(
                address.strip("[]"),
                local_port,
                lambda: backend.connect(plan, endpoint, port, timeout=10.0),
                on_error=lambda exc: err.print(f"connection to {endpoint}:{port} failed: {exc}", markup=False),
            )
        except OSError as exc:
            _fail(f"cannot listen on {address}:{local_port}: {exc.strerror or exc}", 2)
        host = f"[{forwarder.address}]" if ":" in forwarder.address else forwarder.address
        click.echo(f"Forwarding from {host}:{forwarder.port} -> {endpoint}:{port} (Ctrl-C stops)", err=False)
        sys.stdout.flush()
        try:
            forwarder.serve()
        except KeyboardInterrupt:
            pass
        finally:
            forwarder.close()


def _loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Serve the HTTP API and the status page.

    Closed by default: off loopback, it refuses to start unless LESSON_API_TOKEN is set."""
    import uvicorn

    from scheduler.http.api import create_app

    settings = _settings()
    if settings.api_token is None and not _loopback(host):
        _fail(
            f"--host {host} is reachable from other machines and LESSON_API_TOKEN is not set: set a token "
            "(in the environment, never on a command line) or bind to 127.0.0.1",
            2,
        )
    with _errors():
        app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mermaid", show_default=True)
@click.option("--livelesson", default=None, metavar="ID", help="Draw a live lesson: addresses, links by ping result.")
@click.option("--lesson", "slug", default=None, help="Which lesson, when PATH holds several.")
def graph(path: Path | None, fmt: str, livelesson: str | None, slug: str | None) -> None:
    """Draw a lesson's topology (endpoints, links, subnets), or a live lesson's with addresses and pings."""
    from scheduler.core import drawing

    if path is None and livelesson is None:
        _fail("give a lesson PATH or --livelesson ID", 2)
    if path is not None and livelesson is not None:
        _fail("give a lesson PATH or --livelesson ID, not both", 2)
    settings = _settings()
    with _errors():
        if path is not None:
            lesson = _pick(configured_catalog(settings, [path]), slug)
            topology = drawing.lesson_topology(lesson, subnet_pool=settings.subnet_pool)
        elif livelesson is not None:
            if not is_id(livelesson):
                raise InvalidRequest(f"--livelesson {livelesson!r} must be 10 lower-case letters or digits")
            store = _store(settings)
            record = store.require(livelesson)
            lesson = _catalog(settings).get(record.lesson)
            topology = drawing.livelesson_topology(record, lesson, settings, deployment=store.deployment())
        click.echo(drawing.draw(topology, fmt), nl=False)


# --- demo ------------------------------------------------------------------------------------------


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the final record as one JSON document.")
@click.option("--keep", is_flag=True, help="Leave the lesson running (and Redis and the worker).")
@click.option("--lesson", "slug", default=None, help="Which lesson, when PATH holds several.")
def demo(path: Path | None, as_json: bool, keep: bool, slug: str | None) -> None:
    """Run a lesson end to end: private Redis, a worker, request, progress, pings, teardown."""
    from lessonctl.demo import Demo

    settings = _settings()
    path = path or Path(__file__).resolve().parent.parent / "config" / "lessons" / "busybox-triangle.yaml"
    with _errors():
        lesson = _pick(configured_catalog(settings, [path]), slug)
        console = err if as_json else out
        result = Demo(settings, path, lesson.slug, console=console, keep=keep).run()
    if as_json:
        click.echo(result.record.model_dump_json(indent=2) if result.record else "null")
    elif result.record is not None:
        print_record(result.record, as_json=False)
    for line in result.notes:
        (err if as_json else out).print(line, highlight=False)
    sys.exit(0 if result.ok else 1)


# --- images (the local backend's store) ------------------------------------------------------------------


def _image_store(settings: Settings) -> Any:
    if settings.backend != "local" or settings.local_pods != "container":
        _fail(
            "images belong to the local backend's container pods (LESSON_BACKEND=local, LESSON_LOCAL_PODS=container); "
            "on Kubernetes the kubelet pulls them",
            2,
        )
    from workers.backends.local.image_store import ImageStore

    return ImageStore.configured(settings.state_dir, settings.image_dir, settings.insecure_registries)


@main.group()
def images() -> None:
    """The local backend's container images (an OCI layout under LESSON_IMAGE_DIR)."""


@images.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
def images_ls(as_json: bool) -> None:
    """List the images in the store."""
    settings = _settings()
    with _errors():
        stored = _image_store(settings).stored()
    if as_json:
        click.echo(json.dumps([{"reference": i.reference, "digest": i.digest, "size": i.size} for i in stored]))
        return
    table = Table(title=f"images ({len(stored)})", title_justify="left")
    for column in ("reference", "digest", "size"):
        table.add_column(column)
    for image in stored:
        table.add_row(image.reference, image.digest[:19], f"{image.size / 1e6:.1f} MB")
    out.print(table)


@images.command(name="import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="File a single-image archive under this reference.")
def images_import(path: Path, name: str | None) -> None:
    """Import a docker archive (docker save) or an OCI archive."""
    settings = _settings()
    with _errors():
        for reference in _image_store(settings).import_archive(path, name):
            out.print(f"imported {reference}", highlight=False)


@images.command(name="pull")
@click.argument("reference")
def images_pull(reference: str) -> None:
    """Pull an image from its registry (the host's /etc/containers/registries.conf applies)."""
    if (why := check_image_reference(reference)) is not None:
        _fail(f"REFERENCE {why}", 2)
    settings = _settings()
    with _errors():
        _image_store(settings).pull(reference)
    out.print(f"pulled {reference}", highlight=False)


@images.command(name="build-busybox")
@click.option(
    "--busybox",
    default=Path("/bin/busybox"),
    type=click.Path(path_type=Path),
    show_default=True,
    help="A static busybox binary (Debian's busybox-static).",
)
def images_build_busybox(busybox: Path) -> None:
    """Build docker.io/library/busybox:latest from a static busybox on this host."""
    settings = _settings()
    with _errors():
        reference = _image_store(settings).build_busybox(busybox)
    out.print(f"built {reference} from {busybox}", highlight=False)
