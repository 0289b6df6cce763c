"""The public API behind the tasks: deploy, migrate, rollback, status, unlock.

Each operation that touches hosts runs inventory -> facts -> plan -> executor -> report through
:func:`deployer.engine.run.run_operation` and returns a :class:`Result`; operational failures (an
unreachable host, a failed migration, an unhealthy node) are in the report, never half-handled.
Invalid input (inventory, artifact, filters) raises a :class:`DeployerError` before any host is touched.
"""

from __future__ import annotations

import secrets
import tarfile
from collections.abc import Mapping

from pydantic import SecretStr

from deployer.core import compat
from deployer.core.artifact import Artifact, is_migration_file
from deployer.core.facts import HostFacts, LockInfo
from deployer.core.inventory import Inventory
from deployer.core.outcome import HostResult
from deployer.core.plan import Plan, generate_cookie, plan_deploy, plan_migrate, plan_rollback, running_probe
from deployer.engine.executor import Executor
from deployer.engine.locks import current_user
from deployer.engine.run import Options, Result, open_executor, run_operation
from deployer.errors import PlanError
from deployer.operations.hooks import run_with_hooks
from deployer.operations.status import HostStatus
from deployer.operations.status import status as probe_status


def check_disk(artifact: Artifact, facts: Mapping[str, HostFacts]) -> None:
    """Refuse before uploading when a host cannot hold the tarball plus the extracted release."""
    short: list[str] = []
    for host, fact in facts.items():
        need = disk_needed(artifact, fact)
        if need is not None:
            short.append(f"{host}: {need}")
    if short:
        raise PlanError(
            "not enough disk space:\n  " + "\n  ".join(short),
            hint="free space under deploy_to (old releases, logs) and deploy again",
        )


def disk_needed(artifact: Artifact, fact: HostFacts) -> str | None:
    """Why ``fact``'s host cannot hold the release (tarball unless already there, plus extracted), or None."""
    if fact.disk_free_kb is None:
        return None
    need = artifact.unpacked_size + (artifact.size if artifact.sha256 not in fact.artifacts else 0)
    if fact.disk_free_kb * 1024 >= need * 1.1:
        return None
    return f"{fact.disk_free_kb // 1024} MiB free under deploy_to, the release needs about {need * 1.1 / 2**20:.0f} MiB"


def release_migrations(artifact: Artifact) -> tuple[str, ...]:
    """The migration files a release ships (``lib/<app>-<vsn>/priv/<repo>/migrations/*``), by file name:
    as :func:`~deployer.core.artifact.inspect_tarball` found them, or read from the tarball now."""
    if artifact.migrations is not None:
        return artifact.migrations
    names: set[str] = set()
    try:
        with tarfile.open(artifact.path, "r:*") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and is_migration_file(name):
                    names.add(name.rsplit("/", 1)[-1])
    except (OSError, tarfile.TarError):
        return ()
    return tuple(sorted(names))


def deploy_plan(
    executor: Executor,
    inventory: Inventory,
    artifact: Artifact,
    facts: dict[str, HostFacts],
    options: Options,
    *,
    env_nonce: str | None = None,
) -> Plan:
    """The plan of a restart deploy of ``artifact`` (disk and compatibility preflight, the environment's
    cookie, migrations); the hot upgrade (:mod:`deployer.operations.upgrade`) starts from it too.

    With ``env_nonce`` (the nonce of the env file digests the probe printed), hosts that already run
    this release, healthy, with the same env file are left ``unchanged`` unless ``options.restart``."""
    check_disk(artifact, facts)
    forced = compat.preflight(
        artifact.path, artifact.sha256, facts, force=options.force, requirements=artifact.requirements
    )
    cookie: SecretStr | None = None
    if options.dry_run:
        cookie = SecretStr("(generated on first deploy)")
    elif not all(f.has_cookie for f in facts.values()):
        # One cookie per environment: read it from any host of the environment, selected or not.
        existing = executor.read_cookie(facts)
        cookie = SecretStr(existing) if existing else generate_cookie()
        executor.masker.add(cookie.get_secret_value())
    plan = plan_deploy(
        inventory,
        artifact,
        facts,
        who=current_user(),
        cookie=cookie,
        strategy=options.strategy,
        migrations=release_migrations(artifact) if inventory.config.migrate is not None else None,
        env_nonce=env_nonce,
        restart=options.restart,
    )
    return plan.with_warnings(forced)


def deploy(inventory: Inventory, artifact: Artifact, options: Options | None = None) -> Result:
    """Ship ``artifact`` to the selected hosts: prepare all, migrate once, switch in batches."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        return deploy_plan(executor, inventory, artifact, facts, options, env_nonce=nonce)

    # One random nonce per run for the env file digests the probe prints (see rc.running_state).
    nonce = secrets.token_hex(16)
    hosts = {h.name: h for h in inventory.hosts}
    return run_with_hooks(
        inventory,
        options,
        "deploy",
        names,
        plan_for,
        release=artifact.version,
        version=artifact.version,
        probe=None if options.restart else (lambda host: running_probe(inventory, hosts[host], nonce)),
    )


def rollback(inventory: Inventory, to: str | None = None, options: Options | None = None) -> Result:
    """Switch the selected hosts back to their previous good release (or ``to``)."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        plan = plan_rollback(inventory, facts, who=current_user(), to=to, strategy=options.strategy)
        from deployer.operations.upgrade import hot_rollback  # upgrade builds on this module's deploy_plan

        # A node upgraded in place goes back in place too, when its relup has down instructions.
        return hot_rollback(executor, inventory, plan, facts)

    return run_with_hooks(inventory, options, "rollback", names, plan_for, release=to)


def migrate(inventory: Inventory, options: Options | None = None) -> Result:
    """Run the current release's migration once, on the migrator host, under the lock of every host."""
    options = options or Options()

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        return plan_migrate(inventory, facts, who=current_user())

    return run_operation(inventory, options, "migrate", [h.name for h in inventory.hosts], plan_for)


def status(inventory: Inventory, options: Options | None = None) -> list[HostStatus]:
    """The selected hosts' facts without the health check (``releases``, ``history``); changes nothing.
    The same operation as :func:`deployer.operations.node.status`."""
    return probe_status(inventory, options, health=False)


def lock(inventory: Inventory, message: str, options: Options | None = None) -> dict[str, HostFacts]:
    """Lock every selected host by hand with ``message`` (all or none) until :func:`unlock`.

    Deploys, rollbacks, migrations and restarts are then refused with the message, who took the lock
    and when. Raises :class:`~deployer.errors.LockedError` (nothing locked) when a host is already locked.
    """
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    with open_executor(inventory, options, "lock") as executor:
        return executor.hold_lock(names, message)


def unlock(inventory: Inventory, options: Options | None = None, *, force: bool = False) -> dict[str, LockInfo | None]:
    """Remove the deploy lock from the selected hosts; returns what each lock said (holder, age).

    Refuses (nothing removed) while a holder may still be working: its process is alive on this
    machine, or it runs elsewhere and its lock is younger than ``ssh.command_timeout``; ``force``
    removes it anyway.
    """
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    with open_executor(inventory, options, "unlock") as executor:
        return executor.force_unlock(names, force=force)


__all__ = ["HostResult", "HostStatus", "Options", "Result", "deploy", "lock", "migrate", "rollback", "status", "unlock"]
