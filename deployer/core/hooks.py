"""Hooks and load-balancer draining, configured in the inventory and turned into engine steps.

Two inventory sections live here (see ``docs`` for the reference):

``hooks:`` commands run at the named phases of every operation (deploy, rollback, start, stop, restart)::

    hooks:
      before_deploy: ./scripts/announce.sh          # on the control machine, after the lock is taken
      before_stop:   {run: "sv stop worker", on: hosts}   # on each host, before its node stops
      after_healthy: {run: "curl -fsS localhost:4000/warm", on: hosts}
      on_failure:    ./scripts/page-oncall.sh

``load_balancer:`` takes each host out of the balancer before its node stops and puts it back once its
new node is healthy: HAProxy through its runtime API on the balancer host(s), or any balancer through
a pair of ``drain``/``undrain`` commands.

Per-host phases (``before_stop``, ``after_healthy``) become :class:`~deployer.core.plan.HostStep` s at
the engine's seams; the other phases run around the operation (:mod:`deployer.operations.hooks`).
Every hook gets the run described in environment variables (:data:`VARIABLES`), exported at the top
of the script it runs in: for remote hooks that script travels on the SSH channel's stdin, never argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from deployer.remote.shell import Part, Script, join, template

if TYPE_CHECKING:
    from deployer.core.config import HostConfig
    from deployer.core.inventory import Inventory
    from deployer.core.plan import HostStep, Plan, StepRole

Phase = Literal[
    "before_build", "after_build", "before_deploy", "before_stop", "after_healthy", "after_deploy", "on_failure"
]
PHASES: tuple[Phase, ...] = (
    "before_build",
    "after_build",
    "before_deploy",
    "before_stop",
    "after_healthy",
    "after_deploy",
    "on_failure",
)

VARIABLES: Mapping[str, str] = {
    "DEPLOYER_PHASE": "the hook's phase (`before_deploy`, `before_stop`, ...)",
    "DEPLOYER_ENV": "the environment (inventory name)",
    "DEPLOYER_OPERATION": "deploy, upgrade, rollback, start, stop, restart or `env push` (`build` for build hooks)",
    "DEPLOYER_RELEASE_ID": "the release the operation switches to (empty when hosts differ or it is not known yet)",
    "DEPLOYER_VERSION": "that release's version (empty when not known)",
    "DEPLOYER_HOSTS": "the hosts of the operation, space-separated",
    "DEPLOYER_HOST": "the host in question (per-host phases), or the host an `on: hosts` hook runs on",
    "DEPLOYER_RESULT": "after_deploy and on_failure: success, failed or interrupted (empty before)",
    "DEPLOYER_APP": "the application's name",
    "DEPLOYER_DEPLOY_TO": "deploy_to on the hosts",
    "DEPLOYER_TARBALL": "after_build only: the release tarball just built",
    "DEPLOYER_LB_BACKEND": "generic load_balancer drain/undrain commands only: load_balancer.backend",
    "DEPLOYER_LB_SERVER": "generic load_balancer drain/undrain commands only: the host's server name",
}
"""Every variable a hook gets, documented (also in docs/hooks.md)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Command = Annotated[str, AfterValidator(_non_blank)]


class Hook(_Model):
    """One hook: a shell command (or the path of a script) and where it runs."""

    run: Command = Field(description="A POSIX sh command (run with `set -eu`), or the path of an executable script.")
    on: Literal["local", "hosts"] = Field(
        "local",
        description="`local`: on the control machine, in the current directory; `hosts`: on each host of the "
        "operation as the deploy user, in `current` (per-host phases: on the host in question).",
    )
    timeout: float = Field(300.0, gt=0, description="Seconds before the hook counts as failed.")
    undo_on_failure: bool = Field(
        False,
        description="after_healthy only: a failure reverts the host to its previous release (deploy, rollback) "
        "or reports it failed (start, restart) instead of leaving the healthy host as it is.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"run": data} if isinstance(data, str) else data


def _listed(value: Any) -> Any:
    # One hook or a list of hooks; a bare string is a command run locally.
    return [value] if isinstance(value, str | dict) else value


Hooks = Annotated[tuple[Hook, ...], BeforeValidator(_listed)]


class HooksConfig(_Model):
    """``hooks:``: commands at the named phases of every operation. Each phase takes one hook or a list."""

    before_build: Hooks = Field((), description="Before the release is built (control machine only).")
    after_build: Hooks = Field((), description="After the release was built (control machine only).")
    before_deploy: Hooks = Field(
        (), description="After the lock is taken, before anything changes; a failure stops the operation."
    )
    before_stop: Hooks = Field(
        (), description="Per host, before its node stops; a failure leaves that host as it was (`aborted`)."
    )
    after_healthy: Hooks = Field((), description="Per host, once its new node passed the health gate.")
    after_deploy: Hooks = Field((), description="After the operation succeeded (lock released).")
    on_failure: Hooks = Field((), description="After the operation failed or was interrupted (lock released).")

    @model_validator(mode="after")
    def _where(self) -> HooksConfig:
        for phase in PHASES:
            if phase != "after_healthy" and any(h.undo_on_failure for h in getattr(self, phase)):
                raise ValueError(f"{phase}: undo_on_failure applies to after_healthy hooks only")
        for phase in ("before_build", "after_build"):
            for index, hook in enumerate(getattr(self, phase)):
                if hook.on != "local":
                    raise ValueError(f"{phase}.{index}.on: build hooks run on the control machine only (`local`)")
        return self

    def phase(self, name: Phase) -> tuple[Hook, ...]:
        hooks: tuple[Hook, ...] = getattr(self, name)
        return hooks

    @property
    def empty(self) -> bool:
        return not any(self.phase(p) for p in PHASES)


class BalancerHost(_Model):
    """A load-balancer machine, reached over SSH like the hosts (``ssh:`` settings apply)."""

    name: str = Field(min_length=1, description="Name in output; an inventory host's name to reuse that host.")
    address: str | None = Field(None, description="Hostname or IP; omit to use the inventory host of that name.")
    port: int | None = Field(None, ge=1, le=65535, description="Overrides ssh.port.")
    user: str | None = Field(None, description="Overrides ssh.user.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class LoadBalancerConfig(_Model):
    """``load_balancer:``: drain each host before its node stops, put it back once its new node is healthy.

    HAProxy (default): ``hosts`` are the balancer machines, ``socket`` its admin socket (``stats socket
    ... level admin``), ``backend`` the backend and ``servers`` maps host names to server names (default:
    the host's name). Any other balancer: ``drain`` and ``undrain`` commands (run on ``hosts``, or on the
    control machine without hosts) with ``DEPLOYER_HOST``, ``DEPLOYER_LB_BACKEND`` and
    ``DEPLOYER_LB_SERVER`` set.
    """

    hosts: tuple[BalancerHost, ...] = Field((), description="The balancer machine(s).")
    socket: str = Field("/run/haproxy/admin.sock", description="HAProxy's admin socket on the balancer host.")
    backend: str | None = Field(None, description="The backend holding the hosts' servers.")
    servers: dict[str, str] = Field(default_factory=dict, description="Host name -> server name (default: same).")
    drain_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for a drained server's sessions to reach 0 before stopping anyway."
    )
    sudo: bool = Field(False, description="Talk to the socket through `sudo -n` (socket owned by root).")
    drain: str | None = Field(None, description="Generic form: the command that takes $DEPLOYER_HOST out.")
    undrain: str | None = Field(None, description="Generic form: the command that puts $DEPLOYER_HOST back.")

    @model_validator(mode="after")
    def _form(self) -> LoadBalancerConfig:
        if (self.drain is None) != (self.undrain is None):
            raise ValueError("drain and undrain go together: give both commands, or neither (HAProxy)")
        if self.drain is None:
            if not self.hosts:
                raise ValueError("hosts: name the HAProxy machine(s) (or give drain/undrain commands)")
            if not self.backend:
                raise ValueError("backend: name the HAProxy backend holding the hosts' servers")
        return self

    @property
    def generic(self) -> bool:
        return self.drain is not None

    def server(self, host: str) -> str:
        return self.servers.get(host, host)


# --- building steps -----------------------------------------------------------------------------------------


def run_environment(
    inventory: Inventory,
    operation: str,
    phase: str,
    *,
    hosts: Sequence[str],
    release_id: str | None = None,
    version: str | None = None,
    host: str | None = None,
    result: str | None = None,
) -> dict[str, str]:
    """The documented variables (:data:`VARIABLES`) for one hook run."""
    config = inventory.config
    return {
        "DEPLOYER_PHASE": phase,
        "DEPLOYER_ENV": inventory.env,
        "DEPLOYER_OPERATION": operation,
        "DEPLOYER_RELEASE_ID": release_id or "",
        "DEPLOYER_VERSION": version or "",
        "DEPLOYER_HOSTS": " ".join(hosts),
        "DEPLOYER_HOST": host or "",
        "DEPLOYER_RESULT": result or "",
        "DEPLOYER_APP": config.app.name,
        "DEPLOYER_DEPLOY_TO": config.deploy_to,
    }


def exports(env: Mapping[str, str]) -> tuple[Part, ...]:
    """``export NAME='value'`` lines, every value quoted at render time."""
    return join(*(template(f"export {name}={{{{value}}}}\n", value=value) for name, value in env.items()))


def hook_script(name: str, command: str, env: Mapping[str, str], *, cd: str | None, timeout: float) -> Script:
    """The script a hook runs in: its variables exported, ``set -eu``, then the command as written.

    ``cd`` (remote hooks: ``current``, else ``deploy_to``) is tried, never required: a first deploy has
    no ``current`` yet.
    """
    where: tuple[Part, ...] = ()
    if cd is not None:
        where = template(
            "cd {{current}} 2>/dev/null || cd {{base}} 2>/dev/null || true\n", current=cd + "/current", base=cd
        )
    return Script(name=name, parts=join(("set -eu\n",), exports(env), where, (command, "\n")), timeout=timeout)


def _step_name(phase: str, index: int, count: int) -> str:
    return f"hook {phase}" + (f" #{index + 1}" if count > 1 else "")


def _balancer_host(inventory: Inventory, lb: BalancerHost) -> HostConfig:
    from deployer.core.config import HostConfig

    if lb.address is None:
        for host in inventory.hosts:
            if host.name == lb.name:
                return host
        raise ValueError(f"load_balancer.hosts: {lb.name!r} has no address and is not an inventory host")
    return HostConfig(name=lb.name, address=lb.address, port=lb.port, user=lb.user)


def balancer_hosts(inventory: Inventory) -> list[HostConfig]:
    """The balancer machines as hosts the SSH layer can reach."""
    lb = inventory.config.load_balancer
    return [_balancer_host(inventory, h) for h in lb.hosts] if lb is not None else []


def balancer_steps(inventory: Inventory, plan: Plan, host: str) -> tuple[list[HostStep], list[HostStep]]:
    """(drain steps for before_stop, undrain steps for after_healthy) of one host; none without a balancer."""
    from deployer.core.plan import LOCAL, HostStep
    from deployer.remote import balancer as haproxy

    lb = inventory.config.load_balancer
    if lb is None:
        return [], []
    server = lb.server(host)
    if plan.kind == "migrate":
        return [], []
    drains: list[HostStep] = []
    readies: list[HostStep] = []
    if lb.generic:
        assert lb.drain is not None and lb.undrain is not None
        env = run_environment(
            inventory,
            plan.kind,
            "drain",
            hosts=[h.host for h in plan.hosts],
            release_id=plan.release_id,
            version=plan.version,
            host=host,
        )
        env.update({"DEPLOYER_LB_BACKEND": lb.backend or "", "DEPLOYER_LB_SERVER": server})
        places: list[HostConfig | str] = list(balancer_hosts(inventory)) or [LOCAL]
        for place in places:
            where = place if isinstance(place, str) else place.name
            drains.append(
                HostStep(
                    "before_stop",
                    hook_script(f"drain {host} ({where})", lb.drain, env, cd=None, timeout=lb.drain_timeout + 60),
                    on=place,
                )
            )
            readies.append(
                HostStep(
                    "after_healthy",
                    hook_script(
                        f"undrain {host} ({where})",
                        lb.undrain,
                        {**env, "DEPLOYER_PHASE": "undrain"},
                        cd=None,
                        timeout=120,
                    ),
                    on=place,
                )
            )
        return drains, (readies if plan.kind != "stop" else [])
    assert lb.backend is not None
    for machine in balancer_hosts(inventory):
        drains.append(
            HostStep(
                "before_stop",
                haproxy.drain(lb.socket, lb.backend, server, deadline=lb.drain_timeout, sudo=lb.sudo, label=host),
                haproxy.drain_notice,
                on=machine,
            )
        )
        readies.append(
            HostStep(
                "after_healthy",
                haproxy.set_state(lb.socket, lb.backend, server, "ready", sudo=lb.sudo, label=host),
                on=machine,
            )
        )
    # A stopped node stays out of the balancer: `start` drains (a no-op) and puts it back once healthy.
    return drains, (readies if plan.kind != "stop" else [])


def host_steps(inventory: Inventory, plan: Plan, host: str) -> list[HostStep]:
    """Every extra step of ``host``: drain then ``before_stop`` hooks; undrain then ``after_healthy`` hooks."""
    from deployer.core.plan import LOCAL, HostStep

    hooks = inventory.config.hooks
    drains, readies = balancer_steps(inventory, plan, host)
    steps: list[HostStep] = [*drains]
    names = [h.host for h in plan.hosts]
    seams: tuple[tuple[Phase, StepRole], ...] = (("before_stop", "before_stop"), ("after_healthy", "after_healthy"))
    for phase, role in seams:
        if role == "after_healthy":
            steps.extend(readies)
        found = hooks.phase(phase)
        for index, hook in enumerate(found):
            env = run_environment(
                inventory, plan.kind, phase, hosts=names, release_id=plan.release_id, version=plan.version, host=host
            )
            remote = hook.on == "hosts"
            script = hook_script(
                _step_name(phase, index, len(found)),
                hook.run,
                env,
                cd=inventory.config.deploy_to if remote else None,
                timeout=hook.timeout,
            )
            steps.append(HostStep(role, script, on=None if remote else LOCAL, undo_on_failure=hook.undo_on_failure))
    return steps


def with_hooks(plan: Plan, inventory: Inventory) -> Plan:
    """``plan`` with each host's drain/undrain and per-host hooks at their seams (``--dry-run`` shows them)."""
    from deployer.core.plan import STEP_ROLES

    hosts = []
    for host_plan in plan.hosts:
        extra = host_steps(inventory, plan, host_plan.host)
        if not extra:
            hosts.append(host_plan)
            continue
        steps = sorted([*host_plan.steps, *extra], key=lambda s: STEP_ROLES.index(s.role))
        hosts.append(replace(host_plan, steps=tuple(steps)))
    return replace(plan, hosts=tuple(hosts))
