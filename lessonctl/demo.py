"""``lessonctl demo``: the whole system in one command, on the embedded local backend by default.

Starts a private Redis (unless LESSON_REDIS_URL is set) and a worker process, waits until the worker answers
a control ping, requests the lesson, shows each step as it finishes, tears the lesson down, checks that
nothing is left, and stops what it started.

Output for people goes through rich (it may wrap). The worker's log is machine output: its lines are written
to stderr as they are, one JSON event per line, whatever the terminal's width and whether or not there is one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery
from rich.console import Console

from lessonctl.celery_process import CeleryProcess, WorkerNotReady
from scheduler.core.errors import SchedulerError, TemporaryError
from scheduler.core.images import canonical
from scheduler.core.records import LiveLesson, new_id
from scheduler.core.steps import SETTLED, STEPS, TERMINAL
from scheduler.dev.redis_server import PrivateRedis
from scheduler.services.catalog import load_catalog
from scheduler.services.lifecycle import delete_lesson, request_lesson
from scheduler.services.queue import sender
from scheduler.services.state import Store
from scheduler.settings import Settings
from workers.backends import get_backend
from workers.backends.local import LocalBackend
from workers.backends.local.image_store import BUSYBOX, ImageStore
from workers.pipeline import Pipeline

__all__ = ["Demo", "DemoResult", "json_events"]

LOG_TAIL_LINES = 15
LOG_SETTLE_TIMEOUT = 5.0
WORKER_READY_TIMEOUT = 60.0


def json_events(lines: list[str]) -> list[str]:
    """The worker's log lines as one JSON event per line.

    The worker logs JSON (LESSON_LOG_FORMAT=json), but a process can write to its stderr before its logging
    is set up (Celery's warning about running as root, a traceback at import): each run of such lines
    becomes one event that carries them, so whoever parses the tail reads JSON on every line.
    """
    events: list[str] = []
    raw: list[str] = []

    def flush() -> None:
        if raw:
            event = {"event": "worker output outside its log format", "output": "\n".join(raw)}
            events.append(json.dumps({**event, "level": "warning", "logger": "lessonctl.demo"}))
            raw.clear()

    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            flush()
            events.append(line.strip())
        elif line.strip():
            raw.append(line.rstrip())
    flush()
    return events


@dataclass
class DemoResult:
    ok: bool
    record: LiveLesson | None
    notes: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, settings: Settings, path: Path, slug: str, *, console: Console, keep: bool) -> None:
        self.settings = settings
        self.path = path.resolve()
        self.slug = slug
        self.console = console
        self.keep = keep

    def _print_log_tail(self, worker: CeleryProcess, lines: int = LOG_TAIL_LINES, app: Celery | None = None) -> int:
        """The worker's last log lines to stderr, written directly: never through rich (which would wrap them at
        the console's width and read ``[...]`` inside them as markup). Returns how many lines were written.

        With ``app``, first waits (briefly) until the worker runs no task: a step saves the record before it
        logs why it failed, so the tail read at once could miss that line.
        """
        if app is not None and worker.alive():
            deadline = time.monotonic() + LOG_SETTLE_TIMEOUT
            while time.monotonic() < deadline:
                active = app.control.inspect(destination=[worker.nodename], timeout=0.5).active() or {}
                if active.get(worker.nodename) == []:
                    break
        events = json_events(worker.log_tail(lines).splitlines())
        self.console.file.flush()  # what rich printed so far comes first
        for event in events:
            sys.stderr.write(event + "\n")
        sys.stderr.flush()
        return len(events)

    def _ensure_busybox(self) -> None:
        """Containers need their images: busybox, which the sample lessons run, is built here from the
        host's busybox-static when the store lacks it (once; `lessonctl images ls` lists it after)."""
        settings = self.settings
        if settings.backend != "local" or settings.local_pods != "container":
            return
        lesson = load_catalog(self.path, image_registry=settings.image_registry).get(self.slug)
        # what the pods will run: the substitute in place of every endpoint's image, when one is set
        wanted = {canonical(settings.image_substitute or ep.image) for ep in lesson.endpoints} if lesson else set()
        store = ImageStore.configured(settings.state_dir, settings.image_dir)
        if BUSYBOX in wanted and store.digest(BUSYBOX) is None:
            started = time.monotonic()
            store.build_busybox()
            self.console.print(
                f"[dim]built image {BUSYBOX} from /bin/busybox (Debian's busybox-static) into {store.root} in "
                f"{(time.monotonic() - started) * 1000:.0f} ms[/dim]",
                highlight=False,
            )

    def run(self) -> DemoResult:
        self._ensure_busybox()
        workdir = Path(tempfile.mkdtemp(prefix="lessonctl-demo-"))
        with ExitStack() as stack:
            if not self.keep:
                stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            url = os.environ.get("LESSON_REDIS_URL")
            if url is None:
                # a password even on loopback: anyone on this host who reached it could send tasks to a root worker
                redis_server = PrivateRedis(directory=workdir / "redis", password=secrets.token_hex(16))
                redis_server.directory.mkdir(parents=True, exist_ok=True)
                redis_server.start()
                if not self.keep:
                    stack.callback(redis_server.cleanup)
                url = redis_server.url
                pid = redis_server.proc.pid  # type: ignore[union-attr]
                self.console.print(
                    f"[dim]redis-server on 127.0.0.1:{redis_server.port} (private, password-protected, pid {pid})[/dim]"
                )
            settings = self.settings.model_copy(update={"redis_url": url, "catalog": self.path})
            env = {k: v for k, v in os.environ.items() if k.startswith("LESSON_")}
            env.update({"LESSON_REDIS_URL": url, "LESSON_CATALOG": str(self.path), "LESSON_LOG_FORMAT": "json"})
            worker = CeleryProcess(
                env=env, log_file=workdir / "worker.log", name=f"demo-{new_id()}", die_with_parent=not self.keep
            )
            spawned = time.monotonic()
            worker.start()
            if not self.keep:
                stack.callback(worker.stop)
            self.console.print(f"[dim]worker pid {worker.pid}, log {worker.log_file}[/dim]")
            # the request goes out only once the worker takes tasks, so that "ready in" is request -> ready
            try:
                worker.wait_ready(sender(settings), timeout=WORKER_READY_TIMEOUT)
            except WorkerNotReady as exc:
                self._print_log_tail(worker)
                raise TemporaryError(f"{exc}; the worker's last log lines are on stderr") from None
            startup = (time.monotonic() - spawned) * 1000
            self.console.print(
                f"worker {worker.nodename} started in {startup:.0f} ms (answers a control ping; not part of "
                "the figures below)",
                highlight=False,
            )
            return self._drive(settings, worker)
        raise AssertionError("unreachable")

    def _drive(self, settings: Settings, worker: CeleryProcess) -> DemoResult:
        store = Store.from_settings(settings)
        catalog = load_catalog(settings.catalog, image_registry=settings.image_registry)
        session = f"demo-{new_id()}"
        started = time.monotonic()
        created = request_lesson(settings, store, catalog, self.slug, session)
        livelesson = created.record.id
        self.console.print(
            f"requested [bold]{self.slug}[/bold] as live lesson [bold]{livelesson}[/bold] "
            f"on the {settings.backend} backend"
        )
        record = self._follow(store, livelesson, settings.provision_timeout_seconds + 15, worker)
        elapsed = (time.monotonic() - started) * 1000
        links = len(lesson.connections) if (lesson := catalog.get(self.slug)) is not None else 0
        # a lesson without connections is ready with nothing to ping; one with connections needs every check
        pinged = bool(record.checks) or links == 0
        ok = record.status == "ready" and pinged and all(c.ok for c in record.checks)
        notes = []
        if ok:
            # request -> ready as the record has it (created by the request above, ready_at set by the worker)
            ready_ms = ((record.ready_at - record.created_at).total_seconds() * 1000) if record.ready_at else elapsed
            if record.checks:
                links_ = [c for c in record.checks if not c.by_name]
                named = [c for c in record.checks if c.by_name]
                said = f"{sum(c.ok for c in links_)}/{len(links_)} pings passed"
                if named:
                    said += f", {sum(c.ok for c in named)}/{len(named)} by name"
                notes.append(f"[green]ready[/green] in {ready_ms:.0f} ms: {said}")
            else:
                notes.append(f"[green]ready[/green] in {ready_ms:.0f} ms: no links to ping")
        else:
            if record.status == "ready" and not pinged:
                message = f"ready with {links} link(s) but no ping results"
            else:
                message = record.error.message if record.error else f"status {record.status}"
            notes.append(f"[red]not ready[/red] after {elapsed:.0f} ms: {message}")
            count = self._print_log_tail(worker, app=sender(settings))
            notes.append(f"[dim]the worker's last {count} log events are on stderr, one JSON event per line[/dim]")
        if self.keep:
            notes.append(
                f"kept: LESSON_REDIS_URL={settings.redis_url} lessonctl status {livelesson}; "
                f"worker pid {worker.pid}; `lessonctl down {livelesson}` when done"
            )
            return DemoResult(ok, record, notes)
        if ok and record.pods == "container":
            notes += self._inside(settings, store, record)
        leftovers = self._teardown(settings, store, livelesson)
        final = store.get(livelesson) or record
        if leftovers:
            notes.append(f"[red]left behind after teardown:[/red] {', '.join(leftovers)}")
        else:
            notes.append(f"torn down: status {final.status}, nothing left behind")
        return DemoResult(ok and not leftovers, final, notes)

    def _follow(self, store: Store, livelesson: str, timeout: float, worker: CeleryProcess) -> LiveLesson:
        deadline = time.monotonic() + timeout
        shown: set[str] = set()
        record = store.require(livelesson)
        with self.console.status("provisioning...") as status:
            while True:
                try:
                    record = store.require(livelesson)
                except TemporaryError:
                    time.sleep(0.1)
                    continue
                for step in STEPS:
                    timing = record.steps.get(step)
                    if timing and timing.finished_at and step not in shown:
                        shown.add(step)
                        ms = (timing.finished_at - timing.started_at).total_seconds() * 1000  # type: ignore[operator]
                        retries = f"  ({timing.attempts} attempts)" if timing.attempts > 1 else ""
                        self.console.print(f"  [green]✓[/green] {step:<22} {ms:8.1f} ms{retries}")
                status.update(f"{record.status}...")
                if record.status in SETTLED or time.monotonic() > deadline:
                    return record
                if not worker.alive():
                    self._print_log_tail(worker)
                    raise TemporaryError("the worker exited; its last log lines are on stderr")
                time.sleep(0.02)

    def _inside(self, settings: Settings, store: Store, record: LiveLesson) -> list[str]:
        """What runs in each pod, seen from inside it (the backend's exec, as the pings were): its hostname
        and its PID 1. Shows that the pods are the image's containers, not stand-ins."""
        backend = get_backend(settings, deployment=store.deployment())
        lines = []
        try:
            plan = Pipeline(settings, store, backend, load_catalog(settings.catalog)).plan(record)
            probe = ["sh", "-c", "echo \"$(hostname) | PID 1: $(tr '\\0' ' ' < /proc/1/cmdline)\""]
            for pod in plan.pods:
                try:
                    seen = backend.exec(plan, pod.endpoint, probe, timeout=10).stdout.strip() or "(no output)"
                except SchedulerError as exc:
                    seen = f"(cannot look inside: {exc})"
                lines.append(f"  {pod.endpoint}: container of {pod.image}, inside: hostname {seen}")
        finally:
            backend.close()
        return ["[dim]inside the pods (exec):[/dim]", *lines]

    def _teardown(self, settings: Settings, store: Store, livelesson: str) -> list[str]:
        delete_lesson(settings, store, livelesson)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = store.get(livelesson)
            if record is None or record.status in TERMINAL:
                break
            time.sleep(0.05)
        leftovers = []
        backend = get_backend(settings, deployment=store.deployment())
        if livelesson in backend.list():
            leftovers.append(f"backend objects of {livelesson}")
        if isinstance(backend, LocalBackend):
            leftovers += backend.remains(livelesson)
            backend.prune()
        backend.close()
        return leftovers
