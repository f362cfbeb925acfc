"""The status page: server-rendered HTML on the API's app, no front-end build and no script.

    GET  /                      the live lessons of this instance: status, age, expiry
    GET  /livelessons/{id}      one live lesson: topology picture, endpoints and addresses, step timeline,
                                ping matrix (each check an element with ``data-ok="true|false"``)
    GET  /login, POST /login    when LESSON_API_TOKEN is set: a form that sets the ``lesson_token`` cookie
    POST /logout                clears it

With a token set, every page needs the ``lesson_token`` cookie (or the API's bearer header); without it a
page answers 401 with the login form. Every value from a record or the catalog goes through
``html.escape``; the Content-Security-Policy allows no script at all.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qs

import redis
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from scheduler.core.checks import is_id
from scheduler.core.drawing import livelesson_topology, to_svg
from scheduler.core.errors import TemporaryError
from scheduler.core.records import (
    EMULATED_NOTE,
    LiveLesson,
    now,
    substitute_note,
)
from scheduler.core.steps import LEASED, STEPS, TERMINAL
from scheduler.http.auth import COOKIE, COOKIE_MAX_AGE, token_ok
from scheduler.http.dependencies import CatalogDep, SettingsDep, StoreDep
from scheduler.services.catalog import Catalog
from scheduler.settings import Settings

__all__ = ["COOKIE", "router"]

MAX_FORM_BYTES = 4096

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

STYLE = """
body{font-family:sans-serif;margin:1.5rem 2rem;color:#212121;max-width:1100px}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
a{color:#1565c0}table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #e0e0e0;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-size:.85rem;background:#e3f2fd}
.status-ready{background:#c8e6c9}.status-failed{background:#ffcdd2}
.status-deleting,.status-deleted{background:#eeeeee;color:#616161}
.meta{color:#616161;font-size:.9rem}.error{color:#b71c1c}
.check{display:block;white-space:nowrap}.check[data-ok=true]{color:#1b5e20}.check[data-ok=false]{color:#b71c1c}
.steps td{white-space:nowrap}td.self{background:#fafafa;color:#bdbdbd;text-align:center}
.bar{position:relative;height:.9rem;min-width:180px;width:30%;background:#fafafa}
.bar span{position:absolute;top:0;bottom:0;background:#64b5f6;min-width:2px}
.picture svg{max-width:100%;height:auto}form{margin:2rem 0}input{font-size:1rem;padding:.3rem}
nav{font-size:.85rem;margin-bottom:1rem}nav form{display:inline;margin:0 0 0 1rem}
"""


def _page(
    title: str, body: str, *, status: int = 200, refresh: int | None = None, nav: bool = True, logout: bool = False
) -> HTMLResponse:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    button = '<form method="post" action="/logout"><button type="submit">log out</button></form>' if logout else ""
    links = f'<nav><a href="/">live lessons</a>{button}</nav>' if nav else ""
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">{meta}'
        f"<title>{escape(title)} - lesson-scheduler</title><style>{STYLE}</style></head>"
        f"<body>{links}{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    shown = value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # steps take milliseconds
    return f'<time datetime="{escape(value.isoformat())}">{escape(shown)}</time>'


def _span(seconds: float) -> str:
    if seconds < 0:
        return "expired"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _status(status: str) -> str:
    return f'<span class="status status-{escape(status)}" data-status="{escape(status)}">{escape(status)}</span>'


def _table(headers: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# --- the index -----------------------------------------------------------------------------------------


PAGE_SIZE = 50  # the index shows this many live lessons per page, newest first


def index_html(
    records: list[LiveLesson], instance: str, at: datetime, *, logout: bool = False, older: float | None = None
) -> HTMLResponse:
    rows = []
    for r in sorted(records, key=lambda r: r.created_at, reverse=True):
        expires = "-" if r.status in TERMINAL else _span((r.expires_at - at).total_seconds())
        rows.append(
            f'<tr data-livelesson="{escape(r.id)}"><td><a href="/livelessons/{escape(r.id)}">{escape(r.id)}</a></td>'
            f"<td>{escape(r.lesson)}</td><td>{escape(r.session)}</td><td>{_status(r.status)}</td>"
            f'<td class="num">{_span((at - r.created_at).total_seconds())}</td>'
            f'<td class="num">{expires}</td><td>{_when(r.expires_at)}</td></tr>'
        )
    table = (
        _table(("id", "lesson", "session", "status", "age", "expires in", "expires at (UTC)"), rows, "livelessons")
        if rows
        else "<p>No live lessons.</p>"
    )
    more = f'<p><a class="older" href="/?before={older!r}">older live lessons</a></p>' if older is not None else ""
    body = f'<h1>Live lessons</h1><p class="meta">instance {escape(instance)}</p>{table}{more}'
    return _page("live lessons", body, refresh=10, logout=logout)


# --- one live lesson -----------------------------------------------------------------------------------


def _endpoints(record: LiveLesson) -> str:
    rows = []
    for name, ep in record.endpoints.items():
        itfs: list[Any] = list(ep.interfaces) or [None]
        for i, itf in enumerate(itfs):
            lead = (
                f'<td rowspan="{len(itfs)}">{escape(name)}</td><td rowspan="{len(itfs)}">{escape(ep.pod)}</td>'
                f'<td rowspan="{len(itfs)}">{"yes" if ep.ready else "no"}</td>'
                if i == 0
                else ""
            )
            cells = (
                f"<td>{escape(itf.name)}</td><td>{escape(itf.network)}</td>"
                f'<td class="address">{escape(itf.address or "-")}</td>'
                if itf
                else "<td>-</td><td>-</td><td>-</td>"
            )
            rows.append(f'<tr data-endpoint="{escape(name)}">{lead}{cells}</tr>')
    if not rows:
        return "<p>No endpoints scheduled yet.</p>"
    note = f'<p class="meta emulated">{escape(EMULATED_NOTE)}.</p>' if record.pods == "emulated" else ""
    if record.image_substitute:
        note += f'<p class="meta substitute">{escape(substitute_note(record.image_substitute))}.</p>'
    return note + _table(("endpoint", "pod", "ready", "interface", "network", "address"), rows, "endpoints")


def _presentations(record: LiveLesson) -> str:
    rows = [
        f'<tr data-endpoint="{escape(name)}" data-presentation="{escape(p.name)}"><td>{escape(name)}</td>'
        f'<td>{escape(p.name)}</td><td>{escape(p.type)}</td><td class="num">{p.port}</td>'
        f'<td class="reach">{escape(p.reach)}</td><td><code>{escape(p.forward)}</code></td></tr>'
        for name, ep in record.endpoints.items()
        for p in ep.presentations
    ]
    if not rows:
        return "<p>No presentations.</p>"
    headers = ("endpoint", "name", "type", "port", "in the lesson", "from this machine")
    return _table(headers, rows, "presentations")


def _timeline(record: LiveLesson) -> str:
    names = [s for s in STEPS if s in record.steps] + [s for s in record.steps if s not in STEPS]
    if not names:
        return "<p>No step has started yet.</p>"
    t0 = record.created_at
    ends = [t for s in record.steps.values() for t in (s.started_at, s.finished_at) if t is not None]
    total = max([(t - t0).total_seconds() for t in ends] + [0.001])
    rows = []
    for name in names:
        step = record.steps[name]
        start = step.started_at
        end = step.finished_at
        took = f"{(end - start).total_seconds():.3f} s" if start and end else "-"
        bar = ""
        if start is not None:
            left = (start - t0).total_seconds() / total * 100
            right = ((end or now()) - t0).total_seconds() / total * 100
            width = max(min(right, 100) - left, 0)
            bar = f'<span style="left:{max(left, 0):.1f}%;width:{width:.1f}%"></span>'
        rows.append(
            f'<tr data-step="{escape(name)}"><td>{escape(name)}</td><td>{_when(start)}</td><td>{_when(end)}</td>'
            f'<td class="num">{took}</td><td class="num">{step.attempts}</td><td class="bar">{bar}</td></tr>'
        )
    return _table(("step", "started", "finished", "took", "attempts", "since the request"), rows, "steps")


def _matrix(record: LiveLesson) -> str:
    if not record.checks:
        return "<p>No pings yet.</p>"
    names = list(record.endpoints) or list(dict.fromkeys(c.source for c in record.checks))
    for c in record.checks:
        for n in (c.source, c.target):
            if n not in names:
                names.append(n)
    cells: dict[tuple[str, str], list[str]] = {}
    for c in record.checks:
        rtt = (
            f"{c.rtt_avg_ms:.3f} ms, {c.loss_pct:g}% loss"
            if c.ok and c.rtt_avg_ms is not None
            else f"{c.received}/{c.sent}, {c.loss_pct:g}% loss"
        )
        spread = ""
        if c.rtt_avg_ms is not None:
            spread = f", rtt min/avg/max {c.rtt_min_ms}/{c.rtt_avg_ms}/{c.rtt_max_ms} ms"
        how = f"{c.target} by name ({c.address or 'unresolved'})" if c.by_name else f"{c.target} {c.address or ''}"
        across = " (across nodes, through a VXLAN tunnel)" if c.crossed_nodes else ""
        tip = f"{c.source} -> {how} over {c.network}{across}: {c.received}/{c.sent} replies{spread}"
        cells.setdefault((c.source, c.target), []).append(
            f'<span class="check" data-ok="{"true" if c.ok else "false"}" data-source="{escape(c.source)}" '
            f'data-target="{escape(c.target)}" data-network="{escape(c.network)}" '
            f'data-by-name="{"true" if c.by_name else "false"}" '
            f'data-crossed-nodes="{"true" if c.crossed_nodes else "false"}" title="{escape(tip)}">'
            f"{'&#10003;' if c.ok else '&#10007;'} {escape(rtt)}</span>"
        )
    rows = []
    for source in names:
        tds = []
        for target in names:
            if source == target:
                tds.append('<td class="self">-</td>')
            else:
                tds.append(f"<td>{''.join(cells.get((source, target), []))}</td>")
        rows.append(f"<tr><th>{escape(source)}</th>{''.join(tds)}</tr>")
    passed = sum(c.ok for c in record.checks)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    return (
        f'<p class="meta">{passed}/{len(record.checks)} pings passed; rows ping columns (average RTT and loss '
        f"of the burst, or replies/sent when a ping failed); over <i>main</i>, the target was pinged by its "
        f"name (eth0).</p>"
        f'<table class="pings"><thead><tr><th>from \\ to</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _picture(record: LiveLesson, catalog: Catalog, settings: Settings, deployment: str) -> str:
    # the plan the pipeline executes: the same settings and deployment id (plan_for)
    topology = livelesson_topology(record, catalog.get(record.lesson), settings, deployment=deployment)
    return f'<div class="picture">{to_svg(topology)}</div>'


def livelesson_html(
    record: LiveLesson, catalog: Catalog, settings: Settings, at: datetime, *, deployment: str = ""
) -> HTMLResponse:
    lesson = catalog.get(record.lesson)
    name = lesson.lesson.name if lesson else record.lesson
    expiry = "ended" if record.status in TERMINAL else f"expires in {_span((record.expires_at - at).total_seconds())}"
    error = (
        f'<p class="error">failed in {escape(record.error.step)}: {escape(record.error.message)}</p>'
        if record.error
        else ""
    )
    facts = [
        ("lesson", record.lesson),
        ("session", record.session),
        ("backend", record.backend),
        ("namespace", record.namespace),
        ("node", record.node or "-"),
    ]
    meta = " &middot; ".join(f"{k} <b>{escape(v)}</b>" for k, v in facts)
    times = (
        f"created {_when(record.created_at)} &middot; ready {_when(record.ready_at)} &middot; "
        f"expires {_when(record.expires_at)} ({escape(expiry)})"
    )
    body = (
        f"<h1>{escape(name)} <small>{escape(record.id)}</small> {_status(record.status)}</h1>"
        f'<p class="meta">{meta}</p><p class="meta">{times}</p>{error}'
        f"<h2>Topology</h2>{_picture(record, catalog, settings, deployment)}"
        f"<h2>Endpoints</h2>{_endpoints(record)}"
        f"<h2>Presentations</h2>{_presentations(record)}"
        f"<h2>Steps</h2>{_timeline(record)}"
        f"<h2>Pings</h2>{_matrix(record)}"
    )
    busy = record.status in LEASED  # a worker is moving it on: the page follows
    return _page(f"{name} {record.id}", body, refresh=2 if busy else None, logout=settings.api_token is not None)


def not_found_html(what: str, *, logout: bool = False) -> HTMLResponse:
    return _page("not found", f"<h1>Not found</h1><p>{escape(what)}</p>", status=404, logout=logout)


def login_html(status: int = 200, message: str = "", next_path: str = "/") -> HTMLResponse:
    note = f'<p class="error">{escape(message)}</p>' if message else ""
    body = (
        f"<h1>lesson-scheduler</h1>{note}"
        '<form method="post" action="/login">'
        '<label>API token <input type="password" name="token" autocomplete="current-password" autofocus></label> '
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<button type="submit">log in</button></form>'
    )
    return _page("log in", body, status=status, nav=False)


def _safe_next(value: str) -> str:
    """Only a path of this site: never ``//host`` or ``https://...``, nor a backslash browsers normalise."""
    plain = all(32 < ord(c) < 127 for c in value)
    if plain and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


# --- wiring --------------------------------------------------------------------------------------------


router = APIRouter()


def _login_wall(request: Request) -> HTMLResponse:
    return login_html(401, "Log in with the API token to see this page.", request.url.path)


def _unavailable() -> HTMLResponse:
    return _page("unavailable", "<h1>The store is unavailable</h1><p>Retry shortly.</p>", status=503)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(
    request: Request, store: StoreDep, settings: SettingsDep, before: float | None = Query(None, ge=0, le=1e11)
) -> Response:
    token = settings.api_token
    if not token_ok(request, token):
        return _login_wall(request)
    try:
        records, older = store.page(limit=PAGE_SIZE, before=before)
    except (TemporaryError, redis.RedisError):
        return _unavailable()
    return index_html(records, settings.instance, now(), logout=token is not None, older=older)


@router.get("/livelessons/{livelesson}", response_class=HTMLResponse, include_in_schema=False)
def livelesson(
    livelesson: str, request: Request, store: StoreDep, catalog: CatalogDep, settings: SettingsDep
) -> Response:
    token = settings.api_token
    if not token_ok(request, token):
        return _login_wall(request)
    if not is_id(livelesson):
        return not_found_html(f"live lesson {livelesson[:40]!r} does not exist", logout=token is not None)
    try:
        record = store.get(livelesson)
        deployment = store.deployment() if record is not None else ""
    except (TemporaryError, redis.RedisError):
        return _unavailable()
    if record is None:
        return not_found_html(f"live lesson {livelesson!r} does not exist", logout=token is not None)
    return livelesson_html(record, catalog, settings, now(), deployment=deployment)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(settings: SettingsDep, next_path: str = Query("/", alias="next", max_length=500)) -> Response:
    if settings.api_token is None:
        return RedirectResponse(_safe_next(next_path), status_code=303)
    return login_html(next_path=_safe_next(next_path))


@router.post("/login", include_in_schema=False)
async def login(request: Request, settings: SettingsDep) -> Response:
    token = settings.api_token
    if token is None:
        return RedirectResponse("/", status_code=303)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return login_html(413, "The form is too large.")
    try:
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:
        return login_html(400, "The form has too many fields.")
    given = (form.get("token") or [""])[0]
    next_path = _safe_next((form.get("next") or ["/"])[0])
    if not secrets.compare_digest(given.encode(), token.encode()):
        return login_html(401, "Wrong token.", next_path)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        COOKIE,
        given,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout", include_in_schema=False)
def logout(settings: SettingsDep) -> Response:
    response = RedirectResponse("/login" if settings.api_token else "/", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
