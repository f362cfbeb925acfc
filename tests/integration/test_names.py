"""The seed's main network, names and presentations on the local backend (issue 16), through the real
pipeline: a real Celery worker on real Redis makes the lesson, and ``lessonctl`` is the installed console
script. Both kinds of local pod: a container sees the hosts file as its /etc/hosts, an emulated pod's
commands run in a mount namespace where it is.

- every pod has eth0 on its live lesson's main network, listed first, then net1.. (the seed's transcript);
- every endpoint of the live lesson resolves by its name to its eth0 address, and the pipeline's checks by
  name passed (the record says which checks used names);
- presentations are in the record with where to reach them, in ``lessonctl status``, the API and the page;
- ``lessonctl port-forward`` relays 127.0.0.1 into the pod (httpd in the container serves its /etc/hosts);
  it refuses an address off loopback and an unknown endpoint (exit 2).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lessonctl.celery_process import CeleryProcess
from scheduler.http.api import create_app
from scheduler.settings import Settings
from tests.support.cli import LESSONCTL, lessonctl, lessonctl_env, up
from tests.support.lessons import names_catalog

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("root")]


@pytest.fixture(params=["container", "emulated"])
def ready(
    request: pytest.FixtureRequest,
    settings_for: Callable[..., Settings],
    start_worker: Callable[..., CeleryProcess],
    tmp_path: Path,
) -> tuple[Settings, str]:
    """Settings and the id of a ready live lesson of LESSON, made by a real worker."""
    settings = settings_for(local_pods=request.param, catalog=names_catalog(tmp_path))
    start_worker(settings)
    return settings, up(settings, "names", "alice", wait=True)


def record_of(settings: Settings, livelesson: str) -> dict:  # type: ignore[type-arg]
    proc = lessonctl(settings, "status", livelesson, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def run(settings: Settings, livelesson: str, endpoint: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return lessonctl(settings, "exec", livelesson, endpoint, "--", *argv)


def test_eth0_names_and_checks_by_name(ready: tuple[Settings, str]) -> None:
    settings, livelesson = ready
    record = record_of(settings, livelesson)
    eth0 = {}
    for name, ep in record["endpoints"].items():
        first = ep["interfaces"][0]
        assert (first["name"], first["network"]) == ("eth0", "main"), ep
        assert first["address"].startswith("10.250.0."), ep  # LESSON_MAIN_POOL's first /24
        eth0[name] = first["address"].split("/")[0]
    assert len(set(eth0.values())) == 3

    # the seed's transcript: `ip addr show` in h2 lists eth0, then net1 and net2, each with its address
    shown = run(settings, livelesson, "h2", "ip", "addr", "show")
    assert shown.returncode == 0, shown.stderr
    order = re.findall(r"^\d+: (eth0|net1|net2)[@:]", shown.stdout, re.MULTILINE)
    assert order == ["eth0", "net1", "net2"], shown.stdout
    assert f"inet {eth0['h2']}/24" in shown.stdout

    # names: h1 reaches h3 (no link between them) by its name, over eth0; its hosts file is the lesson's
    for source, target in (("h1", "h3"), ("h3", "h1"), ("h2", "h1")):
        pinged = run(settings, livelesson, source, "ping", "-c", "1", "-W", "2", target)
        assert pinged.returncode == 0, (source, target, pinged.stdout, pinged.stderr)
        assert f"({eth0[target]})" in pinged.stdout, pinged.stdout
    hosts = run(settings, livelesson, "h1", "cat", "/etc/hosts").stdout
    assert {line.split()[1] for line in hosts.splitlines() if line.startswith("10.")} == {"h1", "h2", "h3"}

    # the pipeline checked every linked pair by name too, and says so
    named = [c for c in record["checks"] if c["by_name"]]
    assert {(c["source"], c["target"]) for c in named} == {("h1", "h2"), ("h2", "h1"), ("h2", "h3"), ("h3", "h2")}
    for c in named:
        assert c["ok"] and c["network"] == "main" and c["address"] == eth0[c["target"]], c
    assert all(not c["by_name"] for c in record["checks"] if c["network"] != "main")
    text = lessonctl(settings, "status", livelesson).stdout
    assert "by name: 4 of 4 pings over eth0 reached the name's endpoint" in text, text


def test_names_of_another_live_lesson_do_not_resolve(ready: tuple[Settings, str]) -> None:
    settings, livelesson = ready
    other = up(settings, "busybox-triangle", "bob", wait=True)
    for mine, theirs, foreign in ((livelesson, other, "bb1"), (other, livelesson, "h1")):
        source = "h1" if mine == livelesson else "bb1"
        missing = run(settings, mine, source, "ping", "-c", "1", "-W", "1", foreign)
        assert missing.returncode != 0, missing.stdout
        assert "(" not in missing.stdout, missing.stdout  # never resolved to an address at all
        assert theirs not in missing.stdout


def test_presentations_are_in_the_record_status_api_and_page(ready: tuple[Settings, str]) -> None:
    settings, livelesson = ready
    expected = {
        "name": "web",
        "type": "http",
        "port": 8080,
        "reach": "h1:8080",
        "forward": f"lessonctl port-forward {livelesson} h1 8080",
    }
    record = record_of(settings, livelesson)
    assert record["endpoints"]["h1"]["presentations"] == [expected]
    assert record["endpoints"]["h2"]["presentations"] == []
    text = lessonctl(settings, "status", livelesson).stdout
    assert "presentations" in text and "h1:8080" in text and expected["forward"] in text, text

    with TestClient(create_app(settings), base_url="http://127.0.0.1") as api:
        body = api.get(f"/v1/livelessons/{livelesson}").json()
        assert body["endpoints"]["h1"]["presentations"] == [expected]
        page = api.get(f"/livelessons/{livelesson}").text
    assert '<table class="presentations">' in page
    assert '<td class="reach">h1:8080</td>' in page


@pytest.fixture
def forwarder(ready: tuple[Settings, str]) -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """Starts ``lessonctl port-forward ID ...``; returns the process and the local port it printed."""
    settings, livelesson = ready
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            [LESSONCTL, "port-forward", livelesson, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lessonctl_env(settings),
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> ", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        return proc, int(found.group(1))

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_port_forward_relays_loopback_into_the_pod(
    ready: tuple[Settings, str], forwarder: Callable[..., tuple[subprocess.Popen[str], int]]
) -> None:
    settings, _ = ready
    _, port = forwarder("h1", "8080")
    if settings.local_pods == "container":
        # httpd in h1's container serves its /etc: its hosts file, through two connections in a row
        for _ in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hosts", timeout=10) as reply:
                body = reply.read().decode()
            assert "\th1" in body and "\th3" in body, body
    else:
        # the stand-in accepts and closes: the connection reached the pod's listener, then ended
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.settimeout(10)
            assert conn.recv(100) == b""

    # nothing listens on 9 in h2: that connection fails and is reported; the forwarder stays up
    proc, closed = forwarder("h2", "9")
    with socket.create_connection(("127.0.0.1", closed), timeout=10) as conn:
        conn.settimeout(10)
        assert conn.recv(100) == b""
    time.sleep(0.2)
    assert proc.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["h1", "8080", "--address", "0.0.0.0"], "must be a loopback address"),
        (["h9", "8080"], "has no endpoint 'h9'"),
        (["h1", "0"], "0 is not in the range 1<=x<=65535"),
    ],
)
def test_port_forward_refuses_bad_input(ready: tuple[Settings, str], args: list[str], message: str) -> None:
    settings, livelesson = ready
    proc = lessonctl(settings, "port-forward", livelesson, *args, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
