"""``exec`` and ``eval``: a shell command on each selected host, an expression inside each running node.

Both take no lock and change nothing deployer manages (what the command itself does is the
operator's business). Each host answers on its own: its output and exit status are in its row, a host
that could not be reached or has nothing deployed says so, and one host's failure never hides the
others'. Output is masked like every other output (the inventory's secrets and the cookie).

* :func:`exec_command` runs ``command`` with ``sh`` in ``current`` as the deploy user (the SSH user);
* :func:`eval_expression` runs ``bin/<app> rpc <expression>`` (the flavour's verb) with the release's
  environment loaded from the host's env file, so the node's cookie never travels. Elixir releases
  print nothing of an rpc's result, so there the expression's value is printed with ``IO.inspect``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deployer.core.inventory import Inventory
from deployer.core.plan import layout_for
from deployer.engine.executor import clean_stderr
from deployer.engine.run import Options, open_executor
from deployer.errors import DeployerError
from deployer.remote.flavours import flavour
from deployer.remote.ops import NOT_DEPLOYED, NOT_RUNNING
from deployer.remote.ops import eval_expression as eval_script
from deployer.remote.ops import exec_command as exec_script
from deployer.remote.shell import Script


@dataclass
class CommandRow:
    """One host's answer: ``exit_status`` None when the command never ran (unreachable, lost link)."""

    host: str
    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _why(row: CommandRow, what: str) -> str | None:
    if row.exit_status == NOT_DEPLOYED and "nothing is deployed" in row.stderr:
        return clean_stderr(row.stderr, 3)
    if row.exit_status == NOT_RUNNING and "not running" in row.stderr:
        return clean_stderr(row.stderr, 3)
    if row.exit_status not in (0, None):
        return f"{what} exited with status {row.exit_status}"
    return None


def _run(inventory: Inventory, options: Options, operation: str, script: Script, what: str) -> list[CommandRow]:
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    rows: dict[str, CommandRow] = {}
    with open_executor(inventory, options, operation) as executor:

        def one(host: str) -> None:
            try:
                result = executor.run(host, script, check=False)
            except DeployerError as exc:
                rows[host] = CommandRow(host, None, error=executor.describe(exc))
                return
            status = result.exit_status
            row = CommandRow(
                host,
                status if status >= 0 else None,
                executor.masker(result.stdout),
                executor.masker(clean_stderr(result.stderr, 200)),
            )
            row.error = "the SSH connection was lost before the command finished" if status < 0 else _why(row, what)
            rows[host] = row

        errors = executor.parallel(names, one)
        for host, exc in errors.items():
            rows[host] = CommandRow(host, None, error=executor.describe(exc))
    return [rows[n] for n in names]


def exec_command(
    inventory: Inventory, command: str, options: Options | None = None, *, timeout: float = 600.0
) -> list[CommandRow]:
    """Run ``command`` on every selected host, in ``current``, as the deploy user; one row per host."""
    return _run(
        inventory,
        options or Options(),
        "exec",
        exec_script(layout_for(inventory), command, timeout=timeout),
        "the command",
    )


def eval_expression(
    inventory: Inventory, expression: str, options: Options | None = None, *, timeout: float = 120.0
) -> list[CommandRow]:
    """Evaluate ``expression`` inside the running node of every selected host; one row per host."""
    spec = flavour(inventory.config.app.flavour)
    script = eval_script(layout_for(inventory), spec, expression, timeout=timeout)
    return _run(inventory, options or Options(), "eval", script, "the expression")


def documents(rows: Sequence[CommandRow]) -> dict[str, Any]:
    """The ``--json`` document: ``ok`` only when every host answered with status 0."""
    return {"ok": all(r.ok for r in rows), "hosts": [r.to_json() for r in rows]}
