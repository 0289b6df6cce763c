"""Text output of the fleet-operation tasks: status, releases, check tables and the lifecycle plan."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deployer.operations import release as api
from deployer.operations.node import (
    CheckRow,
    HostStatus,
    releases_document,
    status_document,
)

HEALTH_TEXT = {
    "ok": "[green]yes[/]",
    "failing": "[bold red]NO[/]",
    "down": "[bold red]NO[/] (not running)",
    "none": "-",
    "unknown": "[yellow]?[/]",
}


def print_status(console: Console, rows: Sequence[HostStatus]) -> None:
    """One row per host: reachable, current release and version, node pid, healthy, releases, lock."""
    data = status_document(rows)
    table = Table(title="status")
    for column in ("host", "reachable", "current", "version", "node pid", "healthy", "releases", "lock"):
        table.add_column(column, overflow="fold")
    for h in data["hosts"]:
        healthy = HEALTH_TEXT.get(h["health"] or "", "-")
        if h["health_error"] and h["health"] in ("failing", "unknown"):
            healthy += f" {escape(h['health_error'])}"
        table.add_row(
            h["host"],
            "yes" if h["reachable"] else f"[red]NO[/] {escape(h['error'] or '')}",
            h["current"] or "-",
            h["version"] or "-",
            " ".join(map(str, h["node_pids"])) or "not running",
            healthy,
            str(len(h["releases"])),
            escape(h["lock"] or "-"),
        )
    console.print(table)
    if data["mixed"]:
        console.print(
            "[bold yellow]mixed fleet:[/] hosts run different releases; "
            "`invoke deploy` or `invoke rollback` converges it",
            highlight=False,
        )


STATUS_STYLE = {"good": "green", "failed": "bold red", "unknown": "yellow"}


def print_releases(console: Console, rows: Sequence[api.HostStatus]) -> None:
    """Per host, the releases on disk oldest first: id, version, good/failed/unknown, the current one."""
    for host in releases_document(rows)["hosts"]:
        if not host["reachable"]:
            console.print(f"[bold]{host['host']}[/]: [red]unreachable[/] {escape(host['error'] or '')}")
            continue
        table = Table(title=host["host"], title_justify="left")
        for column in ("", "release", "version", "status"):
            table.add_column(column)
        for entry in host["releases"]:
            style = STATUS_STYLE.get(entry["status"], "")
            table.add_row(
                "[bold]current[/]" if entry["current"] else "",
                entry["release"],
                entry["version"] or "-",
                f"[{style}]{entry['status']}[/]",
            )
        if not host["releases"]:
            table.add_row("", "(no releases)", "", "")
        console.print(table)


def print_check(console: Console, rows: Sequence[CheckRow], note: str | None = None) -> None:
    """The preflight table: what each host has, and every problem found."""
    if note:
        console.print(f"note: {note}", highlight=False)
    table = Table(title="check")
    for column in ("host", "ssh", "arch", "libc", "disk free", "tools", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        f = row.facts
        result = "[green]ok[/]" if row.ok else "[bold red]" + escape("; ".join(row.problems)) + "[/]"
        table.add_row(
            row.host,
            "ok" if row.reachable else "[red]FAILED[/]",
            (f.arch or "?") if f else "-",
            escape(f.libc or "?") if f else "-",
            f"{f.disk_free_kb // 1024} MiB" if f and f.disk_free_kb is not None else "-",
            " ".join(sorted(f.tools)) if f else "-",
            result,
        )
    console.print(table)
    failed = [r.host for r in rows if not r.ok]
    if failed:
        console.print(f"[bold red]check failed[/] on {', '.join(failed)}", highlight=False)
    else:
        console.print("[bold green]check passed[/]: every host is ready", highlight=False)
