"""The ``exec`` and ``eval`` tasks: a shell command on each host, an expression in each running node.

Thin like the other tasks: parse flags, load the inventory, call :mod:`deployer.operations.commands`,
print each host's output under its name (or one JSON document). Exit status 1 when any host failed;
the failing hosts are named on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.markup import escape

from deployer.cli.ops_tasks import _consoles, _fail, _help, _split
from deployer.cli.render import print_json
from deployer.engine.run import Options
from deployer.errors import DeployerError
from deployer.operations import commands

if TYPE_CHECKING:
    from deployer.core.inventory import Inventory


def _load(env: str | None, inventory_dir: str) -> Inventory:
    from deployer.cli import release_tasks as base

    # The secrets are loaded when they can be, only to mask them in what the hosts print.
    try:
        return base._load(env, inventory_dir, secrets=True)
    except Exit:
        return base._load(env, inventory_dir, secrets=False)


def _print(rows: Sequence[commands.CommandRow], json_: bool, what: str) -> None:
    human, errors = _consoles(json_)
    if json_:
        print_json(commands.documents(rows))
    else:
        for row in rows:
            status = "?" if row.exit_status is None else str(row.exit_status)
            colour = "green" if row.ok else "red"
            human.print(f"[bold {colour}]== {escape(row.host)}[/] (exit {status})", highlight=False)
            if row.stdout:
                human.print(escape(row.stdout.rstrip("\n")), highlight=False, markup=True)
            if row.stderr:
                human.print(f"[dim]{escape(row.stderr.rstrip())}[/]", highlight=False)
    failed = [r for r in rows if not r.ok]
    if failed:
        for row in failed:
            errors.print(f"[bold red]error:[/] {escape(row.host)}: {escape(row.error or 'failed')}", highlight=False)
        raise Exit(code=1)


@task(
    positional=["command"],
    auto_shortflags=False,
    help=_help("env", "hosts", "roles", "inventory_dir", "json_", command="The shell command (sh), run in `current`."),
    name="exec",
)
def exec_(
    c: Context,
    command: str = "",
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    json_: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Run a shell command on the selected hosts, in `current`, as the deploy user; output per host.

    Example: `deployer exec --env prod --command 'df -h .'`. Exit status 1 when any host failed.
    """
    inventory = _load(env, inventory_dir)
    _, errors = _consoles(json_)
    try:
        rows = commands.exec_command(inventory, command, Options(hosts=_split(hosts), roles=_split(roles)))
    except (DeployerError, ValueError) as exc:
        raise _fail(errors, exc if isinstance(exc, DeployerError) else DeployerError(str(exc))) from None
    _print(rows, json_, "command")


@task(
    positional=["expression"],
    auto_shortflags=False,
    help=_help("env", "hosts", "roles", "inventory_dir", "json_", expression="The Elixir/Erlang expression."),
    name="eval",
)
def eval_(
    c: Context,
    expression: str = "",
    env: str | None = None,
    hosts: str | None = None,
    roles: str | None = None,
    json_: bool = False,
    inventory_dir: str = "inventory",
) -> None:
    """Evaluate an expression inside the running node of each selected host (`bin/<app> rpc`).

    Example: `deployer eval --env prod --expression 'Node.self()'`. Exit status 1 when any host failed.
    """
    inventory = _load(env, inventory_dir)
    _, errors = _consoles(json_)
    try:
        rows = commands.eval_expression(inventory, expression, Options(hosts=_split(hosts), roles=_split(roles)))
    except (DeployerError, ValueError) as exc:
        raise _fail(errors, exc if isinstance(exc, DeployerError) else DeployerError(str(exc))) from None
    _print(rows, json_, "expression")


TASKS = (exec_, eval_)
