"""Turns events, plans and reports into text for people (rich) or JSON for machines.

Per-host lines carry the host name as a prefix; uploads get a progress bar per
host when the output is a terminal; a summary table closes every run. When the
output is not a terminal (CI logs) there are no bars or colours, only lines.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from deployer.core.facts import format_age
from deployer.core.outcome import Report
from deployer.core.plan import Plan
from deployer.operations.release import HostStatus
from deployer.remote.fragments import fold_helpers as _fold
from deployer.remote.shell import Script

STATUS_STYLE = {
    "done": "green",
    "skipped": "cyan",
    "failed": "bold red",
    "start": "dim",
    "success": "green",
    "reverted": "yellow",
    "aborted": "yellow",
    "untouched": "dim",
    "unreachable": "bold red",
    "pending": "dim",
}


class ConsoleEvents:
    """Live output of a run. Thread-safe: hosts report from worker threads."""

    def __init__(self, console: Console, *, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self.width = 12

    def phase(self, name: str, detail: str = "") -> None:
        self._stop_progress()
        self.console.print(f"[bold blue]==>[/] [bold]{escape(name)}[/] {escape(detail)}", highlight=False)

    def step(self, host: str, step: str, status: str, detail: str = "") -> None:
        if status == "start" and not self.verbose:
            return
        style = STATUS_STYLE.get(status, "default")
        first, *rest = (detail or "").splitlines() or [""]
        with self._lock:
            self.console.print(
                f"  [bold]{host:<{self.width}}[/] {step:<18} [{style}]{escape(status)}[/] {escape(first)}",
                highlight=False,
                markup=True,
            )
            for line in rest:
                self.console.print(f"  {host:<{self.width}} | {line}", highlight=False, markup=False)

    def progress(self, host: str, sent: int, total: int) -> None:
        if not self.console.is_terminal:
            return
        with self._lock:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("  {task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=self.console,
                    transient=True,
                )
                self._progress.start()
            if host not in self._tasks:
                self._tasks[host] = self._progress.add_task(f"{host:<{self.width}} upload", total=total)
            self._progress.update(self._tasks[host], completed=sent)

    def output(self, host: str, stream: str, text: str) -> None:
        if not self.verbose:
            return
        with self._lock:
            if stream == "script":
                self.console.print(f"  {host:<{self.width}} $ sh -s <<'SCRIPT'", highlight=False, markup=False)
                for line in fold_helpers(text).splitlines():
                    self.console.print(f"  {host:<{self.width}} > {line}", highlight=False, markup=False)
                return
            for line in text.splitlines():
                if line.startswith("@@step "):
                    continue
                self.console.print(f"  {host:<{self.width}} {stream[:3]}| {line}", highlight=False, markup=False)

    def warning(self, text: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False)

    def _stop_progress(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
                self._tasks.clear()


def fold_helpers(script_text: str) -> str:
    """Show the shared shell helper functions as one line; they are the same in every script."""
    return _fold(script_text)


def render_script(script: Script, *, full: bool) -> str:
    text = script.render(reveal=False)
    return text if full else fold_helpers(text)


def print_plan(console: Console, plan: Plan, *, full_scripts: bool = False) -> None:
    """``--dry-run``: the batches, per-host steps, and the exact scripts (secrets masked)."""
    console.print(
        f"[bold]Plan:[/] {plan.kind} in {plan.env}" + (f" of release {plan.release_id}" if plan.release_id else ""),
        highlight=False,
    )
    if plan.artifact is not None:
        a = plan.artifact
        console.print(f"  artifact {a.path} version {a.version} sha256 {a.sha256} ({a.size} bytes)", highlight=False)
    for i, batch in enumerate(plan.batches, start=1):
        console.print(f"  batch {i}: {', '.join(batch)}", highlight=False)
    if plan.migrator:
        console.print(f"  migration on {plan.migrator} before any host switches", highlight=False)
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}", highlight=False)
    for host_plan in plan.hosts:
        console.print(
            f"\n[bold]{host_plan.host}[/]: {host_plan.before or '(nothing)'} -> {host_plan.target}", highlight=False
        )
        steps: list[tuple[str, Script]] = []
        if host_plan.upload:
            steps.append(("upload (tarball on stdin)", plan.upload_scripts[host_plan.host]))
        elif plan.kind == "deploy":
            console.print("  upload: skipped, the host already has this artifact", highlight=False)
        if host_plan.prepare is not None:
            steps.append(("prepare", host_plan.prepare))
        if plan.migrate is not None and plan.migrator == host_plan.host:
            steps.append(("migrate (once, before any switch)", plan.migrate))
        steps.append(("activate", host_plan.activate))
        steps.append(("on failure: revert", host_plan.revert))
        for note in host_plan.notes:
            console.print(f"  {note}", highlight=False)
        for label, script in steps:
            console.print(
                f"  --- {label}: {script.remote_command() if not script.stdin else 'sh -s <<SCRIPT'}",
                highlight=False,
                markup=False,
            )
            for line in render_script(script, full=full_scripts).splitlines():
                console.print(f"    {line}", highlight=False, markup=False)
    if plan.kind == "migrate" and plan.migrate is not None:
        console.print(f"\n[bold]{plan.migrator}[/]: migrate with {plan.release_id}", highlight=False)
        for line in render_script(plan.migrate, full=full_scripts).splitlines():
            console.print(f"    {line}", highlight=False, markup=False)
    console.print("\n[bold]dry run:[/] nothing was changed on any host.", highlight=False)


def print_report(console: Console, report: Report) -> None:
    """The closing summary table: host, release before -> after, outcome, health, time, error."""
    table = Table(title=f"{report.operation} {report.env}" + (f" {report.release}" if report.release else ""))
    for column in ("host", "before", "after", "result", "healthy", "time", "detail"):
        table.add_column(column, overflow="fold")
    for h in report.hosts:
        style = STATUS_STYLE.get(h.outcome, "default")
        healthy = "-" if h.healthy is None else ("yes" if h.healthy else "NO")
        detail = f"{h.step}: {h.error}" if h.step and h.error else (h.error or "")
        table.add_row(
            h.host,
            h.before or "-",
            h.after or "?",
            f"[{style}]{h.outcome}[/]",
            healthy,
            f"{sum(h.timings.values()):.1f}s",
            escape(detail),
        )
    console.print(table)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    if report.mixed:
        console.print(
            "[bold yellow]the fleet is mixed:[/] hosts run different releases; "
            "`invoke deploy` or `invoke rollback` converges it",
            highlight=False,
        )
    if report.error:
        console.print(f"[bold red]error:[/] {escape(report.error)}", highlight=False, markup=True)
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{report.operation}: {verdict} in {report.duration:.1f}s", highlight=False)


def print_json(data: Any, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def status_json(rows: list[HostStatus]) -> dict[str, Any]:
    hosts = []
    for row in rows:
        f = row.facts
        hosts.append(
            {
                "host": row.host,
                "reachable": row.reachable,
                "error": row.error,
                "current": f.current_release if f else None,
                "version": f.current_version if f else None,
                "node_pids": list(f.node_pids) if f else [],
                "running": bool(f and f.node_pids),
                "releases": [
                    {"release": r, "version": f.history.version(r), "status": f.history.status(r) or "unknown"}
                    for r in f.releases
                ]
                if f
                else [],
                "lock": f.lock.describe() if f and f.lock else None,
                "disk_free_kb": f.disk_free_kb if f else None,
            }
        )
    currents = {h["current"] for h in hosts if h["reachable"]}
    return {"hosts": hosts, "mixed": len(currents) > 1}


def print_status(console: Console, rows: list[HostStatus]) -> None:
    data = status_json(rows)
    table = Table(title="status")
    for column in ("host", "reachable", "current", "version", "node pid", "releases", "lock"):
        table.add_column(column, overflow="fold")
    for h in data["hosts"]:
        table.add_row(
            h["host"],
            "yes" if h["reachable"] else f"[red]NO[/] {escape(h['error'] or '')}",
            h["current"] or "-",
            h["version"] or "-",
            " ".join(map(str, h["node_pids"])) or "not running",
            str(len(h["releases"])),
            h["lock"] or "-",
        )
    console.print(table)
    if data["mixed"]:
        console.print("[bold yellow]mixed fleet:[/] hosts run different releases", highlight=False)


def print_history(console: Console, rows: list[HostStatus]) -> None:
    for row in rows:
        if row.facts is None:
            console.print(f"[bold]{row.host}[/]: unreachable: {escape(row.error or '')}", highlight=False)
            continue
        console.print(f"[bold]{row.host}[/]", highlight=False)
        for rev in row.facts.history.revisions:
            console.print(
                f"  {rev.time}  {rev.event:<9} {rev.outcome:<8} {rev.release}  by {rev.by or '?'}"
                + (f"  ({rev.detail})" if rev.detail else ""),
                highlight=False,
                markup=False,
            )


__all__ = [
    "ConsoleEvents",
    "format_age",
    "print_history",
    "print_json",
    "print_plan",
    "print_report",
    "print_status",
    "status_json",
]
