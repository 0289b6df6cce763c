"""``deployer env push``: the environment's values written to its hosts, nodes restarted through the gate.

One run through the engine like every operation: select, probe and lock the hosts, plan
(:func:`deployer.core.envplan.plan_env_push`), execute batch by batch, report. ``--dry-run`` shows the
plan with the secrets masked.
"""

from __future__ import annotations

from deployer.core.envplan import ENV_PUSH, plan_env_push
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.plan import Plan
from deployer.engine.executor import Executor
from deployer.engine.run import Options, Result
from deployer.operations.hooks import run_with_hooks


def push(inventory: Inventory, options: Options | None = None, *, restart: bool = True) -> Result:
    """Write each selected host's ``node.env`` from the inventory (secrets resolved) and, with ``restart``,
    restart the nodes whose file changed, batch by batch, through the health gate (a node unhealthy with
    the new values is put back on the old file). The inventory must have been loaded with its secrets."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        return plan_env_push(inventory, facts, restart=restart, strategy=options.strategy)

    return run_with_hooks(inventory, options, ENV_PUSH, names, plan_for)
