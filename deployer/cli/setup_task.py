"""The ``setup`` task: prepare fresh hosts once, logging in as an administrator (root)."""

from __future__ import annotations

from invoke.context import Context
from rich.markup import escape

from deployer.cli.common import usage_error
from deployer.cli.render import print_plan
from deployer.cli.run import Common, rollout_task
from deployer.core.config import USER_RE
from deployer.engine.run import Options
from deployer.operations import setup as api


@rollout_task(
    strategy=False,
    user="The privileged login for setup (default root): creating deploy_to for the deploy user, installing "
    "the unit and writing /etc/sudoers.d need root. Deploys afterwards log in as ssh.user.",
)
def setup(c: Context, run: Common, user: str = "root") -> None:
    """Prepare fresh hosts once, as root: deploy_to and shared/ owned by the deploy user (ssh.user), and with
    node.service: systemd the unit (installed, enabled), the deploy user in the journal's group, and a
    sudoers drop-in allowing exactly that unit's commands (checked with visudo -cf before it is moved into
    /etc/sudoers.d).

    Idempotent: each host reports what it changed, or `unchanged`. --dry-run shows the script per host
    (with --verbose). The deploy user must already exist with your SSH key.
    """
    if not USER_RE.fullmatch(user):
        raise usage_error(f"--user {user!r}: not a valid user name")
    inventory = run.load()
    summary: dict[str, list[str]] = {}

    def operation(options: Options) -> api.SetupResult:
        result = api.setup(inventory, user, options)
        summary.update(result.changes)
        return result

    try:
        run.execute(operation, print_plan)
    finally:
        for host, changes in sorted(summary.items()):
            what = "; ".join(changes) if changes else "unchanged (nothing to do)"
            run.human.print(f"  [bold]{escape(host)}[/]: {escape(what)}", highlight=False)


TASKS = (setup,)
