"""How lessonctl shows a live lesson: the record as Rich tables (endpoints, presentations, the ping matrix).

Only rendering: no Redis, no backend. ``out`` and ``err`` are the two consoles every command prints to.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from scheduler.core.records import EMULATED_NOTE, LiveLesson, substitute_note

__all__ = ["err", "out", "print_record", "status_markup"]

out = Console()
err = Console(stderr=True)


def print_record(record: LiveLesson, as_json: bool) -> None:
    if as_json:
        click.echo(record.model_dump_json(indent=2))
        return
    status = status_markup(record.status)
    out.print(f"[bold]{record.id}[/bold]  {record.lesson}  session={record.session}  status={status}")
    if record.error:
        out.print(f"  [red]error in {record.error.step}:[/red] {record.error.message}", highlight=False)
    if record.image_substitute:
        out.print(f"  {substitute_note(record.image_substitute)}", style="yellow", markup=False, highlight=False)
    if record.endpoints:
        out.print(_endpoints_table(record))
    if any(ep.presentations for ep in record.endpoints.values()):
        out.print(_presentations_table(record))
        for ep in record.endpoints.values():  # whole lines, to copy: a table cell would wrap them
            for p in ep.presentations:
                out.print(f"  {p.forward}", soft_wrap=True, highlight=False, markup=False)
    if record.checks:
        out.print(_ping_matrix(record))
        crossed = [f"{c.source}->{c.target}" for c in record.checks if c.crossed_nodes and not c.by_name]
        if crossed:
            out.print(
                f"across nodes: {len(crossed)} link pings went through a VXLAN tunnel between nodes: "
                + ", ".join(crossed),
                highlight=False,
            )
        named = [c for c in record.checks if c.by_name]
        if named:
            failed = [f"{c.source}->{c.target} ({c.address or 'unresolved'})" for c in named if not c.ok]
            passed = len(named) - len(failed)
            summary = f"by name: {passed} of {len(named)} pings over eth0 reached the name's endpoint"
            out.print(summary + (f"; failing: {', '.join(failed)}" if failed else ""), highlight=False)


def status_markup(status: str) -> str:
    colour = {"ready": "green", "failed": "red", "deleted": "dim", "deleting": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/{colour}]"


def _endpoints_table(record: LiveLesson) -> Table:
    kind = f"; {EMULATED_NOTE}" if record.pods == "emulated" else "; pods are containers"
    nodes = sorted({ep.node for ep in record.endpoints.values() if ep.node})
    split = len(nodes) > 1  # a node column only when the lesson spans several
    where = f"split over {len(nodes)} nodes" if split else f"node {record.node or '-'}"
    table = Table(title=f"endpoints ({where}{kind})", title_justify="left")
    for column in ("endpoint", *(["node"] if split else []), "pod", "ready", "interface", "network", "address"):
        table.add_column(column)
    for name, ep in record.endpoints.items():
        rows: list[Any] = list(ep.interfaces) or [None]
        for i, itf in enumerate(rows):
            table.add_row(
                name if i == 0 else "",
                *([(ep.node or "-") if i == 0 else ""] if split else []),
                ep.pod if i == 0 else "",
                ("yes" if ep.ready else "no") if i == 0 else "",
                itf.name if itf else "-",
                itf.network if itf else "-",
                (itf.address or "-") if itf else "-",
            )
    return table


def _presentations_table(record: LiveLesson) -> Table:
    table = Table(title="presentations (from this machine: the port-forward commands below)", title_justify="left")
    for column in ("endpoint", "name", "type", "port", "in the lesson"):
        table.add_column(column)
    for name, ep in record.endpoints.items():
        for p in ep.presentations:
            table.add_row(name, p.name, p.type, str(p.port), p.reach)
    return table


def _ping_matrix(record: LiveLesson) -> Table:
    names = list(record.endpoints)
    table = Table(
        title="pings over the links (rows ping columns; average RTT and loss of the burst)", title_justify="left"
    )
    table.add_column("from \\ to")
    for name in names:
        table.add_column(name, justify="right")
    cells = {(c.source, c.target): c for c in record.checks if not c.by_name}
    for source in names:
        row = []
        for target in names:
            c = cells.get((source, target))
            if c is None:
                row.append("" if source != target else "-")
            elif c.ok:
                rtt = f"{c.rtt_avg_ms:.3f} ms" if c.rtt_avg_ms is not None else "ok"
                row.append(f"[green]{rtt} {c.loss_pct:g}%[/green]")
            else:
                row.append(f"[red]{c.received}/{c.sent} {c.loss_pct:g}%[/red]")
        table.add_row(source, *row)
    return table
