"""A passing link is measured by a burst, and the record keeps what the burst measured (issue 12): sent,
received, loss and min/avg/max RTT per direction; /metrics counts pings sent and received. (A lossy
burst failing its link is shown in tests/unit/test_ping.py.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lessonctl.celery_process import CeleryProcess
from scheduler.client import Client
from scheduler.services.state import Store
from scheduler.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("root")]


def test_checks_record_the_burst(
    settings_for: Callable[..., Settings], start_worker: Callable[..., CeleryProcess]
) -> None:
    settings = settings_for(ping_probes=4, ping_interval_ms=10)
    start_worker(settings)
    client = Client(settings)
    record = client.wait(client.request_lesson("busybox-triangle", "burst").id, 90)
    try:
        assert record.status == "ready", record.error
        assert record.pods == "container"  # the local backend runs busybox containers by default (issue 15)
        assert len(record.checks) == 12  # each link both ways by address, each linked pair both ways by name
        assert sum(c.by_name for c in record.checks) == 6
        for c in record.checks:
            assert (c.sent, c.received, c.loss_pct, c.ok) == (4, 4, 0.0, True), c
            assert c.rtt_min_ms is not None and c.rtt_avg_ms is not None and c.rtt_max_ms is not None
            assert 0 < c.rtt_min_ms <= c.rtt_avg_ms <= c.rtt_max_ms, c
        metrics = Store.from_settings(settings).r.hgetall(f"lessons:{settings.instance}:metrics")
        sent = float(metrics["pings_sent_total|"])
        received = float(metrics["pings_received_total|"])
        assert sent >= 12 * 4 and received >= 12 * 4 and received <= sent  # the first tries count too
    finally:
        client.delete(record.id)
        client.wait(record.id, 60, until=frozenset({"deleted", "failed"}))
