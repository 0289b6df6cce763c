"""One way to run an operation that touches hosts: start (preflight + lock), plan, execute, finish.

Every operation (deploy, rollback, migrate, start, stop, restart) is :func:`run_operation` with its own
planning function; the planning function gets the executor (to read the environment's cookie, for
example) and the probed facts, and returns a :class:`~deployer.core.plan.Plan`. With ``dry_run`` the
hosts are only probed (no lock) and the plan is returned unexecuted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.outcome import Events, NullEvents, Report
from deployer.core.plan import HostStep, Plan
from deployer.engine.executor import Executor, fill_sessions
from deployer.engine.masking import Masker
from deployer.errors import DeployerError
from deployer.remote.fragments import Fragment
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
    steps: Sequence[HostStep] = ()
    """Extra per-host steps, run at their roles' seams on every host of the operation
    (before its node stops, after it is healthy, on revert)."""
    restart: bool = False
    """Deploy: restart hosts that already run the artifact, healthy, with the same environment (default:
    leave them unchanged)."""
    started: float | None = None
    """``time.monotonic()`` when the command started (the CLI: its process start, see
    :func:`deployer.engine.clock.process_started`); the report's duration counts from there. Default: the call."""


@dataclass
class Result:
    """A report, plus the plan that produced it (what ``--dry-run`` prints)."""

    report: Report
    plan: Plan | None = None


def open_executor(inventory: Inventory, options: Options, operation: str) -> Executor:
    """The executor for one operation: the inventory's secrets masked, the options' connector and events."""
    return Executor(
        inventory,
        options.connector or ssh_connector(inventory),
        events=options.events or NullEvents(),
        masker=Masker(inventory.secret_values()),
        cancel=options.cancel,
        operation=operation,
    )


def failed_report(
    operation: str, inventory: Inventory, executor: Executor, names: Sequence[str], error: str | None
) -> Report:
    """The report of an operation that stopped before its plan ran (refused, unplannable, unreachable),
    or of a dry run (``error`` None): hosts it did not reach are ``untouched``."""
    results = [executor.result(h) for h in names]
    for result in results:
        if result.outcome == "pending":
            result.outcome = "untouched"
    return Report(operation, inventory.env, None, None, results, error=error)


def finish(executor: Executor, report: Report) -> Report:
    """Release the lock everywhere (saying where that failed) and count SSH sessions."""
    executor.release_locks()
    for host, why in executor.lock_left.items():
        report.warnings.append(f"{host}: the lock could not be released ({why}); run `deployer unlock`")
    fill_sessions(report, executor)
    return report


PlanFor = Callable[[Executor, dict[str, HostFacts]], Plan]


def run_operation(
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
    """Probe and lock ``names``, plan with ``plan_for``, execute (unless dry run), release the lock.

    ``probe(host)`` adds facts to the host's probe (see :meth:`Executor.preflight`).

    ``release`` goes into the lock's info (what this run is about); ``version`` into a report of a run
    that stopped before its plan ran.
    """
    started = options.started if options.started is not None else time.monotonic()
    with open_executor(inventory, options, operation) as executor:
        plan: Plan | None = None
        try:
            facts = executor.preflight(names, lock=not options.dry_run, release=release, extra=probe)
            plan = plan_for(executor, facts).with_steps(options.steps)
            if options.dry_run:
                report = failed_report(operation, inventory, executor, names if plan.kind != "migrate" else [], None)
                report.release, report.version, report.dry_run = plan.release_id, plan.version, True
                return Result(report, plan)
            report = executor.execute(plan)
        except DeployerError as exc:
            report = failed_report(operation, inventory, executor, names, str(exc))
            report.version, report.dry_run = version, options.dry_run
        result = Result(finish(executor, report), plan)
        # The whole command, lock to unlock included (the executor's own figure covers its phases only).
        report.duration = time.monotonic() - started
        return result
