"""``deployer setup``: prepare fresh hosts once, as an administrator, for deploys by the unprivileged user.

Through the one engine like every operation (inventory -> facts -> plan -> executor -> report): the hosts
are probed and locked, each gets one script (:func:`deployer.remote.systemd.setup_host`), and the report
says per host what changed (or that nothing did: a second run changes nothing). It logs in as ``admin``
(root), never as the deploy user: creating directories for another user, installing the unit and writing
a sudoers drop-in need root, which is exactly what deploys must not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from deployer.core.config import HostConfig
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.outcome import Events, NullEvents
from deployer.core.plan import HostPlan, HostStep, Plan, batches, layout_for, service_for
from deployer.engine.executor import Executor
from deployer.engine.run import Options, Result, run_operation
from deployer.remote.systemd import setup_changes, setup_host

UNCHANGED = "unchanged: the host was ready"


def deploy_user(inventory: Inventory, host: HostConfig) -> str:
    """The user deploys log in as on ``host`` (its own ``user``, else ``ssh.user``)."""
    return host.user or inventory.config.ssh.user


def as_admin(inventory: Inventory, admin: str) -> Inventory:
    """The same inventory, logging in as ``admin`` on every host (setup's privileged login)."""
    config = inventory.config
    hosts = tuple(h.model_copy(update={"user": None}) for h in config.hosts)
    ssh = config.ssh.model_copy(update={"user": admin})
    return dataclasses.replace(inventory, config=config.model_copy(update={"ssh": ssh, "hosts": hosts}))


def _notice(output: str) -> str:
    changes = setup_changes(output)
    return "changed: " + "; ".join(changes) if changes else UNCHANGED


def plan_setup(inventory: Inventory, facts: Mapping[str, HostFacts], users: Mapping[str, str]) -> Plan:
    """One setup script per selected host, for the deploy user ``users[host]``."""
    layout = layout_for(inventory)
    hosts = []
    for host in inventory.hosts:
        if host.name not in facts:
            continue
        user = users[host.name]
        step = HostStep("activate", setup_host(layout, user, service_for(inventory, user=user)), _notice)
        current = facts[host.name].current_release
        hosts.append(HostPlan(host=host.name, before=current, target=current, steps=(step,)))
    names = [h.host for h in hosts]
    return Plan(
        kind="setup",
        env=inventory.env,
        release_id=None,
        version=None,
        artifact=None,
        hosts=tuple(hosts),
        batches=tuple(tuple(b) for b in batches(names, inventory, {"kind": "parallel", "canary": False})),
        health_gated=False,
    )


@dataclass
class SetupResult(Result):
    """The report and plan, and per host what setup changed (an empty list: nothing, the host was ready)."""

    changes: dict[str, list[str]] = field(default_factory=dict)


class _Recorder:
    """Passes events on, keeping what each host's setup step said it changed (shown as ``changed`` with one
    line per change, or ``unchanged``)."""

    def __init__(self, inner: Events) -> None:
        self.inner = inner
        self.changes: dict[str, list[str]] = {}

    def step(self, host: str, step: str, status: str, detail: str = "") -> None:
        if step == "setup" and status == "skipped":
            if detail == UNCHANGED:
                self.changes[host] = []
                status, detail = "unchanged", "the host was ready"
            else:
                self.changes[host] = detail.removeprefix("changed: ").split("; ")
                status, detail = "changed", "\n".join(self.changes[host])
        self.inner.step(host, step, status, detail)

    def phase(self, name: str, detail: str = "") -> None:
        self.inner.phase(name, detail)

    def progress(self, host: str, sent: int, total: int) -> None:
        self.inner.progress(host, sent, total)

    def output(self, host: str, stream: str, text: str) -> None:
        self.inner.output(host, stream, text)

    def warning(self, text: str) -> None:
        self.inner.warning(text)


def setup(inventory: Inventory, admin: str = "root", options: Options | None = None) -> SetupResult:
    """Prepare the selected hosts (see the module's docstring), logging in as ``admin``."""
    options = options or Options()
    selected = inventory.select(options.hosts, options.roles)
    users = {h.name: deploy_user(inventory, h) for h in selected}
    privileged = as_admin(inventory, admin)
    recorder = _Recorder(options.events or NullEvents())
    options = dataclasses.replace(options, events=recorder)

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        return plan_setup(privileged, facts, users)

    result = run_operation(privileged, options, "setup", [h.name for h in selected], plan_for)
    return SetupResult(result.report, result.plan, changes=recorder.changes)
