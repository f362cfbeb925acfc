"""The status page: served by the real API with a token, and looked at in a real headless Chromium.

The browser test runs a triangle to ready (real Redis, a real Celery worker, the local backend as root),
starts ``lessonctl serve`` with LESSON_API_TOKEN, and drives Debian's ``chromium`` over the DevTools
protocol: the page first shows the login form, the form sets the HttpOnly ``lesson_token`` cookie, then
the page of the live lesson shows six passing checks; a screenshot is saved under the test's tmp_path.

The other tests check the pages' HTML, escaping and login rules with FastAPI's TestClient on real Redis.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from fastapi.testclient import TestClient

from lessonctl.celery_process import CeleryProcess
from scheduler.core.records import LiveLesson
from scheduler.http.api import create_app
from scheduler.services.catalog import load_catalog
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.leftovers import leftovers
from tests.support.lessons import REPO, live_record
from tests.support.prereqs import needs
from tests.support.processes import ApiServer, settings_env
from tests.support.waits import wait_for

TOKEN = "page-s3cret"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # chromium picks a free port and writes it to DevToolsActivePort
)


# --- a headless Chromium driven over the DevTools protocol ---------------------------------------------


class Chromium:
    """One headless browser process (its PID kept, stopped by it) and a DevTools session on its page."""

    def __init__(self, workdir: Path, width: int = 1280, height: int = 900) -> None:
        self.workdir = workdir
        profile = workdir / "profile"
        home = workdir / "home"
        profile.mkdir(parents=True)
        home.mkdir()
        self.log_path = workdir / "chromium.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_CACHE_HOME": str(home / ".cache")}  # fmt: skip
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its helpers (zygote, renderers) share its process group
        )
        self.pid = self.proc.pid
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        try:
            port = self._port(profile / "DevToolsActivePort")
            self.ws = websocket.create_connection(self._page_socket(port), timeout=30, suppress_origin=True)
        except BaseException:
            self.stop()
            raise

    def _port(self, marker: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().splitlines()[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port: {self.log_path.read_text()[-2000:]}")

    @staticmethod
    def _page_socket(port: int) -> str:
        deadline = time.monotonic() + 15
        while True:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium has no page target: {targets}")
            time.sleep(0.1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are kept in ``events``."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # the page may be mid-navigation
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r} at {self.evaluate('location.href')}")
            time.sleep(0.1)

    def event(self, method: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        """The first event seen (since ``events`` was last cleared) with that method and those params."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                params = event.get("params", {})
                if event.get("method") == method and all(params.get(k) == v for k, v in match.items()):
                    return dict(params)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} {match} within {timeout}s")
            time.sleep(0.05)
            self.send("Runtime.evaluate", expression="1")  # let queued events arrive

    def navigate(self, url: str) -> int:
        """Load a URL until its load event; return the HTTP status of the document."""
        self.events.clear()
        result = self.send("Page.navigate", url=url)
        assert "errorText" not in result, result
        response = self.event("Network.responseReceived", type="Document", loaderId=result["loaderId"])
        self.event("Page.loadEventFired")
        return int(response["response"]["status"])

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        width, height = int(size["width"]), int(size["height"])
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close", "params": {}}))
        with contextlib.suppress(Exception):
            self.ws.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # helpers left behind by a browser that did not close cleanly: its own process group, by its id
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[[], Chromium]]:
    needs(
        Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
        f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
    )
    started: list[Chromium] = []

    def start() -> Chromium:
        browser = Chromium(tmp_path / f"chromium-{len(started)}")
        started.append(browser)
        return browser

    yield start
    for browser in started:
        browser.stop()


# --- the browser test ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("root")
def test_status_page_of_a_ready_triangle_in_headless_chromium(
    settings_for: Callable[..., Settings],
    start_worker: Callable[..., CeleryProcess],
    chromium: Callable[[], Chromium],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    settings = settings_for()
    start_worker(settings)
    api = ApiServer(settings, tmp_path / "api.log", LESSON_API_TOKEN=TOKEN)
    store = Store.from_settings(settings)
    livelesson = None
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        created = httpx.post(
            f"{api.url}/v1/livelessons", json={"lesson": "busybox-triangle", "session": "viewer"}, headers=auth,
            timeout=10,
        )  # fmt: skip
        assert created.status_code == 202, created.text
        livelesson = created.json()["id"]
        record = wait_for(store, livelesson, {"ready", "failed"})
        assert record.status == "ready", record.error

        browser = chromium()
        browser.send("Page.enable")
        browser.send("Network.enable")
        page = f"{api.url}/livelessons/{livelesson}"

        # without the cookie: the login form, with a 401, and no lesson data
        assert browser.navigate(page) == 401
        assert browser.evaluate("document.querySelector('form[action=\"/login\"] input[name=token]') !== null")
        assert browser.evaluate("document.querySelectorAll('[data-ok]').length") == 0
        assert browser.evaluate("document.cookie") == ""

        # a wrong token stays on the form
        browser.evaluate(
            "document.querySelector('input[name=token]').value = 'wrong'; document.forms[0].submit(); true"
        )
        browser.wait_until("document.readyState === 'complete' && document.body.innerText.includes('Wrong token')")

        # the right one: the server sets an HttpOnly cookie and sends the browser back to the page
        browser.evaluate(
            f"document.querySelector('input[name=token]').value = {json.dumps(TOKEN)}; document.forms[0].submit(); true"
        )
        browser.wait_until(
            f"location.pathname === '/livelessons/{livelesson}' && document.readyState === 'complete' "
            "&& document.querySelector('table.pings') !== null"
        )
        cookies = browser.send("Network.getCookies", urls=[api.url])["cookies"]
        cookie = next(c for c in cookies if c["name"] == "lesson_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == TOKEN
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts

        # the page of the ready lesson, loaded again with the cookie alone
        assert browser.navigate(page) == 200
        dom = browser.evaluate("document.documentElement.outerHTML")
        # each link direction by address, and each linked pair both ways by name (over eth0)
        assert browser.evaluate("document.querySelectorAll('.check[data-ok=\"true\"]').length") == 12
        assert browser.evaluate("document.querySelectorAll('.check[data-by-name=\"true\"]').length") == 6
        assert browser.evaluate("document.querySelectorAll('[data-ok=\"false\"]').length") == 0
        pairs = browser.evaluate(
            'Array.from(document.querySelectorAll(\'.check[data-ok="true"][data-by-name="false"]\'))'
            ".map(e => e.dataset.source + '>' + e.dataset.target).sort()"
        )
        assert pairs == sorted(f"{a}>{b}" for a in ("bb1", "bb2", "bb3") for b in ("bb1", "bb2", "bb3") if a != b)
        # the topology picture: three green links, three endpoints, every address
        assert browser.evaluate("document.querySelectorAll('svg.topology path.link[data-state=\"ok\"]').length") == 3
        assert browser.evaluate("document.querySelectorAll('svg.topology g.node').length") == 3
        svg_text = browser.evaluate("document.querySelector('svg.topology').textContent")
        addresses = [itf.address for ep in record.endpoints.values() for itf in ep.interfaces if itf.name != "eth0"]
        assert len(addresses) == 6 and all(a and a in svg_text for a in addresses)
        # endpoints with their addresses, and a timeline row per step with its attempts
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('table.endpoints td.address')).map(td => td.textContent)"
        )
        everything = [itf.address for ep in record.endpoints.values() for itf in ep.interfaces]  # eth0 too
        assert len(everything) == 9 and sorted(rows) == sorted(a for a in everything if a)
        steps = browser.evaluate(
            "Array.from(document.querySelectorAll('table.steps tr[data-step]')).map(tr => tr.dataset.step)"
        )
        assert steps == ["create_networks", "schedule_pods", "wait_ready", "verify_connectivity"]
        assert browser.evaluate("document.querySelector('[data-status]').dataset.status") == "ready"
        # the browser drew it: the SVG has a real size on the page
        box = browser.evaluate("JSON.stringify(document.querySelector('svg.topology').getBoundingClientRect())")
        assert json.loads(box)["width"] > 200 and json.loads(box)["height"] > 150

        shot = browser.screenshot(tmp_path / "status-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        (tmp_path / "status-page.html").write_text(dom)

        # the index lists it, with its status
        assert browser.navigate(f"{api.url}/") == 200
        listed = browser.evaluate(
            f"document.querySelector('tr[data-livelesson=\"{livelesson}\"] [data-status]').dataset.status"
        )
        assert listed == "ready"
        browser.screenshot(tmp_path / "index-page.png")
        record_property("screenshot", str(shot))
        print(f"\nstatus page screenshot: {shot}")

        # the same live lesson from the command line, with addresses and green links
        lessonctl = Path(sys.executable).with_name("lessonctl")
        env = {**os.environ, **settings_env(settings)}
        drawn = subprocess.run(
            [str(lessonctl), "graph", "--livelesson", livelesson], capture_output=True, text=True, env=env, timeout=30
        )
        assert drawn.returncode == 0, drawn.stderr
        assert drawn.stdout.count("linkStyle") == 3 and "#2e7d32" in drawn.stdout
        assert all(a and a in drawn.stdout for a in addresses)
        missing = subprocess.run(
            [str(lessonctl), "graph", "--livelesson", "zzzzzzzzzz"], capture_output=True, text=True, env=env,
            timeout=30,
        )  # fmt: skip
        assert missing.returncode == 2 and "does not exist" in missing.stderr
    finally:
        if livelesson is not None:
            httpx.delete(f"{api.url}/v1/livelessons/{livelesson}", headers={"Authorization": f"Bearer {TOKEN}"})
            with contextlib.suppress(AssertionError):
                wait_for(store, livelesson, {"deleted", "failed"})
        api.stop()
    assert leftovers(settings.instance, livelesson, settings.state_dir) == []


# --- the pages' rules, on real Redis -------------------------------------------------------------------


@pytest.fixture
def pages(settings_for: Callable[..., Settings]) -> Callable[..., tuple[TestClient, Store]]:
    def make(**overrides: object) -> tuple[TestClient, Store]:
        settings = settings_for(**overrides)
        app = create_app(settings)
        return TestClient(app, base_url="http://127.0.0.1"), Store.from_settings(settings)

    return make


def put(store: Store, record: LiveLesson) -> None:
    """A record as the store keeps it: the key, and its place in the listing index (newest first)."""
    store.r.set(store.key(record.id), record.to_json())
    store.r.zadd(store._k("created"), {record.id: record.created_at.timestamp()})


def triangle_record(**kwargs: Any) -> LiveLesson:
    lesson = load_catalog(REPO / "config" / "lessons").get("busybox-triangle")
    assert lesson is not None
    return live_record(lesson, **kwargs)[1]


def test_pages_need_the_token_and_the_login_form_sets_an_httponly_cookie(pages) -> None:
    client, store = pages(api_token=TOKEN)
    record = triangle_record(instance=store.instance)
    put(store, record)
    for path in ("/", f"/livelessons/{record.id}"):
        response = client.get(path)
        assert response.status_code == 401
        assert '<form method="post" action="/login">' in response.text
        assert record.id not in response.text.replace(f'value="{path}"', "")
    assert client.get("/", headers={"Cookie": "lesson_token=wrong"}).status_code == 401

    wrong = client.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Wrong token" in wrong.text and "set-cookie" not in wrong.headers

    right = client.post("/login", data={"token": TOKEN, "next": f"/livelessons/{record.id}"}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == f"/livelessons/{record.id}"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"lesson_token={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http on loopback; set under https

    page = client.get(f"/livelessons/{record.id}", headers={"Cookie": f"lesson_token={TOKEN}"})
    assert page.status_code == 200 and page.text.count('data-ok="true"') == 12  # 6 by name
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200

    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and 'lesson_token=""' in out.headers["set-cookie"]


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"])
def test_login_never_redirects_off_site(pages, target: str) -> None:
    client, _ = pages(api_token=TOKEN)
    response = client.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_without_a_token_the_pages_are_open_and_login_is_not_needed(pages) -> None:
    client, store = pages()
    record = triangle_record(instance=store.instance)
    put(store, record)
    index = client.get("/")
    assert index.status_code == 200 and f'href="/livelessons/{record.id}"' in index.text
    assert "log out" not in index.text
    login = client.get("/login", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"


def test_the_index_lists_status_age_and_expiry(pages) -> None:
    client, store = pages()
    ready = triangle_record(instance=store.instance)
    failed = triangle_record(livelesson="zzzzz00000", instance=store.instance, session="bob").model_copy(
        update={"status": "failed"}
    )
    put(store, ready)
    put(store, failed)
    html = client.get("/").text
    row = re.search(rf'<tr data-livelesson="{ready.id}">(.*?)</tr>', html)
    assert row
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row[1])
    assert 'data-status="ready"' in cells[3]
    assert re.fullmatch(r"\d+s", cells[4])  # age: the record was made 20 s ago
    assert re.fullmatch(r"29m\d\ds|30m00s", cells[5])  # expires in
    failed_row = re.search(rf'<tr data-livelesson="{failed.id}">(.*?)</tr>', html)
    assert failed_row and 'data-status="failed"' in failed_row[1]


def test_the_live_lesson_page_shows_topology_endpoints_timeline_and_failed_pings(pages) -> None:
    client, store = pages()
    record = triangle_record(instance=store.instance, failed=frozenset({"bb2-bb3"}))
    put(store, record)
    response = client.get(f"/livelessons/{record.id}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script
    html = response.text
    assert html.count('data-ok="true"') == 4 + 6 and html.count('data-ok="false"') == 2  # + 6 by name
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="topology"' in html
    assert re.search(r'data-link="bb2-bb3" data-state="failed"', html)
    assert html.count('data-state="ok"') == 2
    for address in ("10.10.12.2/24", "10.10.23.3/24", "10.10.31.2/24"):
        assert f'<td class="address">{address}</td>' in html
    assert re.findall(r'<tr data-step="(\w+)">', html) == [
        "create_networks", "schedule_pods", "wait_ready", "verify_connectivity"
    ]  # fmt: skip
    assert "10/12 pings passed" in html and "0/3" in html  # 4/6 over the links, 6/6 by name


def test_unknown_or_malformed_ids_get_a_404_page(pages) -> None:
    client, _ = pages()
    for path in ("/livelessons/zzzzzzzzzz", "/livelessons/NOT-AN-ID", "/livelessons/%3Cscript%3E"):
        response = client.get(path)
        assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
        assert "<h1>Not found</h1>" in response.text and "<script>" not in response.text


def test_record_values_are_escaped(pages) -> None:
    client, store = pages()
    evil = "<img src=x onerror=alert(1)>"
    record = triangle_record(instance=store.instance).model_copy(
        update={"lesson": evil, "session": '"><script>alert(2)</script>', "node": evil}
    )
    record.checks[0].network = evil
    record.endpoints["bb1"].interfaces[0].address = evil
    put(store, record)
    for path in ("/", f"/livelessons/{record.id}"):
        html = client.get(path).text
        assert "<img" not in html and "<script>" not in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_emulated_pods_are_said_so_and_burst_loss_is_shown(pages) -> None:
    client, store = pages()
    record = triangle_record(instance=store.instance).model_copy(update={"pods": "emulated"})
    put(store, record)
    html = client.get(f"/livelessons/{record.id}").text
    assert "emulated pods: stand-in processes" in html
    assert "% loss" in html  # every ping cell shows the burst's loss
    container = triangle_record(livelesson="cccccccccc", instance=store.instance).model_copy(
        update={"pods": "container"}
    )
    put(store, container)
    assert "emulated pods" not in client.get(f"/livelessons/{container.id}").text
