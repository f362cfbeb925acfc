"""The seed's names and presentations on the kubernetes backend (issue 16), on the test cluster's real node
(kubelet, containerd, runc, Multus) with its cluster DNS: a real worker makes the lesson, as the worker's
ServiceAccount.

- one headless Service per endpoint, named after it, selecting exactly its pod, with the presentation's
  port; each pod's hostname is its endpoint;
- every endpoint's name resolves inside the containers (the pod's resolv.conf, the cluster's DNS) to its
  pod's eth0 address, and the pipeline's checks by name passed;
- ``ip addr show`` lists eth0, then net1 and net2 (the seed's transcript);
- presentations carry the Service's DNS name, and ``lessonctl port-forward`` reaches httpd in h1 through
  pods/portforward.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.core import naming
from scheduler.services.state import Store
from scheduler.settings import Settings
from tests.support.cli import LESSONCTL, lessonctl, lessonctl_env, up
from tests.support.k8s import REAL_NODE
from tests.support.lessons import names_catalog

pytestmark = [pytest.mark.root, pytest.mark.slow]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def ready(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess],
    direct_worker_kubeconfig: Path, k8s_cleanup: list[str], tmp_path: Path,
) -> tuple[Settings, str]:  # fmt: skip
    """Settings and the id of a ready NAMES_LESSON made by a real worker on the real node."""
    settings = settings_for(backend="kubernetes", kubeconfig=direct_worker_kubeconfig, catalog=names_catalog(tmp_path))
    start_worker(settings)
    livelesson = up(settings, "names", "dns", wait=True, timeout=180)
    record = Store.from_settings(settings).require(livelesson)
    assert record.node == REAL_NODE, record.node  # real containers and real DNS: a kwok node has neither
    return settings, livelesson


def run(settings: Settings, livelesson: str, endpoint: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return lessonctl(settings, "exec", livelesson, endpoint, "--", *argv)


def test_services_hostnames_names_and_the_seed_transcript(ready: tuple[Settings, str], k8s_kubectl: Kubectl) -> None:
    settings, livelesson = ready
    record: dict[str, Any] = json.loads(lessonctl(settings, "status", livelesson, "--json").stdout)
    namespace = record["namespace"]
    pod_ip = {}
    for name, ep in record["endpoints"].items():
        assert (ep["interfaces"][0]["name"], ep["interfaces"][0]["network"]) == ("eth0", "main"), ep
        pod_ip[name] = ep["interfaces"][0]["address"]
        assert pod_ip[name], ep

    services = json.loads(k8s_kubectl("get", "services", "-n", namespace, "-o", "json").stdout)["items"]
    by_name = {s["metadata"]["name"]: s for s in services}
    assert set(by_name) == {"h1", "h2", "h3"}
    pods = json.loads(k8s_kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    for name, service in by_name.items():
        assert service["spec"]["clusterIP"] == "None"
        selected = [
            p["metadata"]["name"]
            for p in pods
            if service["spec"]["selector"].items() <= p["metadata"]["labels"].items()
        ]
        assert selected == [name], (name, selected)
    assert [(p["name"], p["port"]) for p in by_name["h1"]["spec"]["ports"]] == [("http-8080", 8080)]

    # each pod calls itself by its endpoint's name; the seed's transcript lists eth0, then the links
    assert run(settings, livelesson, "h2", "hostname").stdout.strip() == "h2"
    shown = run(settings, livelesson, "h2", "ip", "addr", "show")
    assert re.findall(r"^\d+: (eth0|net1|net2)[@:]", shown.stdout, re.MULTILINE) == ["eth0", "net1", "net2"]
    assert f"inet {pod_ip['h2']}/" in shown.stdout

    # names: h1 reaches h3 (no link between them) by its short name and by its Service's full name
    for target in ("h3", naming.service_host(namespace, "h3")):
        pinged = run(settings, livelesson, "h1", "ping", "-c", "1", "-W", "3", target)
        assert pinged.returncode == 0 and f"({pod_ip['h3']})" in pinged.stdout, (target, pinged.stdout, pinged.stderr)

    named = [c for c in record["checks"] if c["by_name"]]
    assert {(c["source"], c["target"]) for c in named} == {("h1", "h2"), ("h2", "h1"), ("h2", "h3"), ("h3", "h2")}
    assert all(c["ok"] and c["address"] == pod_ip[c["target"]] for c in named), named


def test_names_of_another_live_lesson_do_not_resolve_by_short_name(ready: tuple[Settings, str]) -> None:
    settings, livelesson = ready
    other = up(settings, "busybox-triangle", "dns-other", wait=True, timeout=180)
    missing = run(settings, livelesson, "h1", "ping", "-c", "1", "-W", "2", "bb1")
    assert missing.returncode != 0 and "(" not in missing.stdout, (missing.stdout, missing.stderr)
    missing = run(settings, other, "bb1", "ping", "-c", "1", "-W", "2", "h1")
    assert missing.returncode != 0 and "(" not in missing.stdout, (missing.stdout, missing.stderr)


@pytest.fixture
def forwarded(ready: tuple[Settings, str]) -> Iterator[int]:
    """``lessonctl port-forward ID h1 8080`` running; the local port it printed."""
    settings, livelesson = ready
    proc = subprocess.Popen(
        [LESSONCTL, "port-forward", livelesson, "h1", "8080"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lessonctl_env(settings),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> h1:8080", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_presentations_reach_the_service_and_port_forward_reaches_the_pod(
    ready: tuple[Settings, str], forwarded: int
) -> None:
    settings, livelesson = ready
    record: dict[str, Any] = json.loads(lessonctl(settings, "status", livelesson, "--json").stdout)
    reach = f"h1.{record['namespace']}.svc.cluster.local:8080"
    assert record["endpoints"]["h1"]["presentations"] == [
        {"name": "web", "type": "http", "port": 8080, "reach": reach,
         "forward": f"lessonctl port-forward {livelesson} h1 8080"},
    ]  # fmt: skip
    # httpd in h1 serves its /etc: the kubelet's hosts file names the pod h1
    for _ in range(2):  # one stream per connection
        with urllib.request.urlopen(f"http://127.0.0.1:{forwarded}/hostname", timeout=20) as reply:
            assert reply.read().decode().strip() == "h1"
