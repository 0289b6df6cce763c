"""The public API behind the tasks: deploy, migrate, rollback, status, unlock.

Each function runs inventory -> facts -> plan -> executor -> report and returns a
:class:`~deployer.core.outcome.Report`; operational failures (an unreachable host, a
failed migration, an unhealthy node) are in the report, never half-handled.
Invalid input (inventory, artifact, filters) raises a :class:`DeployerError`
before any host is touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from deployer.core import compat
from deployer.core.artifact import Artifact
from deployer.core.facts import HostFacts, LockInfo, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.outcome import Events, HostResult, NullEvents, Report
from deployer.core.plan import Plan, generate_cookie, plan_deploy, plan_migrate, plan_rollback
from deployer.engine.executor import Executor, Masker, current_user, fill_sessions
from deployer.errors import DeployerError, PlanError
from deployer.remote import release as rc
from deployer.ssh.endpoints import Connector, ssh_connector


@dataclass
class Options:
    """What every operation accepts besides the inventory."""

    hosts: Sequence[str] = ()
    roles: Sequence[str] = ()
    dry_run: bool = False
    strategy: Mapping[str, object] | None = None
    events: Events | None = None
    connector: Connector | None = None
    cancel: threading.Event | None = None
    force: bool = False
    """Deploy even when the compatibility preflight finds hosts the release cannot run on."""


@dataclass
class Result:
    """A report, plus the plan that produced it (what ``--dry-run`` prints)."""

    report: Report
    plan: Plan | None = None


def _executor(inventory: Inventory, options: Options, operation: str) -> Executor:
    return Executor(
        inventory,
        options.connector or ssh_connector(inventory),
        events=options.events or NullEvents(),
        masker=Masker(inventory.secret_values()),
        cancel=options.cancel,
        operation=operation,
    )


def _failed_report(
    operation: str,
    inventory: Inventory,
    executor: Executor,
    names: Sequence[str],
    error: DeployerError,
    started: float,
    dry_run: bool = False,
) -> Report:
    return Report(
        operation,
        inventory.env,
        None,
        None,
        [executor.result(h) for h in names],
        error=str(error),
        duration=time.monotonic() - started,
        dry_run=dry_run,
    )


def _finish(executor: Executor, report: Report) -> Report:
    executor.release_locks()
    for host, why in executor.lock_left.items():
        report.warnings.append(f"{host}: the lock could not be released ({why}); run `invoke unlock`")
    fill_sessions(report, executor)
    return report


def check_disk(artifact: Artifact, facts: Mapping[str, HostFacts]) -> None:
    """Refuse before uploading when a host cannot hold the tarball plus the extracted release."""
    short: list[str] = []
    for host, fact in facts.items():
        if fact.disk_free_kb is None:
            continue
        need = artifact.unpacked_size + (artifact.size if artifact.sha256 not in fact.artifacts else 0)
        if fact.disk_free_kb * 1024 < need * 1.1:
            short.append(f"{host}: {fact.disk_free_kb // 1024} MiB free, needs about {need * 1.1 / 2**20:.0f} MiB")
    if short:
        raise PlanError(
            "not enough disk space:\n  " + "\n  ".join(short),
            hint="free space under deploy_to (old releases, logs) and deploy again",
        )


def deploy(inventory: Inventory, artifact: Artifact, options: Options | None = None) -> Result:
    """Ship ``artifact`` to the selected hosts: prepare all, migrate once, switch in batches."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    started = time.monotonic()
    with _executor(inventory, options, "deploy") as executor:
        plan: Plan | None = None
        try:
            facts = executor.preflight(names, lock=not options.dry_run, release=artifact.version)
            check_disk(artifact, facts)
            forced = compat.preflight(artifact.path, artifact.sha256, facts, force=options.force)
            for warning in forced:
                executor.events.warning(warning)
            cookie: SecretStr | None = None
            if not options.dry_run and not all(f.has_cookie for f in facts.values()):
                existing = executor.read_cookie(facts)
                cookie = SecretStr(existing) if existing else generate_cookie()
            elif options.dry_run:
                cookie = SecretStr("(generated on first deploy)")
            if cookie is not None:
                executor.masker.add(cookie.get_secret_value())
            plan = plan_deploy(inventory, artifact, facts, who=current_user(), cookie=cookie, strategy=options.strategy)
            if options.dry_run:
                report = Report(
                    "deploy",
                    inventory.env,
                    plan.release_id,
                    plan.version,
                    [executor.result(h) for h in names],
                    dry_run=True,
                )
                return Result(report, plan)
            report = executor.execute(plan)
            report.warnings.extend(forced)
        except DeployerError as exc:
            report = _failed_report("deploy", inventory, executor, names, exc, started, options.dry_run)
            report.version = artifact.version
        return Result(_finish(executor, report), plan)


def rollback(inventory: Inventory, to: str | None = None, options: Options | None = None) -> Result:
    """Switch the selected hosts back to their previous good release (or ``to``)."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    started = time.monotonic()
    with _executor(inventory, options, "rollback") as executor:
        plan: Plan | None = None
        try:
            facts = executor.preflight(names, lock=not options.dry_run, release=to)
            plan = plan_rollback(inventory, facts, who=current_user(), to=to, strategy=options.strategy)
            if options.dry_run:
                report = Report(
                    "rollback", inventory.env, plan.release_id, None, [executor.result(h) for h in names], dry_run=True
                )
                return Result(report, plan)
            report = executor.execute(plan)
        except DeployerError as exc:
            report = _failed_report("rollback", inventory, executor, names, exc, started, options.dry_run)
        return Result(_finish(executor, report), plan)


def migrate(inventory: Inventory, options: Options | None = None) -> Result:
    """Run the current release's migration once, on the migrator host, under the lock of every host."""
    options = options or Options()
    names = [h.name for h in inventory.hosts]
    started = time.monotonic()
    with _executor(inventory, options, "migrate") as executor:
        plan: Plan | None = None
        try:
            facts = executor.preflight(names, lock=not options.dry_run)
            plan = plan_migrate(inventory, facts, who=current_user())
            if options.dry_run:
                return Result(Report("migrate", inventory.env, plan.release_id, plan.version, [], dry_run=True), plan)
            report = executor.execute_migrate(plan)
        except DeployerError as exc:
            report = _failed_report("migrate", inventory, executor, names, exc, started, options.dry_run)
        return Result(_finish(executor, report), plan)


@dataclass(frozen=True)
class HostStatus:
    """One row of ``invoke status``."""

    host: str
    reachable: bool
    facts: HostFacts | None
    error: str | None = None


def status(inventory: Inventory, options: Options | None = None) -> list[HostStatus]:
    """Probe the selected hosts without changing anything."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    rows: dict[str, HostStatus] = {}
    with _executor(inventory, options, "status") as executor:
        script = rc.probe(executor.layout)

        def probe(host: str) -> None:
            try:
                rows[host] = HostStatus(host, True, parse_probe(executor.run(host, script).stdout))
            except DeployerError as exc:
                rows[host] = HostStatus(host, False, None, str(exc))

        executor.parallel(names, probe)
    return [rows[h] for h in names]


def unlock(inventory: Inventory, options: Options | None = None) -> dict[str, LockInfo | None]:
    """Remove the deploy lock from the selected hosts, whoever holds it."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    with _executor(inventory, options, "unlock") as executor:
        return executor.force_unlock(names)


__all__ = ["HostResult", "HostStatus", "Options", "Result", "deploy", "migrate", "rollback", "status", "unlock"]
