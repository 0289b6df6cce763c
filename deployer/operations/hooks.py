"""Operations with their hooks: the one wrapper deploy, rollback, start, stop and restart run through.

Around :func:`deployer.engine.run.run_operation` (no second orchestration loop):

* per-host hooks and the balancer's drain/undrain become steps of the plan (``--dry-run`` lists them;
  the phase hooks appear in each host's notes);
* ``before_deploy`` runs once the lock is held and the plan is made, before anything changes: its
  failure is the operation's error, every host stays ``untouched`` and the lock is released;
* after the run, the balancer is reconciled (:func:`deployer.operations.balancer.reconcile`): no
  server this run drained stays drained without the report saying so;
* then ``after_deploy`` (the operation succeeded) or ``on_failure`` (it failed or was interrupted);
  their failures are warnings of the report: the hosts are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from deployer.core.facts import HostFacts
from deployer.core.hooks import Hook, Phase, hook_script, run_environment, with_hooks
from deployer.core.inventory import Inventory
from deployer.core.outcome import Report
from deployer.core.plan import LOCAL, Plan
from deployer.engine.executor import Executor
from deployer.engine.local import LocalTransport
from deployer.engine.masking import Masker
from deployer.engine.run import Options, PlanFor, Result, open_executor, run_operation
from deployer.errors import DeployerError
from deployer.operations import balancer
from deployer.remote.fragments import Fragment


def run_phase(
    executor: Executor,
    inventory: Inventory,
    phase: Phase,
    operation: str,
    hosts: Sequence[str],
    *,
    release_id: str | None = None,
    version: str | None = None,
    result: str | None = None,
) -> list[str]:
    """Run ``phase``'s hooks in order (remote ones on every host in ``hosts`` at once); stop at the first
    failure and return what failed (``hook before_deploy on web1: exit status 3``), or nothing."""
    failures: list[str] = []
    hooks = inventory.config.hooks.phase(phase)
    for index, hook in enumerate(hooks):
        name = f"hook {phase}" + (f" #{index + 1}" if len(hooks) > 1 else "")
        remote = hook.on == "hosts"
        targets = list(hosts) if remote else [LOCAL]

        def one(target: str, hook: Hook = hook, name: str = name, remote: bool = remote) -> None:
            # On a host, DEPLOYER_HOST names that host; on the control machine it is empty.
            env = run_environment(
                inventory,
                operation,
                phase,
                hosts=hosts,
                release_id=release_id,
                version=version,
                result=result,
                host=target if remote else None,
            )
            cd = inventory.config.deploy_to if remote else None
            executor.run(target, hook_script(name, hook.run, env, cd=cd, timeout=hook.timeout))

        errors = executor.parallel(targets, one)
        for target, exc in errors.items():
            where = "the control machine" if target == LOCAL else target
            failures.append(f"{name} on {where}: {executor.describe(exc)}")
        if failures:
            break
    return failures


PHASE_HOOKS: tuple[Phase, ...] = ("before_deploy", "after_deploy", "on_failure")


def _notes(plan: Plan, inventory: Inventory) -> Plan:
    """The phase hooks in each host's notes, so ``--dry-run`` lists every hook the run would call."""
    hooks = inventory.config.hooks
    listed = [f"hook {phase} ({hook.on}): {hook.run}" for phase in PHASE_HOOKS for hook in hooks.phase(phase)]
    if not listed:
        return plan
    return replace(plan, hosts=tuple(replace(h, notes=(*h.notes, *listed)) for h in plan.hosts))


def result_word(report: Report) -> str:
    """``DEPLOYER_RESULT``: success, interrupted or failed."""
    if report.ok:
        return "success"
    return "interrupted" if report.interrupted else "failed"


def run_with_hooks(
    inventory: Inventory,
    options: Options,
    operation: str,
    names: Sequence[str],
    plan_for: PlanFor,
    *,
    release: str | None = None,
    version: str | None = None,
    probe: Callable[[str], Fragment] | None = None,
) -> Result:
    """:func:`run_operation` with the inventory's hooks and load balancer at their phases."""
    config = inventory.config
    if config.hooks.empty and config.load_balancer is None:
        return run_operation(
            inventory, options, operation, names, plan_for, release=release, version=version, probe=probe
        )

    def planned(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        plan = _notes(with_hooks(plan_for(executor, facts), inventory), inventory)
        if not options.dry_run and config.hooks.before_deploy:
            hosts = [h.host for h in plan.hosts]
            failed = run_phase(
                executor, inventory, "before_deploy", operation, hosts, release_id=plan.release_id, version=plan.version
            )
            if failed:
                raise DeployerError(
                    f"{operation} stopped by a before_deploy hook: " + "; ".join(failed),
                    hint="nothing was changed on any host and the lock was released; fix the hook's cause and retry",
                )
        return plan

    result = run_operation(inventory, options, operation, names, planned, release=release, version=version, probe=probe)
    if options.dry_run:
        return result
    report = result.report
    if config.load_balancer is not None and result.plan is not None:
        report.warnings.extend(balancer.reconcile(inventory, options, report))
    phase: Phase = "after_deploy" if report.ok else "on_failure"
    if config.hooks.phase(phase):
        plan = result.plan
        hosts = [h.host for h in plan.hosts] if plan is not None else list(names)
        with open_executor(inventory, options, operation) as executor:
            failed = run_phase(
                executor,
                inventory,
                phase,
                operation,
                hosts,
                release_id=report.release,
                version=report.version,
                result=result_word(report),
            )
        report.warnings.extend(f"{line} (the hosts were left as they are)" for line in failed)
    return result


def run_build_hooks(inventory: Inventory, phase: Phase, *, tarball: str | None = None) -> None:
    """``before_build``/``after_build``: on the control machine, in order; the first failure raises
    (the build does not start, or its release is not used)."""
    masker = Masker({v.get_secret_value() for v in inventory.secrets.values()})
    for index, hook in enumerate(inventory.config.hooks.phase(phase)):
        name = f"hook {phase}" + (f" #{index + 1}" if len(inventory.config.hooks.phase(phase)) > 1 else "")
        env = run_environment(inventory, "build", phase, hosts=[h.name for h in inventory.hosts])
        if tarball is not None:
            env["DEPLOYER_TARBALL"] = tarball
        result = LocalTransport().run(hook_script(name, hook.run, env, cd=None, timeout=hook.timeout))
        if not result.ok:
            detail = masker(result.stderr.strip()[-2000:]) or f"exit status {result.exit_status}"
            raise DeployerError(f"{name} failed: {detail}", hint="fix the hook's cause and build again")
