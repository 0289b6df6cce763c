"""The one read-only status operation: each host's facts (the probe) and, unless asked not to, one try
of its node's health check. ``status``, ``releases`` and ``history`` all read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deployer.core.facts import HostFacts, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.plan import health_check, layout_for, service_for
from deployer.core.relup import hot_root
from deployer.engine.executor import Executor
from deployer.engine.locks import describe_holder, judge
from deployer.engine.run import Options, open_executor
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.shell import Script
from deployer.remote.systemd import parse_unit_state

HealthState = Literal["ok", "failing", "down", "none", "unknown"]


@dataclass(frozen=True)
class NodeHealth:
    """One try of the inventory's health check on a host.

    ``ok``: the node runs and the check passed; ``failing``: it runs but the check failed; ``down``:
    no node runs; ``none``: nothing is deployed; ``unknown``: the check could not be run.
    """

    state: HealthState
    error: str | None = None

    @property
    def healthy(self) -> bool | None:
        if self.state == "ok":
            return True
        if self.state in ("failing", "down"):
            return False
        return None


def parse_health(output: str) -> NodeHealth:
    """Parse the ``health=`` / ``health_error=`` lines of the status script."""
    state: HealthState = "unknown"
    error = None
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "health" and value in ("ok", "failing", "down", "none", "unknown"):
            state = value  # type: ignore[assignment]
        elif key == "health_error":
            error = value.strip() or None
    if state == "down":
        error = error or "the node is not running"
    return NodeHealth(state, error)


@dataclass(frozen=True)
class HostStatus:
    """One host of ``deployer status``: its facts and its node's health (when checked), or why it could
    not be probed."""

    host: str
    reachable: bool
    facts: HostFacts | None
    health: NodeHealth | None = None
    error: str | None = None
    unit: dict[str, str] | None = None
    """``node.service: systemd``: the unit's ActiveState, SubState, MainPID, NRestarts, UnitFileState."""


def status(inventory: Inventory, options: Options | None = None, *, health: bool = True) -> list[HostStatus]:
    """Probe the selected hosts (facts, and with ``health`` one try of the health check each, no
    waiting) in one SSH session per host; changes nothing."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    script = _status_script(inventory) if health else rc.probe(layout_for(inventory))
    with open_executor(inventory, options, "status") as executor:
        return _probe_rows(executor, names, script, health=health)


def _status_script(inventory: Inventory) -> Script:
    """The read-only probe with one try of the health check (and the unit's state under systemd)."""
    return oc.status(
        layout_for(inventory),
        flavour(inventory.config.app.flavour),
        health_check(inventory),
        service=service_for(inventory),
    )


def _probe_rows(executor: Executor, names: Sequence[str], script: Script, *, health: bool) -> list[HostStatus]:
    rows = []
    for host, (stdout, error) in executor.probe_each(names, script).items():
        if stdout is None:
            rows.append(HostStatus(host, False, None, None, error))
        else:
            unit = parse_unit_state(stdout) or None
            rows.append(
                HostStatus(host, True, parse_probe(stdout), parse_health(stdout) if health else None, unit=unit)
            )
    return rows


def status_with_balancer(
    inventory: Inventory, options: Options | None = None
) -> tuple[list[HostStatus], dict[str, dict[str, str]]]:
    """:func:`status` (with health) and each server's state in the load balancer, in one run: a balancer
    that is an inventory host is asked over the connection its status probe opened (one SSH connection
    per machine, not two)."""
    from deployer.operations.balancer import balancer_states  # balancer imports the engine as status does

    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    script = _status_script(inventory)
    with open_executor(inventory, options, "status") as executor:
        rows = _probe_rows(executor, names, script, health=True)
        states = balancer_states(inventory, options, run_on=lambda host, s: executor.run(host, s, check=False))
    return rows, states


def status_document(rows: Sequence[HostStatus]) -> dict[str, Any]:
    """``deployer status --json``: per host reachability, release, version, node pids, health, releases
    on disk, lock holder (and whether that lock is stale); ``mixed`` when reachable hosts run
    different releases; ``healthy`` when every reachable host with a release has a healthy node."""
    hosts = []
    for row in rows:
        f, health = row.facts, row.health
        lock = judge(f.lock, f.now) if f and f.lock else None
        hosts.append(
            {
                "host": row.host,
                "reachable": row.reachable,
                "error": row.error,
                "current": f.current_release if f else None,
                "version": f.current_version if f else None,
                "node_pids": list(f.node_pids) if f else [],
                # A hot upgrade leaves the node in its older release directory until it restarts.
                "hot_root": hot_root(f.history, f.current_release) if f else None,
                "running": bool(f and f.node_pids),
                "releases": [
                    {"release": r, "version": f.history.version(r), "status": f.history.status(r) or "unknown"}
                    for r in f.releases
                ]
                if f
                else [],
                "lock": describe_holder(f.lock, f.now) if f and f.lock else None,
                "lock_holder": f.lock.who if f and f.lock else None,
                "lock_stale": lock.stale if lock else None,
                "disk_free_kb": f.disk_free_kb if f else None,
                "health": health.state if health else None,
                "healthy": health.healthy if health else None,
                "health_error": health.error if health else None,
                "unit": _unit_document(row.unit),
            }
        )
    currents = {h["current"] for h in hosts if h["reachable"]}
    return {
        "hosts": hosts,
        "mixed": len(currents) > 1,
        "healthy": all(r.reachable and (r.health is None or r.health.healthy is not False) for r in rows),
    }


def _unit_document(unit: dict[str, str] | None) -> dict[str, Any] | None:
    """The unit's state as ``status --json`` shows it (None in daemon mode)."""
    if unit is None:
        return None

    def number(key: str) -> int | None:
        value = unit.get(key, "")
        return int(value) if value.isdigit() else None

    return {
        "active": unit.get("ActiveState"),
        "sub": unit.get("SubState"),
        "main_pid": number("MainPID") or None,
        "restarts": number("NRestarts"),
        "enabled": unit.get("UnitFileState"),
    }


RELEASE_STATUS = {"success": "good", "failed": "failed"}


def releases_document(rows: Sequence[HostStatus]) -> dict[str, Any]:
    """``deployer releases --json``: the releases on each host, oldest first, with version, status
    (good / failed / unknown, from revisions.log) and which one is current."""
    hosts = []
    for row in rows:
        facts = row.facts
        entries = []
        if facts is not None:
            for release in facts.releases:
                recorded = facts.history.status(release)
                entries.append(
                    {
                        "release": release,
                        "version": facts.history.version(release),
                        "status": RELEASE_STATUS.get(recorded or "", "unknown"),
                        "current": release == facts.current_release,
                    }
                )
        hosts.append(
            {
                "host": row.host,
                "reachable": row.reachable,
                "error": row.error,
                "current": facts.current_release if facts else None,
                "releases": entries,
            }
        )
    return {"hosts": hosts}
