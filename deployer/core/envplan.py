"""The plan of ``deployer env push``: the environment file written on each host, nodes restarted.

The node's environment lives with the environment (``shared/node.env``, see
:mod:`deployer.remote.envfile`), not with a release: editing ``env.clear`` or rotating a secret changes
nothing on the hosts until it is pushed, by this operation or by the next deploy. A push writes the file
(atomically, 0600) and, with ``restart`` (the default), restarts each host's node batch by batch through
the health gate, so the values in the file are the values the nodes run with. A host whose file was
already up to date is not restarted. A node that fails the health gate with the new values is put back
on the previous file and restarted again.
"""

from __future__ import annotations

from collections.abc import Mapping

from deployer.core.config import parse_count
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.plan import HostPlan, HostStep, Plan, batches, health_check, layout_for, node_env_file
from deployer.errors import PlanError
from deployer.remote import envfile
from deployer.remote.flavours import flavour

ENV_PUSH = "env push"
"""The operation's name (reports, hooks' ``DEPLOYER_OPERATION``, the lock's info)."""


def unchanged_notice(output: str) -> str | None:
    """The operator's line for a host whose file already had these values."""
    if "env=unchanged" in output.splitlines():
        return "the environment file was already up to date; the node was not restarted"
    return None


def plan_env_push(
    inventory: Inventory,
    facts: Mapping[str, HostFacts],
    *,
    restart: bool = True,
    strategy: Mapping[str, object] | None = None,
) -> Plan:
    """Plan writing each selected host's environment file and, with ``restart``, restarting its node."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    selected = [h for h in inventory.hosts if h.name in facts]
    if restart:
        missing = [h.name for h in selected if facts[h.name].current_release is None]
        if missing:
            raise PlanError(
                f"cannot restart with the new environment: nothing is deployed on {', '.join(missing)}",
                hint="deploy first (a deploy writes the environment too), or push with --no-restart",
            )
    plans = []
    for host in selected:
        fact = facts[host.name]
        health = health_check(inventory, host)
        push = envfile.push_env(
            layout,
            spec,
            node_env_file(inventory, host),
            health=health,
            stop_timeout=config.node.stop_timeout,
            restart=restart,
        )
        steps = [HostStep("activate", push, unchanged_notice)]
        if restart:
            revert = envfile.revert_push(layout, spec, health=health, stop_timeout=config.node.stop_timeout)
            steps.append(HostStep("revert", revert))
        plans.append(
            HostPlan(
                host=host.name,
                before=fact.current_release,
                target=fact.current_release,
                steps=tuple(steps),
                version=fact.current_version,
                node_pids=fact.node_pids,
            )
        )
    names = [h.name for h in selected]
    rollout = config.strategy.model_copy(update=dict(strategy or {}))
    releases = {p.before for p in plans}
    common = plans[0] if len(releases) == 1 and plans else None
    return Plan(
        kind=ENV_PUSH,
        env=inventory.env,
        release_id=common.before if common else None,
        version=common.version if common else None,
        artifact=None,
        hosts=tuple(plans),
        batches=tuple(tuple(b) for b in batches(names, inventory, strategy)),
        max_fail=parse_count(rollout.max_fail, len(names), allow_zero=True),
        pause=float(rollout.pause),
        health_gated=restart,
    )
