"""``deployer env push`` (the task ``env-push``): push the environment's values to its hosts."""

from __future__ import annotations

from invoke.context import Context

from deployer.cli.render import print_plan
from deployer.cli.run import Common, rollout_task
from deployer.operations import env as env_api


@rollout_task(
    restart="Restart each node whose environment changed, through the health gate (default; --no-restart "
    "only writes the file: the nodes take the values at their next start)."
)
def env_push(c: Context, run: Common, restart: bool = True) -> None:
    """Write env.clear, env.secret and the hosts' own values to every host's environment file; restart.

    Also `deployer env push`. The file (shared/node.env, 0600) belongs to the environment, not to a
    release: restart and rollback read it as it is, so edited values reach the nodes only through this
    task or the next deploy. Nodes are restarted batch by batch like deploy; a node unhealthy with the
    new values is put back on the previous file. A host whose file is already up to date is not
    restarted. Exit status 1 unless every host ends with the new file (and healthy, when restarted).
    """
    # The secrets are resolved before any host is touched (a missing one is reported with its key).
    inventory = run.load(secrets=True)
    run.execute(lambda options: env_api.push(inventory, options, restart=restart), print_plan)


TASKS = (env_push,)
