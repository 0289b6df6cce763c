"""Invoke tasks for operating a fleet: status, releases, logs, start/stop/restart, console, observer, check.

Registered into :data:`deployer.cli.release_tasks.ns` (``status`` replaces the probe-only version there). Like the
deploy tasks they are thin: parse flags, load the inventory, call :mod:`deployer.operations.node`, print.

The shared CLI helpers of :mod:`deployer.cli.release_tasks` are imported when a task runs, not at import time,
because ``deployer.cli.release_tasks`` imports this module to register the tasks.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from deployer.cli.render import ConsoleEvents, print_json, print_report
from deployer.errors import DeployerError
from deployer.operations import node as ops
from deployer.operations import release as api

if TYPE_CHECKING:
    from rich.console import Console

    from deployer.core.inventory import Inventory

HELP = {
    "env": "Environment: reads inventory/<env>.yml (required).",
    "hosts": "Only these hosts (comma-separated names).",
    "roles": "Only hosts with one of these roles (comma-separated).",
    "host": "The one host to work on (its name in the inventory).",
    "inventory_dir": "Directory holding the inventory files (default: inventory).",
    "json_": "Print a machine-readable JSON document on stdout (progress goes to stderr).",
    "verbose": "Show the exact remote scripts (secrets masked) and their output.",
    "dry_run": "Print the plan (batches, per-host script) and change nothing.",
    "strategy": "parallel or rolling (overrides the inventory).",
    "batch_size": "Hosts per batch when rolling: a count or a percentage like 25%.",
    "canary": "One host first; nothing else proceeds until it is healthy.",
    "max_fail": "Failed hosts tolerated before no further batch starts (count or %).",
    "pause": "Seconds to wait between batches.",
}


def _help(*names: str, **extra: str) -> dict[str, str]:
    return {**{name: HELP[name] for name in names}, **extra}


def _load(env: str | None, inventory_dir: str, *, secrets: bool = False) -> Inventory:
    from deployer.cli import release_tasks as base

    # Operating a fleet never needs the deploy secrets: the nodes' env files are already on the hosts.
    # `check` asks for them anyway, to report a missing one before a deploy finds it.
    return base._load(env, inventory_dir, secrets=secrets)


def _consoles(json_: bool) -> tuple[Console, Console]:
    from deployer.cli import release_tasks as base

    return base._consoles(json_)


def _fail(console: Console, exc: DeployerError) -> Exit:
    from deployer.cli import release_tasks as base

    return base._fail(console, exc)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM ends a long-running session like Ctrl-C, so tunnels close and temp files are removed."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- status / releases -------------------------------------------------------------------------------------


@task(positional=[], auto_shortflags=False, help=_help("env", "hosts", "roles", "inventory_dir", "json_"))
def status(
    c: Context,
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    json_: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Per host: reachable, release, version, node pid, healthy, releases on disk, lock holder.

    "healthy" is one try of the inventory's health check on each host (no waiting). Flags a mixed fleet.
    Exit status 1 when a host is unreachable or a deployed node is down or unhealthy.
    """
    from deployer.cli.render_ops import print_status

    inventory = _load(env, inventory_dir)
    human, errors = _consoles(json_)
    try:
        rows = ops.status(inventory, api.Options(hosts=_split(hosts), roles=_split(roles)))
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    document = ops.status_document(rows)
    if json_:
        print_json(document)
    else:
        print_status(human, rows)
    if not document["healthy"]:
        raise Exit(code=1)


@task(positional=[], auto_shortflags=False, help=_help("env", "hosts", "roles", "inventory_dir", "json_"))
def releases(
    c: Context,
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    json_: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """The releases on each host: id, version, good/failed/unknown, which one is current.

    The status comes from the host's revisions.log: failed releases are never rollback targets.
    Exit status 1 when a host is unreachable.
    """
    from deployer.cli.render_ops import print_releases

    inventory = _load(env, inventory_dir)
    human, errors = _consoles(json_)
    try:
        rows = api.status(inventory, api.Options(hosts=_split(hosts), roles=_split(roles)))
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    if json_:
        print_json(ops.releases_document(rows))
    else:
        print_releases(human, rows)
    if not all(r.reachable for r in rows):
        raise Exit(code=1)


# --- logs --------------------------------------------------------------------------------------------------


@task(
    positional=[],
    auto_shortflags=False,
    help=_help(
        "env",
        "host",
        "inventory_dir",
        follow="Keep streaming new lines until Ctrl-C (tail -F over SSH).",
        lines="How many of the last lines to show first (default 100).",
    ),
)
def logs(
    c: Context,
    env: str | None = None,
    host: str | None = None,
    follow: bool = False,
    lines: int = 100,
    inventory_dir: str = "inventory",
) -> None:
    """The node's logs on one host; --follow streams new lines until Ctrl-C.

    Reads run_erl's shared/tmp/log/erlang.log.N (oldest file first); --follow runs tail -F over SSH.
    """
    inventory = _load(env, inventory_dir)
    _, errors = _consoles(False)

    def write(stream: str, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        with _terminate_like_ctrl_c():
            ops.logs(inventory, host, lines=lines, follow=follow, on_output=write)
    except DeployerError as exc:
        raise _fail(errors, exc) from None


# --- start / stop / restart ----------------------------------------------------------------------------------


def _lifecycle(
    operation: ops.Lifecycle,
    *,
    env: str | None,
    hosts: str | None,
    roles: str | None,
    dry_run: bool,
    json_: bool,
    verbose: bool,
    strategy: str | None,
    batch_size: str | None,
    canary: bool,
    max_fail: str | None,
    pause: str | None,
    inventory_dir: str,
) -> None:
    from deployer.cli import release_tasks as base
    from deployer.cli.render import print_plan

    inventory = _load(env, inventory_dir)
    human, errors = _consoles(json_)
    overrides: dict[str, Any] = base._strategy(strategy, batch_size, canary, max_fail, pause)
    try:
        with base._interruptible(human) as cancel:
            result = ops.lifecycle(
                inventory,
                operation,
                api.Options(
                    hosts=_split(hosts),
                    roles=_split(roles),
                    dry_run=dry_run,
                    strategy=overrides,
                    events=ConsoleEvents(human, verbose=verbose),
                    cancel=cancel,
                ),
            )
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    if dry_run and result.plan is not None:
        print_plan(human, result.plan, full_scripts=verbose)
    if json_:
        print_json(result.report.to_json())
    if not dry_run or result.report.error:
        print_report(human, result.report)
    if not result.report.ok and not (dry_run and not result.report.error):
        raise Exit(code=1)


_LIFECYCLE_HELP = _help(
    "env",
    "hosts",
    "roles",
    "inventory_dir",
    "json_",
    "verbose",
    "dry_run",
    "strategy",
    "batch_size",
    "canary",
    "max_fail",
    "pause",
)


@task(positional=[], auto_shortflags=False, help=_LIFECYCLE_HELP)
def start(
    c: Context,
    env: str | None = None,
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
    inventory_dir: str = "inventory",
) -> None:
    """Start the nodes that are not running, then the health gate; rolling, under the deploy lock.

    Starts the current release with `bin/<app> daemon` and its environment file. Batches follow the
    strategy like deploy. Exit status 1 unless every node ends healthy.
    """
    _lifecycle(
        "start",
        env=env,
        hosts=hosts,
        roles=roles,
        dry_run=dry_run,
        json_=json_,
        verbose=verbose,
        strategy=strategy,
        batch_size=batch_size,
        canary=canary,
        max_fail=max_fail,
        pause=pause,
        inventory_dir=inventory_dir,
    )


@task(positional=[], auto_shortflags=False, help=_LIFECYCLE_HELP)
def stop(
    c: Context,
    env: str | None = None,
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
    inventory_dir: str = "inventory",
) -> None:
    """Stop the nodes: SIGTERM to each VM, wait until it has exited; rolling, under the deploy lock.

    A VM still alive after node.stop_timeout gets SIGKILL. Exit status 1 when a node could not be stopped.
    """
    _lifecycle(
        "stop",
        env=env,
        hosts=hosts,
        roles=roles,
        dry_run=dry_run,
        json_=json_,
        verbose=verbose,
        strategy=strategy,
        batch_size=batch_size,
        canary=canary,
        max_fail=max_fail,
        pause=pause,
        inventory_dir=inventory_dir,
    )


@task(positional=[], auto_shortflags=False, help=_LIFECYCLE_HELP)
def restart(
    c: Context,
    env: str | None = None,
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
    inventory_dir: str = "inventory",
) -> None:
    """Restart the nodes (stop, wait for exit, start, health gate); rolling, under the deploy lock.

    Batches follow the strategy like deploy: a batch with more failed hosts than max_fail stops the
    rollout. Exit status 1 unless every node ends healthy.
    """
    _lifecycle(
        "restart",
        env=env,
        hosts=hosts,
        roles=roles,
        dry_run=dry_run,
        json_=json_,
        verbose=verbose,
        strategy=strategy,
        batch_size=batch_size,
        canary=canary,
        max_fail=max_fail,
        pause=pause,
        inventory_dir=inventory_dir,
    )


# --- console / observer -----------------------------------------------------------------------------------


@task(positional=[], auto_shortflags=False, help=_help("env", "host", "inventory_dir"))
def console(c: Context, env: str | None = None, host: str | None = None, inventory_dir: str = "inventory") -> None:
    """An interactive remote shell into the running node on one host (mix: bin/<app> remote).

    The release's environment and cookie are loaded on the host (never in argv). Ctrl-D leaves the
    shell; the node keeps running (do not call System.halt/0 or q(): they stop the node).
    """
    inventory = _load(env, inventory_dir)
    _, errors = _consoles(False)
    try:
        status = ops.console(inventory, host)
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    sys.stdout.write("\r\n")
    if status not in (None, 0):
        raise Exit(code=status)


@task(
    positional=[],
    auto_shortflags=False,
    help=_help(
        "env",
        "host",
        "inventory_dir",
        print_="Do not start observer: print the local command to run, keep the tunnel open until Ctrl-C.",
        epmd_port="Local port for the host's EPMD (default 4369, or any free port when 4369 is taken).",
    ),
)
def observer(
    c: Context,
    env: str | None = None,
    host: str | None = None,
    print_: bool = False,
    epmd_port: int = 0,
    inventory_dir: str = "inventory",
) -> None:
    """Run observer here on one host's node, through an SSH tunnel to its EPMD and distribution port.

    Forwards the host's EPMD and the node's distribution port to 127.0.0.1 and starts a hidden local
    node running observer with the environment's cookie (read over SSH into a 0600 temp file, never
    printed). The tunnel closes when observer exits (or on Ctrl-C with --print).
    """
    inventory = _load(env, inventory_dir)
    # Messages go to stderr: with --print, stdout is only the command to run.
    human, errors = _consoles(True)
    try:
        with (
            _terminate_like_ctrl_c(),
            ops.observer_tunnel(inventory, host, local_epmd_port=epmd_port or None) as tunnel,
        ):
            human.print(
                f"[bold blue]==>[/] tunnel to {tunnel.host}: EPMD on 127.0.0.1:{tunnel.epmd_port}, "
                f"{tunnel.node} on 127.0.0.1:{tunnel.dist_port}",
                highlight=False,
            )
            if tunnel.env() and not epmd_port:
                human.print(
                    f"    port 4369 is taken here (a local epmd?), so EPMD is on {tunnel.epmd_port}: "
                    f"the local node needs ERL_EPMD_PORT={tunnel.epmd_port}",
                    highlight=False,
                )
            if print_:
                sys.stdout.write(tunnel.shell_command() + "\n")
                sys.stdout.flush()
                human.print(
                    "    run the command above in another terminal (the cookie is read from the file it names); "
                    "Ctrl-C here closes the tunnel",
                    highlight=False,
                )
                ops.wait_forever()
            else:
                human.print(f"    starting observer as {tunnel.local_name}; close its window to end", highlight=False)
                code = ops.run_local_node(tunnel)
                if code not in (0, 130):
                    raise Exit(f"the local node exited with status {code}", code=1)
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    human.print("tunnel closed", highlight=False)


# --- check ----------------------------------------------------------------------------------------------------


@task(
    positional=[],
    auto_shortflags=False,
    help=_help(
        "env",
        "hosts",
        "roles",
        "inventory_dir",
        "json_",
        tarball="Also check against this release tarball (disk space; ERTS arch/libc only if it bundles ERTS).",
    ),
)
def check(
    c: Context,
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    tarball: str | None = None,
    json_: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Preflight an environment without changing anything; exit status 1 on any problem.

    Checks SSH reachability and host keys, deploy_to writable, tar and sha256sum (and curl or wget for an
    http health check), and that no deploy lock is held; with --tarball also free disk and the deploy's
    compatibility preflight (the release's ERTS/NIFs and where it was built against each host).
    """
    from pathlib import Path

    from deployer.cli.render_ops import print_check
    from deployer.core.artifact import inspect_tarball

    inventory = _load(env, inventory_dir, secrets=True)
    human, errors = _consoles(json_)
    try:
        artifact = inspect_tarball(Path(tarball), inventory.config.app.name) if tarball else None
        rows = ops.check(inventory, api.Options(hosts=_split(hosts), roles=_split(roles)), artifact=artifact)
    except DeployerError as exc:
        raise _fail(errors, exc) from None
    if json_:
        print_json(ops.check_document(rows, tarball=artifact is not None))
    else:
        print_check(human, rows, ops.check_document(rows, tarball=artifact is not None)["note"])
    if not all(r.ok for r in rows):
        raise Exit(code=1)


TASKS = (status, releases, logs, start, stop, restart, console, observer, check)
