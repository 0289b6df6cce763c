"""``deployer lock``: lock an environment by hand, with a reason, until ``deployer unlock``.

The lock is the deploy lock every operation takes (:mod:`deployer.engine.locks`), taken on every host of the
environment or on none; its info carries the message, who took it and when, so whoever is refused (deploy,
rollback, migrate, restart, ...) reads why. ``deployer unlock --env E`` lifts it.
"""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from deployer.cli.common import consoles, fail, flag_help, load, usage_error
from deployer.cli.run import refuse_invoke_dry
from deployer.errors import DeployerError
from deployer.operations import release as api


@task(
    positional=[],
    auto_shortflags=False,
    help=flag_help("env", "inventory_dir", message="Why the environment is locked (shown to whoever is refused)."),
)
def lock(c: Context, env: str | None = None, message: str = "", inventory_dir: str = "inventory") -> None:
    """Lock every host of the environment by hand: deploys, rollbacks and restarts are refused until unlock.

    Whoever is refused sees the message, who took the lock and how long ago. Example:
    `deployer lock --env prod --message "database maintenance until 14:00"`; `deployer unlock --env prod` lifts it.
    All hosts or none: when any host is already locked, nothing is locked and the holder is shown.
    """
    refuse_invoke_dry(c)
    if not message.strip():
        raise usage_error('--message is required: say why, e.g. --message "database maintenance until 14:00"')
    inventory = load(env, inventory_dir)
    human, errors = consoles()
    try:
        facts = api.lock(inventory, message.strip())
    except DeployerError as exc:
        raise fail(errors, exc, env) from None
    for name in facts:
        human.print(f"  {name:<12} locked", highlight=False)
    env_name = inventory.env
    human.print(
        f"{env_name} is locked ({len(facts)} host(s)): {message.strip()!r}; "
        f"`deployer unlock --env {env_name}` lifts it",
        highlight=False,
    )
