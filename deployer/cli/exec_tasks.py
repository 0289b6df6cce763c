"""The ``exec`` and ``eval`` tasks: a shell command on each host, an expression in each running node.

Thin like the other tasks: parse flags, load the inventory, call :mod:`deployer.operations.commands`,
print each host's output under its name (or one JSON document). Exit status 1 when any host failed;
the failing hosts are named on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence

from invoke.context import Context
from invoke.exceptions import Exit
from rich.markup import escape

from deployer.cli.common import usage_error, write_stdout
from deployer.cli.render import print_json
from deployer.cli.run import Target, fleet_task
from deployer.operations import commands


def _print(target: Target, rows: Sequence[commands.CommandRow]) -> None:
    """Each host's output on stdout (like ``logs``), under its name; failures named on stderr."""
    if target.json_:
        print_json(commands.documents(rows))
    else:
        for row in rows:
            status = "?" if row.exit_status is None else str(row.exit_status)
            write_stdout(f"== {row.host} (exit {status})\n")
            if row.stdout:
                write_stdout(row.stdout if row.stdout.endswith("\n") else row.stdout + "\n")
            if row.stderr:
                write_stdout(row.stderr if row.stderr.endswith("\n") else row.stderr + "\n")
    failed = [r for r in rows if not r.ok]
    for row in failed:
        target.errors.print(f"[bold red]error:[/] {escape(row.host)}: {escape(row.error or 'failed')}", highlight=False)
    if failed:
        raise Exit(code=1)


@fleet_task(
    json_=True, name="exec", secrets="mask", command="The shell command (sh), run in `current` as the deploy user."
)
def exec_(c: Context, target: Target, command: str = "") -> None:
    """Run a shell command on the selected hosts, in `current`, as the deploy user; output per host.

    Example: `deployer exec --env prod --command 'df -h .'`. Exit status 1 when any host failed.
    """
    if not command.strip():
        raise usage_error("--command is required (the shell command to run on each host)")
    rows = commands.exec_command(target.inventory, command, target.options())
    _print(target, rows)


@fleet_task(
    json_=True, name="eval", secrets="mask", expression="The Elixir/Erlang expression, evaluated in each running node."
)
def eval_(c: Context, target: Target, expression: str = "") -> None:
    """Evaluate an expression inside the running node of each selected host (`bin/<app> rpc`).

    Example: `deployer eval --env prod --expression 'Node.self()'`. Exit status 1 when any host failed.
    """
    if not expression.strip():
        raise usage_error("--expression is required (the expression to evaluate in each node)")
    rows = commands.eval_expression(target.inventory, expression, target.options())
    _print(target, rows)


TASKS = (exec_, eval_)
