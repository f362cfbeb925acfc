"""``python -m workers.node_agent --node NAME [--kubeconfig FILE]``: run the node agent on node NAME, in
this process's network namespace (the node's: a DaemonSet's hostNetwork). Needs NET_ADMIN there."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from scheduler.core.checks import is_node_name
from scheduler.core.errors import SchedulerError
from scheduler.services.logging import configure
from workers.backends.kubernetes.api import api_client
from workers.node_agent.agent import NodeAgent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.node_agent", description=__doc__)
    parser.add_argument("--node", required=True, help="this node's name, as the API knows it")
    parser.add_argument("--kubeconfig", type=Path, help="else the in-cluster ServiceAccount")
    parser.add_argument("--mtu", type=int, default=1500, help="the VXLAN devices' MTU (underlay MTU less 50)")
    parser.add_argument("--resync", type=float, default=30.0, help="seconds between passes when nothing changes")
    parser.add_argument("--ready-file", type=Path, help="written after the first complete pass")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    args = parser.parse_args(argv)
    if not is_node_name(args.node):
        parser.error(f"--node {args.node!r} is not a node name")
    if not 576 <= args.mtu <= 9000:
        parser.error(f"--mtu {args.mtu} is not in 576..9000")
    if not 1 <= args.resync <= 3600:
        parser.error(f"--resync {args.resync} is not in 1..3600")
    configure(args.log_format)
    try:
        api = api_client(args.kubeconfig)
    except SchedulerError as exc:
        parser.exit(2, f"node agent: {exc}\n")
    stop = threading.Event()

    def leave(*_: object) -> None:
        # raised, not only flagged: a watch blocks in a read for up to --resync seconds. Leaving mid-pass is
        # safe, every pass being idempotent; the devices stay, they belong to live lessons
        stop.set()
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, leave)
    try:
        NodeAgent(api, args.node, mtu=args.mtu, resync=args.resync).run(stop, ready_file=args.ready_file)
    finally:
        api.close()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
