"""The ping summary parser (shared by every backend) and the retry loop around it.

Outputs are verbatim from iputils-ping 20221126 (Debian) and BusyBox v1.36 ping, the two pings found in
lesson images.
"""

from __future__ import annotations

import time

import pytest

from scheduler.core.errors import PermanentError, TemporaryError
from scheduler.core.plan import Probe
from tests.support.fake_backend import FakeBackend
from workers.connectivity import Burst, PingResult, parse_ping, ping_argv, run_check

IPUTILS_OK = """\
PING 10.10.12.3 (10.10.12.3) 56(84) bytes of data.

--- 10.10.12.3 ping statistics ---
1 packets transmitted, 1 received, 0% packet loss, time 0ms
rtt min/avg/max/mdev = 0.041/0.041/0.041/0.000 ms
"""

IPUTILS_PARTIAL = """\
PING 10.10.23.2 (10.10.23.2) 56(84) bytes of data.
64 bytes from 10.10.23.2: icmp_seq=2 ttl=64 time=0.058 ms
64 bytes from 10.10.23.2: icmp_seq=3 ttl=64 time=0.061 ms

--- 10.10.23.2 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 2030ms
rtt min/avg/max/mdev = 0.058/0.059/0.061/0.001 ms
"""

IPUTILS_ALL_LOST = """\
PING 10.10.23.3 (10.10.23.3) 56(84) bytes of data.

--- 10.10.23.3 ping statistics ---
1 packets transmitted, 0 received, 100% packet loss, time 0ms

"""

IPUTILS_ERRORS = """\
PING 10.10.12.9 (10.10.12.9) 56(84) bytes of data.
From 10.10.12.2 icmp_seq=1 Destination Host Unreachable
From 10.10.12.2 icmp_seq=2 Destination Host Unreachable
From 10.10.12.2 icmp_seq=3 Destination Host Unreachable

--- 10.10.12.9 ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2042ms
pipe 3
"""

IPUTILS_DUPLICATES = """\
--- 10.10.12.255 ping statistics ---
2 packets transmitted, 2 received, +2 duplicates, 0% packet loss, time 1001ms
rtt min/avg/max/mdev = 0.030/1.250/2.500/1.100 ms
"""

BUSYBOX_OK = """\
PING 10.10.31.3 (10.10.31.3): 56 data bytes

--- 10.10.31.3 ping statistics ---
2 packets transmitted, 2 packets received, 0% packet loss
round-trip min/avg/max = 0.060/0.072/0.085 ms
"""

BUSYBOX_PARTIAL = """\
PING 10.10.31.2 (10.10.31.2): 56 data bytes
64 bytes from 10.10.31.2: seq=1 ttl=64 time=0.101 ms

--- 10.10.31.2 ping statistics ---
3 packets transmitted, 1 packets received, 66% packet loss
round-trip min/avg/max = 0.101/0.101/0.101 ms
"""

BUSYBOX_ALL_LOST = """\
PING 10.10.31.9 (10.10.31.9): 56 data bytes

--- 10.10.31.9 ping statistics ---
1 packets transmitted, 0 packets received, 100% packet loss
"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (IPUTILS_OK, PingResult(1, 1, 0.041, 0.041, 0.041)),
        (IPUTILS_PARTIAL, PingResult(3, 2, 0.058, 0.059, 0.061)),
        (IPUTILS_ALL_LOST, PingResult(1, 0)),
        (IPUTILS_ERRORS, PingResult(3, 0)),
        (IPUTILS_DUPLICATES, PingResult(2, 2, 0.03, 1.25, 2.5)),
        (BUSYBOX_OK, PingResult(2, 2, 0.06, 0.072, 0.085)),
        (BUSYBOX_PARTIAL, PingResult(3, 1, 0.101, 0.101, 0.101)),
        (BUSYBOX_ALL_LOST, PingResult(1, 0)),
    ],
    ids=[
        "iputils-ok",
        "iputils-partial-loss",
        "iputils-all-lost",
        "iputils-unreachable-errors",
        "iputils-duplicates",
        "busybox-ok",
        "busybox-partial-loss",
        "busybox-all-lost",
    ],
)
def test_parse_ping(output: str, expected: PingResult) -> None:
    assert parse_ping(output) == expected


@pytest.mark.parametrize(
    ("output", "ok"),
    [(IPUTILS_OK, True), (BUSYBOX_OK, True), (IPUTILS_PARTIAL, False), (BUSYBOX_PARTIAL, False),
     (IPUTILS_ALL_LOST, False), (IPUTILS_ERRORS, False), (IPUTILS_DUPLICATES, True)],
)  # fmt: skip
def test_ok_means_every_packet_answered_by_default(output: str, ok: bool) -> None:
    assert parse_ping(output).ok is ok


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "\n\n",
        "ping: connect: Network is unreachable\n",
        "ping: 10.10.12.3: Name or service not known\n",
        "ping: socket: Operation not permitted\n",
        "nsenter: cannot open /run/netns/x: No such file or directory\n",
        "rtt min/avg/max/mdev = 0.041/0.041/0.041/0.000 ms\n",  # an RTT without counts is not a result
        "PING 10.10.12.3 (10.10.12.3) 56(84) bytes of data.\n",  # killed before its summary
        "x packets transmitted, y received\n",
        "\x00\xff binary \x1b[31m noise",
    ],
)
def test_garbage_is_a_failed_ping_not_an_exception(garbage: str) -> None:
    result = parse_ping(garbage)
    assert result == PingResult(0, 0)
    assert not result.ok and result.loss_pct == 100.0


def test_zero_sent_is_never_ok() -> None:
    assert not PingResult(0, 0).ok


def test_ping_argv_is_bounded_and_quiet() -> None:
    argv = ping_argv("10.10.12.3")
    assert argv[0] == "ping"
    assert argv[-1] == "10.10.12.3"
    assert "-n" in argv and "-q" in argv  # no DNS, summary only
    assert argv[argv.index("-c") + 1] == "1"
    assert argv[argv.index("-W") + 1] == "1"  # one try never waits more than a second


# --- run_check: retried until a reply or the deadline (the first packet of a new link waits for ARP) ---


def scripted(*answers: str | Exception) -> FakeBackend:
    """A backend whose exec answers ``answers`` in turn, the last one every call after."""
    backend = FakeBackend()
    backend.script_exec(*answers)
    return backend


CHECK = Probe(source="bb1", target="bb2", network="bb1-bb2", interface="net1")
PLAN = None  # run_check only hands the plan through to exec


IPUTILS_BURST = """\
--- 10.10.12.3 ping statistics ---
5 packets transmitted, 5 received, 0% packet loss, time 82ms
rtt min/avg/max/mdev = 0.031/0.045/0.072/0.014 ms
"""

IPUTILS_BURST_ONE_LOST = """\
--- 10.10.12.3 ping statistics ---
5 packets transmitted, 4 received, 20% packet loss, time 82ms
rtt min/avg/max/mdev = 0.031/0.045/0.072/0.014 ms
"""


def test_loss_is_computed_from_counts_and_bounded_by_the_setting() -> None:
    assert parse_ping(IPUTILS_BURST_ONE_LOST).loss_pct == 20.0
    assert not parse_ping(IPUTILS_BURST_ONE_LOST).ok  # default bound: nothing lost
    assert parse_ping(IPUTILS_BURST_ONE_LOST, max_loss_pct=20).ok
    assert not parse_ping(IPUTILS_ALL_LOST, max_loss_pct=99).ok  # nothing received never passes


def test_run_check_retries_until_a_reply_then_records_the_burst() -> None:
    backend = scripted(IPUTILS_ALL_LOST, IPUTILS_ALL_LOST, IPUTILS_OK, IPUTILS_BURST)
    burst = Burst(probes=5, interval=0.02)
    result = run_check(backend, PLAN, CHECK, "10.10.12.3/24", deadline=time.monotonic() + 5, burst=burst)  # type: ignore[arg-type]
    # the record keeps the burst's figures, not the last single try
    assert result == PingResult(5, 5, 0.031, 0.045, 0.072)
    assert result.loss_pct == 0.0 and result.ok
    assert len(backend.execs) == 4
    endpoint, argv = backend.execs[0]
    assert endpoint == "bb1" and argv[-1] == "10.10.12.3"  # the prefix length is stripped
    _, burst_argv = backend.execs[3]
    assert burst_argv[burst_argv.index("-c") + 1] == "5" and burst_argv[burst_argv.index("-i") + 1] == "0.02"


def test_run_check_fails_on_a_lossy_burst() -> None:
    backend = scripted(IPUTILS_OK, IPUTILS_BURST_ONE_LOST)
    result = run_check(backend, PLAN, CHECK, "10.10.12.3", deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert (result.sent, result.received, result.loss_pct, result.ok) == (5, 4, 20.0, False)


def test_run_check_gives_up_at_the_deadline_with_every_try_counted() -> None:
    backend = scripted(IPUTILS_ALL_LOST)
    started = time.monotonic()
    result = run_check(backend, PLAN, CHECK, "10.10.12.3/24", deadline=started + 0.3)  # type: ignore[arg-type]
    assert result.received == 0 and result.sent == len(backend.execs) >= 2
    assert result.loss_pct == 100.0 and not result.ok
    assert time.monotonic() - started >= 0.3


def test_run_check_retries_transient_exec_errors() -> None:
    backend = scripted(TemporaryError("exec timed out"), BUSYBOX_OK)
    result = run_check(backend, PLAN, CHECK, "10.10.12.3", deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert result.ok


def test_run_check_raises_permanent_exec_errors() -> None:
    backend = scripted(PermanentError("pod bb1 does not exist"))
    with pytest.raises(PermanentError, match="does not exist"):
        run_check(backend, PLAN, CHECK, "10.10.12.3", deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert len(backend.execs) == 1


# --- by name: the name is resolved inside the pod, and must lead to the target's eth0 address ---------------------

BY_NAME = Probe(source="bb1", target="bb2", network="main", interface="eth0", by_name=True)


def named(output: str, name: str = "bb2") -> str:
    """``output`` as ping prints it when given a name: the name, then the address it resolved to."""
    head, rest = output.split("\n", 1)
    address = head.split("(")[1].split(")")[0]
    return head.replace(f"PING {address} ", f"PING {name} ", 1) + "\n" + rest


@pytest.mark.parametrize("output", [IPUTILS_OK, BUSYBOX_OK])
def test_parse_ping_reads_where_a_name_led(output: str) -> None:
    address = output.split("(")[1].split(")")[0]
    assert parse_ping(named(output)).resolved == address
    assert parse_ping(named(output), expected=address).ok
    assert not parse_ping(named(output), expected="10.250.0.99").ok  # replies, but from another address


def test_run_check_by_name_pings_the_name_and_passes_when_it_led_to_the_target() -> None:
    backend = scripted(named(IPUTILS_OK), "PING bb2 (10.10.12.3) 56(84) bytes of data.\n" + IPUTILS_BURST)
    result = run_check(backend, PLAN, BY_NAME, "10.10.12.3/24", deadline=time.monotonic() + 5)  # type: ignore[arg-type]
    assert [argv[-1] for _, argv in backend.execs] == ["bb2", "bb2"]  # the name, never the address
    assert result.ok and result.resolved == "10.10.12.3"


def test_run_check_by_name_fails_when_the_name_leads_elsewhere() -> None:
    # the replies come from 10.10.12.3, but the target's eth0 is 10.250.0.3: another pod answered
    backend = scripted(named(IPUTILS_OK))
    result = run_check(backend, PLAN, BY_NAME, "10.250.0.3/24", deadline=time.monotonic() + 0.3)  # type: ignore[arg-type]
    assert not result.ok and result.resolved == "10.10.12.3"
    assert len(backend.execs) >= 2  # kept trying until the deadline


def test_run_check_by_name_fails_when_the_name_does_not_resolve() -> None:
    backend = scripted("ping: bad address 'bb2'\n")
    result = run_check(backend, PLAN, BY_NAME, "10.250.0.3/24", deadline=time.monotonic() + 0.3)  # type: ignore[arg-type]
    assert not result.ok and result.resolved is None and result.received == 0
