"""The load balancer around operations: what state each host's server is in, and putting back what a
run drained.

The drain and undrain themselves are steps at the engine's seams (:func:`deployer.core.hooks.
balancer_steps`). What a step cannot see is the end of the whole run: a host whose new node failed
and could not be reverted, a host whose before-stop hook failed after it was drained, a run that was
interrupted. :func:`reconcile` looks at each touched host's server after the run and either puts it
back (its node runs as healthy as before) or says in the report that it was left drained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from deployer.core.hooks import balancer_hosts
from deployer.core.inventory import Inventory
from deployer.core.outcome import HostResult, Report
from deployer.engine.run import Options
from deployer.errors import DeployerError
from deployer.remote import balancer as haproxy
from deployer.remote.shell import Script
from deployer.ssh.endpoints import ssh_connector
from deployer.ssh.transport import CommandResult

DRAINED = ("DRAIN", "MAINT")

# Outcomes after which the host's node runs as healthy as before the run (or newer, healthy).
_SERVING = ("success", "reverted", "aborted")


RunOn = Callable[[str, Script], CommandResult]
"""Run a script on an inventory host over the caller's already open connection (e.g. ``Executor.run``)."""


def balancer_states(
    inventory: Inventory, options: Options | None = None, *, run_on: RunOn | None = None
) -> dict[str, dict[str, str]]:
    """``{balancer host: {inventory host: state}}`` for HAProxy (``UP``, ``DRAIN``, ``MAINT``, ``DOWN``,
    ...; ``missing`` when the backend has no such server, ``unknown: <why>`` when the balancer could not
    be asked). Empty without an HAProxy ``load_balancer``. ``status`` shows it.

    With ``run_on``, a balancer that is itself an inventory host is asked over the caller's connection to
    that host (``status`` has one open already) instead of a second SSH connection.
    """
    lb = inventory.config.load_balancer
    if lb is None or lb.generic or lb.backend is None:
        return {}
    options = options or Options()
    connector = options.connector or ssh_connector(inventory)
    out: dict[str, dict[str, str]] = {}
    for machine in balancer_hosts(inventory):
        row: dict[str, str] = {}
        script = haproxy.states(lb.socket, lb.backend, sudo=lb.sudo)
        try:
            if run_on is not None and any(machine is host for host in inventory.hosts):
                result = run_on(machine.name, script)
            else:
                transport = connector(machine)
                try:
                    result = transport.run(script)
                finally:
                    transport.close()
            if not result.ok:
                raise DeployerError(result.stderr.strip() or f"exit status {result.exit_status}")
            servers = haproxy.parse_states(result.stdout)
            for host in inventory.hosts:
                state = servers.get(lb.server(host.name))
                row[host.name] = state[0] if state else "missing"
        except DeployerError as exc:
            row = {h.name: f"unknown: {exc}" for h in inventory.hosts}
        out[machine.name] = row
    return out


def _why(result: HostResult) -> str:
    return f"{result.outcome}" + (f": {result.error}" if result.error else "")


def reconcile(inventory: Inventory, options: Options, report: Report) -> list[str]:
    """After a run: each touched host whose server is still drained is put back when its node serves as
    before, else reported as left drained. Returns the report lines (warnings)."""
    lb = inventory.config.load_balancer
    if lb is None:
        return []
    touched = [r for r in report.hosts if r.outcome not in ("untouched", "unreachable", "pending")]
    if not touched:
        return []
    if report.operation == "stop":
        stopped = [r.host for r in touched if r.outcome == "success"]
        if not stopped:
            return []
        backend = lb.backend or "the balancer"
        return [f"{', '.join(stopped)}: left drained in {backend} while stopped; `start` puts them back"]
    lines: list[str] = []
    if lb.generic:
        for result in touched:
            if result.outcome not in _SERVING or result.healthy is False:
                lines.append(
                    f"{result.host}: left drained (undrain not run: {_why(result)}); undrain it once it is healthy"
                )
        return lines
    assert lb.backend is not None
    connector = options.connector or ssh_connector(inventory)
    states = balancer_states(inventory, options)
    for machine in balancer_hosts(inventory):
        row: Mapping[str, str] = states.get(machine.name, {})
        for result in touched:
            state = row.get(result.host, "unknown")
            server = lb.server(result.host)
            where = f"{lb.backend}/{server} on {machine.name}"
            if state.startswith("unknown"):
                lines.append(
                    f"{result.host}: could not check {where} after the run ({state}); check it is not left drained"
                )
                continue
            if state.split("_")[0] not in DRAINED:
                continue
            serving = result.outcome in _SERVING and result.healthy is not False
            if not serving:
                lines.append(
                    f"{result.host}: left drained in {lb.backend} (server {server} on {machine.name}): its node is not "
                    f"healthy ({_why(result)}); `set server {lb.backend}/{server} state ready` once it is"
                )
                continue
            try:
                transport = connector(machine)
                try:
                    done = transport.run(haproxy.set_state(lb.socket, lb.backend, server, "ready", sudo=lb.sudo))
                finally:
                    transport.close()
                if not done.ok:
                    raise DeployerError(done.stderr.strip() or f"exit status {done.exit_status}")
                lines.append(f"{result.host}: was still drained in {where} after the run; put back (ready)")
            except DeployerError as exc:
                lines.append(f"{result.host}: left drained in {where}: putting it back failed: {exc}")
    return lines
