"""Per-host steps at the engine's seams: the same for deploy, rollback, revert, restart, start and stop.

The executor runs whatever the plan holds: a custom ``before_stop`` step runs before the step that stops
the node, an ``after_healthy`` step after the step that passed the health gate, on every host.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deployer import api
from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.inventory import Inventory
from deployer.remote.release import EXIT_UNHEALTHY
from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, fail, ok

from .helpers import inventory, release_tarball

OLD = "20261101000000-0.1.0"
OLDER = "20261001000000-0.0.9"
HOSTS = ("web1", "web2", "web3")
DRAIN = api.HostStep.shell("before_stop", "drain", "echo drain")
READY = api.HostStep.shell("after_healthy", "ready", "echo ready")


def rev(release: str) -> str:
    return "rev=2026-11-01T00:00:00Z\t" + json.dumps(
        {"release": release, "outcome": "success", "event": "deploy", "version": release.split("-", 1)[1]}
    )


def probe(current: str = OLD) -> str:
    lines = ["now=1800000000", "exists=1", "writable=1", "cookie=1", "node_pid=100", f"current=releases/{current}"]
    return "\n".join([*lines, f"release={OLDER}", f"release={OLD}", rev(OLDER), rev(OLD)]) + "\n"


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(tmp_path)


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")


def fleet() -> FakeFleet:
    return FakeFleet(probe_output={h: probe() for h in HOSTS})


def options(fake: FakeFleet) -> api.Options:
    return api.Options(connector=fake.connect, steps=[READY, DRAIN])  # given out of order on purpose


def around(fake: FakeFleet, host: str, step: str) -> list[str]:
    """The scripts run on ``host`` from the first drain on."""
    names = fake.names(host)
    return names[names.index("drain") : names.index("unlock")] if "drain" in names else names


@pytest.mark.parametrize("operation", ["deploy", "rollback", "restart", "start", "stop"])
def test_steps_run_at_their_seams_on_every_host(inv: Inventory, artifact: Artifact, operation: str) -> None:
    fake = fleet()
    if operation == "deploy":
        result = api.deploy(inv, artifact, options(fake))
    elif operation == "rollback":
        result = api.rollback(inv, None, options(fake))
    else:
        result = api.lifecycle(inv, operation, options(fake))  # type: ignore[arg-type]
    assert result.report.ok, result.report.error
    step = {"deploy": "activate", "rollback": "activate"}.get(operation, operation)
    for host in HOSTS:
        assert around(fake, host, step) == ["drain", step, "ready"], fake.names(host)


def test_a_revert_is_drained_before_and_made_ready_after(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    state: dict[str, str] = {}

    def activate(script: Script) -> CommandResult:
        state["rid"] = re.search(r"^rid=(\S+)$", script.render(), re.MULTILINE).group(1)  # type: ignore[union-attr]
        return fail("health", "the node exited while starting", EXIT_UNHEALTHY)

    fake.responses[("web2", "activate")] = activate
    fake.responses[("web2", "probe")] = lambda script: ok(probe(state["rid"]))
    report = api.deploy(inv, artifact, options(fake)).report
    assert {h.host: h.outcome for h in report.hosts}["web2"] == "reverted"
    # No "ready" after the failed activation: the server stays drained until the revert is healthy.
    assert around(fake, "web2", "activate") == ["drain", "activate", "probe", "drain", "revert", "ready"]


def test_a_failing_before_stop_step_leaves_the_host_alone(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    fake.responses[("web1", "drain")] = fail("drain", "haproxy: no such server")
    report = api.deploy(inv, artifact, options(fake)).report
    web1 = {h.host: h for h in report.hosts}["web1"]
    assert (web1.outcome, web1.after, web1.step) == ("aborted", OLD, "drain")
    assert "activate" not in fake.names("web1") and "abort" in fake.names("web1")
    assert not report.ok


def test_a_failing_after_healthy_step_is_reported_without_undoing_the_host(inv: Inventory) -> None:
    fake = fleet()
    fake.responses[("web3", "ready")] = fail("ready", "haproxy: socket refused")
    report = api.restart(inv, options(fake)).report
    web3 = {h.host: h for h in report.hosts}["web3"]
    assert (web3.outcome, web3.healthy, web3.step) == ("success", True, "ready")
    assert "socket refused" in (web3.error or "") and "left as it is" in (web3.error or "")
    assert "revert" not in fake.names("web3") and not report.ok


def test_dry_run_lists_the_steps(inv: Inventory) -> None:
    result = api.restart(inv, api.Options(connector=fleet().connect, steps=[DRAIN, READY], dry_run=True))
    assert result.plan is not None
    labels = [label for label, _ in result.plan.listing(result.plan.host("web1"))]
    assert labels == ["before the node stops: drain", "restart", "after the node is healthy: ready"]


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown step role"):
        api.HostStep.shell("whenever", "x", "true")  # type: ignore[arg-type]
