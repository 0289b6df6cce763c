"""The Python API in one place: operations that touch hosts, their options and results, and extra
per-host steps at the engine's seams.

    from deployer import api
    from deployer.core.inventory import load_inventory

    drain = api.HostStep.shell("before_stop", "drain", "echo 'disable server app/web1' | socat - /run/haproxy.sock")
    ready = api.HostStep.shell("after_healthy", "ready", "echo 'enable server app/web1' | socat - /run/haproxy.sock")
    result = api.restart(load_inventory("prod"), api.Options(steps=[drain, ready]))
    assert result.report.ok

Steps run on every host of the operation, at their seam: ``before_stop`` before the host's node is
stopped (and again before a revert stops a failed node), ``after_healthy`` once its node passed the
health gate (after a stop: once it is down; and after a successful revert), ``revert`` when its
activation failed. A failing ``before_stop`` step leaves the host as it was (``aborted``); a failing
``after_healthy`` step is reported and does not undo a healthy host. This is the same for deploy,
rollback, revert, start, stop and restart.
"""

from __future__ import annotations

from deployer.core.inventory import Inventory
from deployer.core.plan import STEP_ROLES, HostStep, StepRole
from deployer.engine.run import Options, Result
from deployer.operations.node import check, lifecycle, status
from deployer.operations.release import deploy, migrate, rollback, unlock


def start(inventory: Inventory, options: Options | None = None) -> Result:
    """Start the node on the selected hosts (health-gated, in the strategy's batches)."""
    return lifecycle(inventory, "start", options)


def stop(inventory: Inventory, options: Options | None = None) -> Result:
    """Stop the node on the selected hosts, batch by batch."""
    return lifecycle(inventory, "stop", options)


def restart(inventory: Inventory, options: Options | None = None) -> Result:
    """Restart the node on the selected hosts (health-gated, in the strategy's batches)."""
    return lifecycle(inventory, "restart", options)


__all__ = [
    "STEP_ROLES",
    "HostStep",
    "Options",
    "Result",
    "StepRole",
    "check",
    "deploy",
    "lifecycle",
    "migrate",
    "restart",
    "rollback",
    "start",
    "status",
    "stop",
    "unlock",
]
