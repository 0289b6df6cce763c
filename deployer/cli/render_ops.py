"""Text output of the fleet-operation tasks: status, releases and check tables, the start/stop/restart plan.

The tables render the JSON documents the operations produce (``status --json`` prints the same data), so
what a person reads and what a machine parses cannot disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deployer.cli.render import print_mixed

if TYPE_CHECKING:
    pass

HEALTH_TEXT = {
    "ok": "[green]yes[/]",
    "failing": "[bold red]NO[/]",
    "down": "[bold red]NO[/] (not running)",
    "none": "-",
    "unknown": "[yellow]?[/]",
}


def print_status(console: Console, document: dict[str, Any], env: str) -> None:
    """One row per host: reachable, current release and version, node pid, healthy, releases, lock."""
    table = Table(title="status")
    for column in ("host", "reachable", "current", "version", "node pid", "healthy", "releases", "lock"):
        table.add_column(column, overflow="fold")
    for h in document["hosts"]:
        healthy = HEALTH_TEXT.get(h.get("health") or "", "-")
        if h.get("health_error") and h.get("health") in ("failing", "unknown"):
            healthy += f" {escape(h['health_error'])}"
        table.add_row(
            h["host"],
            "yes" if h["reachable"] else f"[red]NO[/] {escape(h['error'] or '')}",
            (h["current"] or "-") + (f" (hot-upgraded; node runs from {h['hot_root']})" if h.get("hot_root") else ""),
            h["version"] or "-",
            " ".join(map(str, h["node_pids"])) or "not running",
            healthy,
            str(len(h["releases"])),
            escape(h["lock"] or "-"),
        )
    console.print(table)
    for h in document["hosts"]:
        unit = h.get("unit")
        if unit:  # node.service: systemd: what systemd says about the node's unit
            console.print(
                f"{h['host']}: unit {unit['active']} ({unit['sub']}), {unit['enabled']}, main pid "
                f"{unit['main_pid'] or '-'}, restarted by systemd {unit['restarts']} time(s)",
                highlight=False,
            )
    for balancer, servers in (document.get("balancer") or {}).items():
        states = ", ".join(f"{host} {escape(state)}" for host, state in servers.items())
        console.print(f"load balancer {balancer}: {states}", highlight=False)
    if document["mixed"]:
        print_mixed(console, env)


RELEASE_STYLE = {"good": "green", "failed": "bold red", "unknown": "yellow"}


def print_releases(console: Console, document: dict[str, Any]) -> None:
    """Per host, the releases on disk oldest first: id, version, good/failed/unknown, the current one."""
    for host in document["hosts"]:
        if not host["reachable"]:
            console.print(f"[bold]{host['host']}[/]: [red]unreachable[/] {escape(host['error'] or '')}")
            continue
        table = Table(title=host["host"], title_justify="left")
        for column in ("", "release", "version", "status"):
            table.add_column(column)
        for entry in host["releases"]:
            style = RELEASE_STYLE.get(entry["status"], "")
            table.add_row(
                "[bold]current[/]" if entry["current"] else "",
                entry["release"],
                entry["version"] or "-",
                f"[{style}]{entry['status']}[/]",
            )
        if not host["releases"]:
            table.add_row("", "(no releases)", "", "")
        console.print(table)


def print_check(console: Console, document: dict[str, Any]) -> None:
    """The preflight table: what each host has, and every problem found."""
    if document.get("note"):
        console.print(document["note"], highlight=False)
    if document.get("source"):
        console.print(
            f"a deploy from here records: built from {document['source']['describe']}, "
            f"deployer {document.get('deployer') or '?'}",
            highlight=False,
            markup=False,
        )
    table = Table(title="check")
    for column in ("host", "ssh", "arch", "libc", "disk free", "tools", "current (built from)", "result"):
        table.add_column(column, overflow="fold")
    for row in document["hosts"]:
        reachable = row["reachable"]
        free = row.get("disk_free_kb")
        table.add_row(
            row["host"],
            "ok" if reachable else "[red]FAILED[/]",
            (row.get("arch") or "?") if reachable else "-",
            escape(row.get("libc") or "?") if reachable else "-",
            f"{free // 1024} MiB" if free is not None else "-",
            " ".join(row.get("tools") or []) if reachable else "-",
            escape(f"{row['release']} ({row.get('built_from') or 'unknown'})") if row.get("release") else "-",
            "[green]ok[/]" if row["ok"] else "[bold red]" + escape("; ".join(row["problems"])) + "[/]",
        )
    console.print(table)
    failed = [r["host"] for r in document["hosts"] if not r["ok"]]
    if failed:
        console.print(f"[bold red]check failed[/] on {', '.join(failed)}", highlight=False)
    else:
        console.print("[bold green]check passed[/]: every host is ready", highlight=False)
