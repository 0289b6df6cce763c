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
from dataclasses import replace

from deployer.core.config import HostConfig
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.plan import HostStep, Plan, health_check, layout_for, node_env_file, plan_lifecycle, service_for
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
    selected = [h for h in inventory.hosts if h.name in facts]
    if restart:
        missing = [h.name for h in selected if facts[h.name].current_release is None]
        if missing:
            raise PlanError(
                f"cannot restart with the new environment: nothing is deployed on {', '.join(missing)}",
                hint="deploy first (a deploy writes the environment too), or push with --no-restart",
            )
    # The node operations' plan gives the hosts, batches and limits (the release does not change); each host's
    # step becomes its push. Built from `stop`, which refuses no host: the restart check is made above.
    base = plan_lifecycle(inventory, "stop", facts, strategy=strategy)
    by_name = {h.name: h for h in selected}
    hosts = tuple(replace(h, steps=_steps(inventory, by_name[h.host], restart)) for h in base.hosts)
    return replace(base, kind=ENV_PUSH, hosts=hosts, health_gated=restart)


def _steps(inventory: Inventory, host: HostConfig, restart: bool) -> tuple[HostStep, ...]:
    """``host``'s push (its own file, its own health URL) and, when it restarts, the way back."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    health = health_check(inventory, host)
    push = envfile.push_env(
        layout,
        spec,
        node_env_file(inventory, host),
        health=health,
        stop_timeout=config.node.stop_timeout,
        restart=restart,
        service=service_for(inventory),
    )
    if not restart:
        return (HostStep("activate", push, unchanged_notice),)
    revert = envfile.revert_push(
        layout, spec, health=health, stop_timeout=config.node.stop_timeout, service=service_for(inventory)
    )
    return HostStep("activate", push, unchanged_notice), HostStep("revert", revert)
