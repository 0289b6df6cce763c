"""The shape every task that touches hosts shares: the flags, the options it hands to the operation, its end.

``Common`` holds the flags of every rollout task (deploy, rollback, migrate, start, stop, restart), checked
before any work; ``finish`` prints the plan or the report and turns the outcome into the exit status.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task, task
from rich.console import Console

from deployer.cli import flags
from deployer.cli.common import (
    consoles,
    fail,
    flag_help,
    interruptible,
    load,
    select,
    speak_deployer,
    split,
    usage_error,
)
from deployer.cli.confirm import confirm
from deployer.cli.render import ConsoleEvents, print_json, print_report
from deployer.core.inventory import Inventory, load_inventory
from deployer.core.outcome import Report
from deployer.engine.clock import process_started
from deployer.errors import DeployerError
from deployer.operations import release as api


@dataclass
class Common:
    """The flags every rollout task takes, validated; ``inventory`` is loaded by :meth:`start`."""

    env: str | None
    hosts: list[str]
    roles: list[str]
    dry_run: bool
    json_: bool
    verbose: bool
    inventory_dir: str
    strategy: dict[str, Any] = field(default_factory=dict)
    yes: bool = False
    """``--yes``: a protected environment (``confirm: true``) is not asked."""
    operation: str = ""
    """The task's name, for the confirmation question."""
    human: Console = field(init=False)
    errors: Console = field(init=False)

    @classmethod
    def parse(
        cls,
        *,
        env: str | None,
        hosts: str | None = None,
        roles: str | None = None,
        dry_run: bool = False,
        json_: bool = False,
        verbose: bool = False,
        inventory_dir: str = "inventory",
        strategy: str | None = None,
        batch_size: str | None = None,
        canary: bool = False,
        max_fail: str | None = None,
        pause: str | None = None,
        yes: bool = False,
    ) -> Common:
        """Check every flag (exit 2 on the first bad one) before the inventory is even read."""
        overrides = flags.rollout(strategy, batch_size, canary, max_fail, pause)
        common = cls(env, split(hosts), split(roles), dry_run, json_, verbose, inventory_dir, overrides, yes)
        common.human, common.errors = consoles()
        return common

    def load(self, *, secrets: bool = False) -> Inventory:
        """The inventory, with ``--hosts``/``--roles`` checked against it (exit 2 before any work)."""
        inventory = load(self.env, self.inventory_dir, secrets=secrets)
        select(inventory, self.hosts, self.roles)
        if inventory.config.confirm and not self.dry_run:
            # Before the build and before any connection: a "no" costs nothing.
            names = [h.name for h in inventory.select(self.hosts, self.roles)]
            confirm(inventory.env, self.operation or "this operation", names, yes=self.yes)
        return inventory

    def interruptible(self) -> AbstractContextManager[threading.Event]:
        """Ctrl-C/SIGTERM: finish the running host steps, undo, unlock (see :func:`common.interruptible`)."""
        return interruptible(self.human)

    def options(self, cancel: threading.Event | None = None, **extra: Any) -> api.Options:
        """What the operation takes: the selection, dry run, strategy, live output, cancellation."""
        return api.Options(
            hosts=self.hosts,
            roles=self.roles,
            dry_run=self.dry_run,
            strategy=self.strategy or None,
            events=ConsoleEvents(self.human, verbose=self.verbose),
            cancel=cancel,
            started=process_started(),
            **extra,
        )

    def execute(self, operation: Callable[[api.Options], Any], show_plan: Callable[..., None], **extra: Any) -> None:
        """Run ``operation(options)`` interruptibly, then :meth:`finish` with its report and plan."""
        try:
            with self.interruptible() as cancel:
                result = operation(self.options(cancel, **extra))
        except DeployerError as exc:
            raise fail(self.errors, exc, self.env) from None
        self.finish(result.report, result.plan, show_plan)

    def finish(self, report: Report, plan: Any, show_plan: Callable[..., None]) -> None:
        """Plan (dry run) or report on stderr, the JSON on stdout; exit 1 unless the run succeeded."""
        report.error = speak_deployer(report.error, self.env) if report.error else report.error
        report.warnings = [speak_deployer(w, self.env) for w in report.warnings]
        if self.dry_run and plan is not None:
            show_plan(self.human, plan, verbose=self.verbose)
        if self.json_:
            print_json(report.to_json())
        if not self.dry_run or report.error:
            print_report(self.human, report)
        if not report.ok and not (self.dry_run and not report.error):
            raise Exit(code=1)


# --- one definition of the rollout flags --------------------------------------------------------------------

_P = inspect.Parameter.POSITIONAL_OR_KEYWORD
SELECTION_PARAMS = (inspect.Parameter("hosts", _P, default=None), inspect.Parameter("roles", _P, default=None))
OUTPUT_PARAMS = (
    inspect.Parameter("dry_run", _P, default=False),
    inspect.Parameter("json_", _P, default=False),
    inspect.Parameter("verbose", _P, default=False),
)
STRATEGY_PARAMS = (
    inspect.Parameter("strategy", _P, default=None),
    inspect.Parameter("batch_size", _P, default=None),
    inspect.Parameter("canary", _P, default=False),
    inspect.Parameter("max_fail", _P, default=None),
    inspect.Parameter("pause", _P, default=None),
)
CONFIRM_PARAMS = (inspect.Parameter("yes", _P, default=False),)
COMMON_NAMES = frozenset(
    ["env", "inventory_dir", *(p.name for p in (*SELECTION_PARAMS, *OUTPUT_PARAMS, *STRATEGY_PARAMS, *CONFIRM_PARAMS))]
)

Body = Callable[..., None]


def refuse_invoke_dry(c: Context) -> None:
    """``invoke --dry deploy`` (Invoke's own option: echo shell commands) must not be taken for a dry run."""
    run_config = getattr(getattr(c, "config", None), "run", None)
    if run_config is not None and getattr(run_config, "dry", False):
        raise usage_error("--dry/-R is Invoke's option (echo shell commands), not a dry run: use --dry-run")


def rollout_task(*, selection: bool = True, strategy: bool = True, **extra_help: str) -> Callable[[Body], Task[Any]]:
    """A task that touches hosts: ``body(c, run, **its own flags)`` gets the shared flags checked, as ``run``.

    The shared flags (``--env``, ``--hosts``, ``--roles``, ``--dry-run``, ``--json``, ``--verbose``, the
    strategy flags, ``--inventory-dir``) are defined here once; the body's own keyword parameters after
    ``run`` become its extra flags, documented by ``extra_help``.
    """
    names = ["env", "inventory_dir", "json_", "verbose", "dry_run"]
    params = [inspect.Parameter("env", _P, default=None)]
    if selection:
        params += SELECTION_PARAMS
        names += ["hosts", "roles"]
    params += OUTPUT_PARAMS
    if strategy:
        params += STRATEGY_PARAMS
        names += [p.name for p in STRATEGY_PARAMS]
    params += CONFIRM_PARAMS
    names.append("yes")

    def decorate(body: Body) -> Task[Any]:
        own = list(inspect.signature(body).parameters.values())[2:]

        @functools.wraps(body)
        def wrapper(c: Context, **kwargs: Any) -> None:
            refuse_invoke_dry(c)
            shared = {name: kwargs.pop(name) for name in list(kwargs) if name in COMMON_NAMES}
            common = Common.parse(**shared)
            common.operation = body.__name__
            body(c, common, **kwargs)

        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter("c", _P),
                *params,
                *[p.replace(kind=_P) for p in own],
                inspect.Parameter("inventory_dir", _P, default="inventory"),
            ]
        )
        made: Task[Any] = task(positional=[], auto_shortflags=False, help=flag_help(*names, **extra_help))(wrapper)
        return made

    return decorate


@dataclass
class Target:
    """What a read-only or single-host task works on: the loaded inventory and the selection, checked."""

    inventory: Inventory
    hosts: list[str]
    roles: list[str]
    json_: bool
    human: Console
    errors: Console

    @property
    def host(self) -> str:
        """The one host of a session task (logs, console, observer)."""
        return self.hosts[0]

    def options(self) -> api.Options:
        """The selection, for the operation."""
        return api.Options(hosts=self.hosts, roles=self.roles)


Secrets = Literal["mask", "required"] | None
"""How a fleet task resolves the inventory's secrets: not at all, to mask them, or all required."""


def load_for(env: str | None, inventory_dir: str, secrets: Secrets) -> Inventory:
    """The inventory read once: ``secrets="required"`` resolves every secret (missing ones exit 2, as for a
    deploy); ``"mask"`` resolves them when it can, only so that their values are masked in what hosts print."""
    if secrets == "mask" and env:
        try:
            return load_inventory(env, inventory_dir, resolve_secrets=True)
        except DeployerError:
            pass  # a secret is not available here: nothing to mask; any other problem is reported below
    return load(env, inventory_dir, secrets=secrets == "required")


def fleet_task(
    *,
    one: str | None = None,
    json_: bool = False,
    name: str | None = None,
    secrets: Secrets = None,
    **extra_help: str,
) -> Callable[[Body], Task[Any]]:
    """A task that reads from hosts or opens a session on one: ``body(c, target, **its own flags)``.

    ``--env``, ``--inventory-dir`` and the selection are defined here once: ``--hosts``/``--roles``, or with
    ``one`` (what the host is for) ``--hosts`` naming exactly one host. ``--host`` stays as a hidden
    alias of ``--hosts``. ``secrets`` (``"required"`` or ``"mask"``, see :func:`load_for`) resolves the
    secrets in the same single read of the inventory. Bad flags exit 2 before any connection; an
    operational error exits 1.
    """
    names = ["env", "inventory_dir"] + (["json_"] if json_ else [])
    params = [inspect.Parameter("env", _P, default=None), inspect.Parameter("hosts", _P, default=None)]
    if one is None:
        params.append(inspect.Parameter("roles", _P, default=None))
        names += ["hosts", "roles"]
    else:
        extra_help = {"hosts": f"The one host {one} (its name in the inventory).", **extra_help}
    if json_:
        params.append(inspect.Parameter("json_", _P, default=False))
    hidden = {"host": "Old name of --hosts."}

    def decorate(body: Body) -> Task[Any]:
        own = list(inspect.signature(body).parameters.values())[2:]

        @functools.wraps(body)
        def wrapper(
            c: Context,
            env: str | None = None,
            hosts: str | None = None,
            roles: str | None = None,
            json_: bool = False,
            inventory_dir: str = "inventory",
            host: str | None = None,
            **kwargs: Any,
        ) -> None:
            refuse_invoke_dry(c)
            selected = split(flags.either(hosts, host))
            if one is not None:
                selected = [flags.one_host(",".join(selected), body.__name__)]
            inventory = load_for(env, inventory_dir, secrets)
            select(inventory, selected, split(roles))
            human, errors = consoles()
            try:
                body(c, Target(inventory, selected, split(roles), json_, human, errors), **kwargs)
            except DeployerError as exc:
                raise fail(errors, exc, env) from None

        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter("c", _P),
                *params,
                *[p.replace(kind=_P) for p in own],
                inspect.Parameter("inventory_dir", _P, default="inventory"),
                inspect.Parameter("host", _P, default=None),
            ]
        )
        made: Task[Any] = task(
            positional=[], auto_shortflags=False, help={**flag_help(*names), **hidden, **extra_help}, name=name
        )(wrapper)
        return made

    return decorate
