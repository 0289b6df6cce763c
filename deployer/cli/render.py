"""Turns events, plans and reports into text for people (rich, on stderr) or JSON for machines (stdout).

Per-host lines carry the host name as a prefix; uploads get a progress bar per host when the output is a
terminal; a summary table closes every run. Off a terminal (CI logs) there are no bars or colours, only
lines. Renderers read the core's models (plan, outcome, facts) and never call into the operations.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from deployer.cli.catalogue import pointer
from deployer.core.facts import HostFacts
from deployer.core.outcome import Report
from deployer.core.plan import HostPlan, Plan

if TYPE_CHECKING:
    from deployer.remote.shell import Script
from deployer.ssh import logs as ssh_logs

STATUS_STYLE = {
    "done": "green",
    "skipped": "cyan",
    "failed": "bold red",
    "start": "dim",
    "success": "green",
    "unchanged": "green",
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
        if verbose:  # paramiko's own log lines, prefixed with their host (never shown otherwise)
            ssh_logs.set_sink(lambda host, line: self.output(host, "ssh", line))

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
                for line in text.splitlines():
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


# --- plans (--dry-run) --------------------------------------------------------------------------------------


def print_script(console: Console, label: str, script: Script) -> None:
    """One step's exact remote script (secrets masked), indented under its label (``--dry-run --verbose``)."""
    how = "sh -s <<SCRIPT" if script.stdin else script.remote_command()
    console.print(f"      --- {label}: {how}", highlight=False, markup=False)
    for line in script.render(reveal=False).splitlines():
        console.print(f"        {line}", highlight=False, markup=False)


def print_batches(
    console: Console, batches: Sequence[Sequence[str]], *, max_fail: int, pause: float, gate: bool = True
) -> None:
    """The batches in order, and what stops the rollout: shared by every plan that touches hosts."""
    total = sum(len(b) for b in batches)
    console.print(f"  {total} host(s) in {len(batches)} batch(es):", highlight=False)
    for i, batch in enumerate(batches, start=1):
        console.print(f"    batch {i}: {', '.join(batch)}", highlight=False)
    if gate:
        console.print(
            f"  health gate on every host; more than {max_fail} failed host(s) stop the rollout", highlight=False
        )
    if pause and len(batches) > 1:
        console.print(f"  pause {pause:g}s between batches", highlight=False)


def print_dry_run_footer(console: Console, verbose: bool) -> None:
    """The last lines of every ``--dry-run``: nothing changed, and how to see the scripts."""
    more = "" if verbose else " (--verbose also prints the exact remote scripts)"
    console.print(f"\n[bold]dry run:[/] nothing was changed on any host{more}.", highlight=False)


NODE_PHASES = {
    "start": "lock -> per batch: start the stopped nodes, health gate -> unlock",
    "stop": "lock -> per batch: SIGTERM each VM, wait for it to exit (SIGKILL after node.stop_timeout) -> unlock",
    "restart": "lock -> per batch: stop, wait for exit, start, health gate -> unlock",
}


def _phases(plan: Plan) -> str:
    if plan.kind == "env push":
        then = ", restart if it changed, health gate (old file back on failure)" if plan.health_gated else ""
        return f"lock -> per batch: write the environment file{then} -> unlock"
    if plan.kind in NODE_PHASES:
        return NODE_PHASES[plan.kind]
    if plan.kind == "migrate":
        return f"lock -> migrate on {plan.migrator} -> unlock"
    first = ["lock every host"]
    if plan.kind in ("deploy", "upgrade"):
        first += ["upload", "prepare"]
    if plan.migrator and plan.migrate is not None:
        first.append(f"migrate once on {plan.migrator}")
    publish = "per batch: switch, restart, health gate (revert on failure)"
    if plan.kind == "upgrade":
        publish = "per batch: switch, install in the running node, health gate, make permanent (revert on failure)"
    return " -> ".join([*first, publish, "unlock"])


def _host_header(host: HostPlan) -> str:
    """What a host runs now and, when the operation changes the release, what it will run."""
    if host.target != host.before:
        return f"{host.before or '(nothing)'} -> {host.target}"
    running = f"node pid {' '.join(map(str, host.node_pids))}" if host.node_pids else "node not running"
    return f"{host.before or '(nothing deployed)'}" + (f" ({host.version})" if host.version else "") + f", {running}"


def print_plan(console: Console, plan: Plan, *, verbose: bool = False) -> None:
    """``--dry-run`` of deploy, rollback, migrate: phases, batches, per-host steps; scripts with --verbose."""
    title = f"[bold]Plan:[/] {plan.kind} in {plan.env}"
    if plan.release_id:
        title += f", release {plan.release_id}" + (f" (version {plan.version})" if plan.version else "")
    console.print(title, highlight=False)
    if plan.artifact is not None:
        a = plan.artifact
        console.print(
            f"  artifact {a.path} version {a.version} sha256 {a.short_sha} ({a.size / 2**20:.1f} MiB)", highlight=False
        )
    console.print(f"  phases: {_phases(plan)}", highlight=False)
    if plan.hosts:
        print_batches(console, plan.batches, max_fail=plan.max_fail, pause=plan.pause, gate=plan.kind != "stop")
    for warning in plan.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}", highlight=False)
    for host in plan.hosts:
        steps: list[tuple[str, Script | None]] = list(plan.listing(host))
        if plan.kind in ("deploy", "upgrade") and not host.upload:
            steps.insert(0, ("upload skipped (already on the host)", None))
        console.print(
            f"  [bold]{host.host}[/]: {_host_header(host)}: " + ", ".join(label for label, _ in steps),
            highlight=False,
        )
        for note in host.notes:
            console.print(f"      {escape(note)}", highlight=False)
        if verbose:
            for label, script in steps:
                if script is not None:
                    print_script(console, label, script)
    if plan.kind == "migrate" and plan.migrate is not None:
        console.print(f"  [bold]{plan.migrator}[/]: migrate with {plan.release_id}", highlight=False)
        if verbose:
            print_script(console, "migrate", plan.migrate)
    print_dry_run_footer(console, verbose)


# --- reports ----------------------------------------------------------------------------------------------


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
        print_mixed(console, report.env)
    if report.error:
        console.print(f"[bold red]error:[/] {escape(report.error)}", highlight=False, markup=True)
        console.print(f"  {pointer(report.error)}", highlight=False, markup=False)
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{report.operation}: {verdict} in {report.duration:.1f}s", highlight=False)


def print_mixed(console: Console, env: str) -> None:
    """The fleet runs different releases: say how to converge it."""
    console.print(
        "[bold yellow]mixed fleet:[/] hosts run different releases; "
        f"`deployer deploy --env {env}` or `deployer rollback --env {env}` converges it",
        highlight=False,
    )


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Machine output: the JSON document on stdout."""
    (stream or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (stream or sys.stdout).flush()


class ProbedHost(Protocol):
    """A host as probed by ``status``/``history``: its facts, or why it could not be probed."""

    @property
    def host(self) -> str: ...
    @property
    def facts(self) -> HostFacts | None: ...
    @property
    def error(self) -> str | None: ...


def print_history(console: Console, rows: Sequence[ProbedHost]) -> None:
    """Each host's revisions.log: when, what, outcome, release, who, from which commit, with which deployer."""
    for row in rows:
        if row.facts is None:
            console.print(f"[bold]{row.host}[/]: unreachable: {escape(row.error or '')}", highlight=False)
            continue
        console.print(f"[bold]{row.host}[/]", highlight=False)
        for rev in row.facts.history.revisions:
            source = rev.built_from
            console.print(
                f"  {rev.time}  {rev.event:<9} {rev.outcome:<8} {rev.release}  by {rev.by or '?'}"
                + f"  from {source.describe() if source else 'unknown'}"
                + f"  deployer {rev.deployer or '?'}"
                + (f"  ({rev.detail})" if rev.detail else ""),
                highlight=False,
                markup=False,
            )


def history_document(rows: Sequence[ProbedHost], env: str) -> dict[str, Any]:
    """``deployer history --json``: every host's records, oldest first (fields absent from old records are null)."""
    hosts = []
    for row in rows:
        revisions = []
        for rev in row.facts.history.revisions if row.facts is not None else ():
            source = rev.built_from
            revisions.append(
                {
                    "time": rev.time,
                    "event": rev.event,
                    "outcome": rev.outcome,
                    "release": rev.release,
                    "version": rev.version,
                    "by": rev.by,
                    "commit": source.commit if source else None,
                    "dirty": source.dirty if source and source.commit else None,
                    "source": source.describe() if source else None,
                    "deployer": rev.deployer,
                    "previous": rev.previous,
                    "detail": rev.detail,
                }
            )
        hosts.append({"host": row.host, "reachable": row.facts is not None, "error": row.error, "revisions": revisions})
    return {"env": env, "hosts": hosts}


__all__ = [
    "ConsoleEvents",
    "ProbedHost",
    "history_document",
    "print_batches",
    "print_dry_run_footer",
    "print_history",
    "print_json",
    "print_mixed",
    "print_plan",
    "print_report",
    "print_script",
]
