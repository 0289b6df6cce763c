"""The Invoke collection: ``invoke deploy --env prod`` and friends.

Tasks are thin: parse flags, load the inventory, call :mod:`deployer.operations.release`, print
the result, exit non-zero on failure. A project's ``tasks.py`` needs two lines::

    from deployer.tasks import ns  # noqa: F401
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.console import Console
from rich.markup import escape

from deployer.build import builder as build
from deployer.cli.render import (
    ConsoleEvents,
    print_history,
    print_json,
    print_plan,
    print_report,
)
from deployer.core.artifact import Artifact, inspect_tarball, version_from_filename
from deployer.core.inventory import Inventory, load_inventory
from deployer.errors import DeployerError
from deployer.operations import release as api

COMMON_HELP = {
    "env": "Environment: reads inventory/<env>.yml (required).",
    "hosts": "Only these hosts (comma-separated names).",
    "roles": "Only hosts with one of these roles (comma-separated).",
    "inventory_dir": "Directory holding the inventory files (default: inventory).",
    "json_": "Print a machine-readable JSON report on stdout (progress goes to stderr).",
    "verbose": "Show the exact remote scripts (secrets masked) and their output.",
    "dry_run": "Print the plan (batches, per-host steps, exact scripts) and change nothing.",
}


def _help(*names: str, **extra: str) -> dict[str, str]:
    """Help texts for the given common flags plus task-specific ones."""
    return {**{name: COMMON_HELP[name] for name in names}, **extra}


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _consoles(json_: bool) -> tuple[Console, Console]:
    """(human output, error output). With --json, humans read stderr and stdout stays pure JSON."""
    # Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns and split release ids.
    width = None if sys.stdout.isatty() else 160
    human = Console(stderr=True, width=width) if json_ else Console(width=width)
    return human, Console(stderr=True, width=width)


@contextmanager
def _interruptible(console: Console) -> Iterator[threading.Event]:
    """First SIGINT/SIGTERM: let running host steps finish, undo, unlock. Second SIGINT: stop at once."""
    cancel = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        cancel.set()
        name = signal.Signals(signum).name
        console.print(
            f"[bold yellow]{name}:[/] finishing the running host steps, then undoing and unlocking "
            "(Ctrl-C again to abandon the run)",
            highlight=False,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _load(env: str | None, inventory_dir: str, *, secrets: bool = True) -> Inventory:
    if not env:
        raise Exit("error: --env is required (it selects inventory/<env>.yml)", code=2)
    try:
        return load_inventory(env, inventory_dir, resolve_secrets=secrets)
    except DeployerError as exc:
        raise Exit(f"error: {exc}", code=2) from None


def _fail(console: Console, exc: DeployerError, code: int = 1) -> Exit:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
    return Exit(code=code)


def _artifact(inventory: Inventory, tarball: str | None, console: Console) -> Artifact:
    app = inventory.config.app.name
    expected = None
    if tarball:
        path = Path(tarball)
    else:
        what = inventory.config.build.command or "default build"
        if inventory.config.build.strategy == "docker":
            what = f"docker build -f {inventory.config.build.dockerfile}"
        console.print(
            f"[bold blue]==>[/] [bold]build[/] ({inventory.config.build.strategy}) {escape(what)}", highlight=False
        )
        path = build.build(inventory, log=lambda text: console.print(f"    {escape(text)}", highlight=False))
        # The build names the tarball after the version it built; the contents must agree.
        expected = version_from_filename(path, app)
    artifact = inspect_tarball(path, app, expected_version=expected)
    console.print(
        f"    release {artifact.name} {artifact.version} sha256 {artifact.short_sha} ({artifact.size / 2**20:.1f} MiB)",
        highlight=False,
    )
    return artifact


def _strategy(
    strategy: str | None, batch_size: str | None, canary: bool, max_fail: str | None, pause: str | None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if strategy:
        overrides["kind"] = strategy
    if batch_size:
        overrides["batch_size"] = batch_size
        overrides.setdefault("kind", "rolling")
    if canary:
        overrides["canary"] = True
    if max_fail is not None:
        overrides["max_fail"] = max_fail
    if pause is not None:
        try:
            overrides["pause"] = float(pause)
        except ValueError:
            raise Exit(f"error: --pause must be a number of seconds, got {pause!r}", code=2) from None
    if overrides.get("kind") not in (None, "parallel", "rolling"):
        raise Exit(f"error: --strategy must be parallel or rolling, got {overrides['kind']!r}", code=2)
    return overrides


def _finish(result: api.Result, human: Console, json_: bool, dry_run: bool, verbose: bool) -> None:
    if dry_run and result.plan is not None:
        print_plan(human, result.plan, full_scripts=verbose)
    if json_:
        print_json(result.report.to_json())
    if not dry_run or result.report.error:
        print_report(human, result.report)
    if not result.report.ok and not (dry_run and not result.report.error):
        raise Exit(code=1)


@task(
    positional=[],
    auto_shortflags=False,
    help=_help(
        "env",
        "hosts",
        "roles",
        "inventory_dir",
        "json_",
        "verbose",
        "dry_run",
        tarball="Deploy this prebuilt release tarball instead of building.",
        strategy="parallel or rolling (overrides the inventory).",
        batch_size="Hosts per batch when rolling: a count or a percentage like 25%.",
        canary="Switch one host first; nothing else proceeds until it is healthy.",
        max_fail="Failed hosts tolerated before no further batch starts (count or %).",
        pause="Seconds to wait between batches.",
        force="Deploy even to hosts the release cannot run on (architecture, libc or OpenSSL mismatch).",
    ),
)
def deploy(
    c: Context,
    env: str | None = None,
    tarball: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
    verbose: bool = False,
    strategy: str | None = None,
    batch_size: str | None = None,
    canary: bool = False,
    max_fail: str | None = None,
    pause: str | None = None,
    force: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Build the release and ship it: upload, extract, migrate once, switch atomically, restart, health-check.

    Every host is locked first. Anything failing before a switch leaves every host on its old release;
    a host whose new node is unhealthy is reverted on its own and the rollout stops.
    Exit status 0 only when every host ended healthy on the new release.
    """
    # A dry run resolves the secrets too (they are shown masked): a missing one is reported before any work.
    inventory = _load(env, inventory_dir, secrets=True)
    human, errors = _consoles(json_)
    try:
        artifact = _artifact(inventory, tarball, human)
        with _interruptible(human) as cancel:
            result = api.deploy(
                inventory,
                artifact,
                api.Options(
                    hosts=_split(hosts),
                    roles=_split(roles),
                    dry_run=dry_run,
                    strategy=_strategy(strategy, batch_size, canary, max_fail, pause),
                    events=ConsoleEvents(human, verbose=verbose),
                    cancel=cancel,
                    force=force,
                ),
            )
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    _finish(result, human, json_, dry_run, verbose)


@task(positional=[], auto_shortflags=False, help=_help("env", "inventory_dir", "json_", "verbose", "dry_run"))
def migrate(
    c: Context,
    env: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
    verbose: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Run the current release's migration once, on the migrator host, under the deploy lock."""
    # The migration runs with the environment file already on the host: no secret is needed here.
    inventory = _load(env, inventory_dir, secrets=False)
    human, errors = _consoles(json_)
    try:
        with _interruptible(human) as cancel:
            result = api.migrate(
                inventory, api.Options(dry_run=dry_run, events=ConsoleEvents(human, verbose=verbose), cancel=cancel)
            )
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    _finish(result, human, json_, dry_run, verbose)


@task(
    positional=[],
    auto_shortflags=False,
    help=_help(
        "env",
        "hosts",
        "roles",
        "inventory_dir",
        "json_",
        "verbose",
        "dry_run",
        to="Release id or version to roll back to (default: each host's previous good release).",
        strategy="parallel or rolling (overrides the inventory).",
        batch_size="Hosts per batch when rolling.",
    ),
)
def rollback(
    c: Context,
    env: str | None = None,
    to: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    dry_run: bool = False,
    json_: bool = False,
    verbose: bool = False,
    strategy: str | None = None,
    batch_size: str | None = None,
    inventory_dir: str = "inventory",
) -> None:
    """Switch hosts back to the previous good release (or --to), restart and health-check.

    Refuses when a host has nothing to roll back to or lacks the named release. Failed releases are
    never rollback targets.
    """
    inventory = _load(env, inventory_dir, secrets=False)
    human, errors = _consoles(json_)
    try:
        with _interruptible(human) as cancel:
            result = api.rollback(
                inventory,
                to,
                api.Options(
                    hosts=_split(hosts),
                    roles=_split(roles),
                    dry_run=dry_run,
                    strategy=_strategy(strategy, batch_size, False, None, None),
                    events=ConsoleEvents(human, verbose=verbose),
                    cancel=cancel,
                ),
            )
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    _finish(result, human, json_, dry_run, verbose)


@task(positional=[], auto_shortflags=False, help=_help("env", "hosts", "roles", "inventory_dir"))
def history(
    c: Context,
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    inventory_dir: str = "inventory",
) -> None:
    """The deploy history of each host from revisions.log: when, what, who, outcome."""
    inventory = _load(env, inventory_dir, secrets=False)
    human, errors = _consoles(False)
    try:
        rows = api.status(inventory, api.Options(hosts=_split(hosts), roles=_split(roles)))
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    print_history(human, rows)


@task(positional=[], auto_shortflags=False, help=_help("env", "hosts", "inventory_dir"))
def unlock(c: Context, env: str | None = None, hosts: str | None = None, inventory_dir: str = "inventory") -> None:
    """Remove a deploy lock left behind by a killed run (shows who held it and for how long)."""
    inventory = _load(env, inventory_dir, secrets=False)
    human, errors = _consoles(False)
    try:
        before = api.unlock(inventory, api.Options(hosts=_split(hosts)))
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    for host, info in before.items():
        human.print(
            f"  {host:<12} " + (f"removed lock held by {info.describe()}" if info else "was not locked"),
            highlight=False,
        )
