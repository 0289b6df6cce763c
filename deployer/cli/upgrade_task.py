"""The ``upgrade`` task: a hot code upgrade of the running nodes (see docs/hot-upgrades.md).

Thin, like the release tasks: check the flags, load the inventory, build or read the tarball, call
:func:`deployer.operations.upgrade.upgrade`, print, exit non-zero on failure.
"""

from __future__ import annotations

from invoke.context import Context

from deployer.cli.common import fail
from deployer.cli.release_tasks import load_release
from deployer.cli.render import print_plan
from deployer.cli.run import Common, rollout_task
from deployer.errors import DeployerError
from deployer.operations import upgrade as api

FALLBACKS = ("refuse", "restart")


@rollout_task(
    tarball="Upgrade to this prebuilt release tarball (it must carry a relup) instead of building.",
    fallback="What to do with a host that cannot be upgraded in place: refuse (default, nothing changes "
    "anywhere) or restart (a normal restart deploy of that host, named in the report).",
    force="Upgrade even hosts the release cannot run on (architecture, libc or OpenSSL mismatch).",
)
def upgrade(c: Context, run: Common, tarball: str | None = None, fallback: str = "refuse", force: bool = False) -> None:
    """Hot-upgrade the running nodes to a release with a relup: no restart, state kept, same OS pid.

    Per host: the node's running version must be one the relup upgrades from; the release is uploaded,
    verified and extracted as in a deploy, migrations run once, then release_handler unpacks, installs
    and makes it permanent, the node must keep its OS pid and pass the health gate. A host whose install
    fails is restarted on its previous release and the rollout stops.
    """
    if fallback not in FALLBACKS:
        raise fail(
            run.errors, DeployerError(f"--fallback {fallback}: expected one of {', '.join(FALLBACKS)}"), run.env, code=2
        )
    inventory, artifact = load_release(run, tarball)
    mode: api.Fallback = "restart" if fallback == "restart" else "refuse"
    run.execute(lambda options: api.upgrade(inventory, artifact, options, fallback=mode), print_plan, force=force)
