"""The executor over a fake transport: ordering, exactly-once migration, abort, revert, locks, masking."""

from __future__ import annotations

import copy
import json
import re
import threading
from pathlib import Path

import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.facts import parse_probe
from deployer.core.inventory import Inventory
from deployer.core.plan import batches, plan_rollback
from deployer.errors import PlanError
from deployer.operations import release as api
from deployer.remote.release import EXIT_UNHEALTHY
from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, fail, ok

from .helpers import BASE, inventory, release_tarball

SECRET = "s3cr3t-sentinel-value"
OLD = "20261101000000-0.1.0"
OLDER = "20261001000000-0.0.9"


def rev(release: str, outcome: str = "success", version: str = "0.1.0") -> str:
    return "rev=2026-11-01T00:00:00Z\t" + json.dumps(
        {"release": release, "outcome": outcome, "event": "deploy", "version": version}
    )


def deployed_probe(artifact_sha: str | None = None) -> str:
    lines = [
        "now=1",
        "arch=x86_64",
        "exists=1",
        "writable=1",
        "disk_free_kb=99999999",
        "cookie=1",
        f"current=releases/{OLD}",
        f"release={OLDER}",
        f"release={OLD}",
        rev(OLDER, version="0.0.9"),
        rev(OLD),
    ]
    if artifact_sha:
        lines.append(f"artifact={artifact_sha}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(tmp_path, secret=SECRET)


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")


def fleet_with(probe: str | None = None, **responses: object) -> FakeFleet:
    fleet = FakeFleet(probe_output={h: probe or deployed_probe() for h in ("web1", "web2", "web3")})
    fleet.responses.update(responses)  # type: ignore[arg-type]
    return fleet


def switched_probe(release: str, pids: str = "") -> str:
    """What a host reports after it switched to ``release`` (and, with ``pids``, runs a node)."""
    text = deployed_probe().replace(f"current=releases/{OLD}", f"current=releases/{release}")
    return text + f"release={release}\n" + (f"node_pid={pids}\n" if pids else "")


def fail_after_switch(fleet: FakeFleet, host: str, step: str = "health", message: str = "not healthy") -> None:
    """``host``'s activation switches ``current`` and then fails; a probe afterwards shows the switch."""
    state: dict[str, str] = {}

    def activate(script: Script) -> CommandResult:
        match = re.search(r"^rid=(\S+)$", script.render(), re.MULTILINE)
        assert match is not None
        state["current"] = match.group(1).strip("'")
        return fail(step, message, EXIT_UNHEALTHY)

    def probe(script: Script) -> CommandResult:
        return ok(switched_probe(state["current"]) if state else deployed_probe())

    fleet.responses[(host, "activate")] = activate
    fleet.responses[(host, "probe")] = probe


def run_deploy(inv: Inventory, artifact: Artifact, fleet: FakeFleet, **options: object) -> api.Result:
    return api.deploy(inv, artifact, api.Options(connector=fleet.connect, **options))  # type: ignore[arg-type]


def test_happy_deploy_runs_phases_in_order_and_migrates_once(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with()
    result = run_deploy(inv, artifact, fleet)
    report = result.report
    assert report.ok, report.error
    assert report.migrated_on == "web1"
    assert fleet.names().count("migrate") == 1
    assert fleet.names("web1") == ["lock+probe", "upload", "prepare", "migrate", "activate", "unlock"]
    assert fleet.names("web2") == ["lock+probe", "upload", "prepare", "activate", "unlock"]
    # The first host is locked alone before any other host is touched.
    assert fleet.calls[0][:2] == ("web1", "lock+probe")
    # Migration runs after every host prepared and before any host activates.
    names = [(h, n) for h, n, _ in fleet.calls]
    assert names.index(("web1", "migrate")) > max(names.index((h, "prepare")) for h in ("web1", "web2", "web3"))
    assert names.index(("web1", "migrate")) < min(names.index((h, "activate")) for h in ("web1", "web2", "web3"))
    for host in report.hosts:
        assert host.outcome == "success" and host.before == OLD and host.after == report.release
    assert report.release is not None and report.release.endswith("-0.2.0")


def test_upload_is_skipped_when_the_host_has_the_artifact(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with(deployed_probe(artifact.sha256))
    report = run_deploy(inv, artifact, fleet).report
    assert report.ok
    assert "upload" not in fleet.names()
    assert all(h.uploaded_bytes == 0 for h in report.hosts)


def test_upload_failure_aborts_before_any_switch(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with(**{"web2": None})
    fleet.responses[("web2", "upload")] = fail("upload", "checksum mismatch after upload")
    report = run_deploy(inv, artifact, fleet).report
    assert not report.ok
    assert "activate" not in fleet.names() and "migrate" not in fleet.names()
    assert sorted(h for h, n, _ in fleet.calls if n == "abort") == ["web1", "web2", "web3"]
    assert sorted(h for h, n, _ in fleet.calls if n == "unlock") == ["web1", "web2", "web3"]
    assert {h.outcome for h in report.hosts} == {"aborted"}
    assert all(h.after == OLD for h in report.hosts)
    assert "checksum mismatch" in (report.error or "")
    assert "every host still runs its previous release" in (report.error or "")


def test_failed_migration_switches_nothing(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with(migrate=fail("migrate", "** (RuntimeError) boom"))
    report = run_deploy(inv, artifact, fleet).report
    assert not report.ok
    assert fleet.names().count("migrate") == 1
    assert "activate" not in fleet.names()
    assert "migration failed on web1" in (report.error or "")
    assert all(h.after == OLD for h in report.hosts)


def test_unhealthy_host_is_reverted_and_the_rollout_stops(tmp_path: Path, artifact: Artifact) -> None:
    data = copy.deepcopy(BASE)
    data["strategy"] = {"kind": "rolling", "batch_size": 1}
    inv = inventory(tmp_path, data, secret=SECRET)
    fleet = fleet_with()
    fail_after_switch(fleet, "web2", "health", "the node exited while starting")
    report = run_deploy(inv, artifact, fleet).report
    by_host = {h.host: h for h in report.hosts}
    assert by_host["web1"].outcome == "success"
    assert by_host["web2"].outcome == "reverted" and by_host["web2"].after == OLD
    assert by_host["web2"].step == "health" and "exited while starting" in (by_host["web2"].error or "")
    assert by_host["web3"].outcome == "untouched" and by_host["web3"].after == OLD
    assert "activate" not in fleet.names("web3")
    assert "abort" in fleet.names("web3")  # its prepared release does not linger
    assert "revert" in fleet.names("web2")
    assert report.mixed and not report.ok
    assert any("max_fail 0" in w for w in report.warnings)


def test_max_fail_lets_the_rollout_continue(tmp_path: Path, artifact: Artifact) -> None:
    data = copy.deepcopy(BASE)
    data["strategy"] = {"kind": "rolling", "batch_size": 1, "max_fail": 1}
    inv = inventory(tmp_path, data, secret=SECRET)
    fleet = fleet_with()
    fail_after_switch(fleet, "web1")
    report = run_deploy(inv, artifact, fleet).report
    assert [h.outcome for h in report.hosts] == ["reverted", "success", "success"]


def test_lock_held_on_first_host_touches_nothing_else(inv: Inventory, artifact: Artifact) -> None:
    held = deployed_probe() + 'lock={"who": "bob", "host": "ci", "pid": 5, "operation": "deploy", "since": 1}\n'
    fleet = fleet_with()
    fleet.probe_output = {**fleet.probe_output, "web1": held}
    report = run_deploy(inv, artifact, fleet).report
    assert not report.ok
    assert [h for h, _, _ in fleet.calls] == ["web1"]
    assert "bob@ci (pid 5) running deploy" in (report.error or "")
    assert "deployer unlock --env test" in (report.error or "")


def test_lock_held_on_a_later_host_releases_ours(inv: Inventory, artifact: Artifact) -> None:
    held = deployed_probe() + 'lock={"who": "bob", "since": 1}\n'
    fleet = fleet_with()
    fleet.probe_output = {**fleet.probe_output, "web3": held}
    report = run_deploy(inv, artifact, fleet).report
    assert not report.ok
    assert sorted(h for h, n, _ in fleet.calls if n == "unlock") == ["web1", "web2"]
    assert "prepare" not in fleet.names()


def test_unreachable_host_changes_nothing(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with()
    fleet.unreachable = {"web2"}
    report = run_deploy(inv, artifact, fleet).report
    assert not report.ok
    assert "Connection refused" in (report.error or "")
    assert {n for _, n, _ in fleet.calls} <= {"lock+probe", "unlock"}
    assert {h.host: h.outcome for h in report.hosts}["web2"] == "unreachable"


def test_cancel_before_activation_undoes_and_unlocks(inv: Inventory, artifact: Artifact) -> None:
    cancel = threading.Event()
    fleet = fleet_with()

    def cancel_during_migrate(script: object) -> object:
        cancel.set()
        return ok()

    fleet.responses["migrate"] = cancel_during_migrate  # type: ignore[assignment]
    report = run_deploy(inv, artifact, fleet, cancel=cancel).report
    assert report.interrupted and not report.ok
    assert "activate" not in fleet.names()
    assert fleet.names().count("abort") == 3 and fleet.names().count("unlock") == 3


def test_secrets_never_reach_the_log_or_the_report(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with(prepare=fail("write-env", f"oops {SECRET} leaked in stderr"))
    report = run_deploy(inv, artifact, fleet).report
    assert SECRET not in json.dumps(report.to_json())
    assert all(SECRET not in text for _, _, text in fleet.calls)
    assert any("********" in text for _, n, text in fleet.calls if n == "prepare")


def test_dry_run_only_probes(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with()
    result = run_deploy(inv, artifact, fleet, dry_run=True)
    assert set(fleet.names()) == {"probe"}
    assert result.plan is not None and result.report.dry_run
    assert SECRET not in result.plan.host("web1").prepare.render()  # type: ignore[union-attr]


def test_rollback_targets_previous_good(inv: Inventory) -> None:
    fleet = fleet_with()
    result = api.rollback(inv, None, api.Options(connector=fleet.connect))
    assert result.report.ok
    assert all(h.after == OLDER for h in result.report.hosts)
    assert "prepare" not in fleet.names() and "migrate" not in fleet.names()


def test_rollback_refuses_without_a_previous_release(inv: Inventory) -> None:
    facts = {h: parse_probe(f"current=releases/{OLD}\nrelease={OLD}\n{rev(OLD)}\n") for h in ("web1", "web2")}
    with pytest.raises(PlanError, match="web1: no previous good release"):
        plan_rollback(inv, facts, who="t")
    with pytest.raises(PlanError, match="release 'nope' is not on this host"):
        plan_rollback(inv, facts, who="t", to="nope")


def test_batches(inv: Inventory) -> None:
    hosts = [f"h{i}" for i in range(1, 9)]
    assert batches(hosts, inv) == [hosts]
    assert batches(hosts, inv, {"kind": "rolling", "batch_size": 3}) == [hosts[:3], hosts[3:6], hosts[6:]]
    assert batches(hosts, inv, {"kind": "rolling", "batch_size": "25%", "canary": True}) == [
        ["h1"],
        ["h2", "h3"],
        ["h4", "h5"],
        ["h6", "h7"],
        ["h8"],
    ]
    assert batches(hosts, inv, {"canary": True}) == [["h1"], hosts[1:]]


def test_rollback_warns_when_the_schema_is_newer_than_the_target(inv: Inventory) -> None:
    migrated = "rev=2026-11-01T00:00:01Z\t" + json.dumps(
        {"release": OLD, "outcome": "success", "event": "migrate", "version": "0.1.0"}
    )
    fleet = fleet_with(deployed_probe() + migrated + "\n")
    result = api.rollback(inv, None, api.Options(connector=fleet.connect))
    assert result.report.ok
    assert any(f"last migrated by {OLD}" in w and f"newer than {OLDER}" in w for w in result.report.warnings)


def test_no_schema_warning_when_the_target_migrated_last(inv: Inventory) -> None:
    migrated = "rev=2026-11-01T00:00:01Z\t" + json.dumps(
        {"release": OLDER, "outcome": "success", "event": "migrate", "version": "0.0.9"}
    )
    fleet = fleet_with(deployed_probe() + migrated + "\n")
    assert api.rollback(inv, None, api.Options(connector=fleet.connect)).report.warnings == []


def test_cancel_during_upload_stops_and_undoes(inv: Inventory, artifact: Artifact) -> None:
    cancel = threading.Event()
    cancel.set()  # the operator pressed Ctrl-C before the upload could finish
    fleet = fleet_with()
    report = run_deploy(inv, artifact, fleet, cancel=cancel).report
    assert report.interrupted and not report.ok
    assert "prepare" not in fleet.names() and "activate" not in fleet.names()
    assert fleet.names().count("unlock") == 3
    assert all(h.after == OLD for h in report.hosts)


def test_lost_connection_is_replaced_for_cleanup(inv: Inventory, artifact: Artifact) -> None:
    fleet = fleet_with()
    transports: list[object] = []
    original = fleet.connect

    def connect(host: object) -> object:
        transport = original(host)  # type: ignore[arg-type]
        transports.append(transport)
        return transport

    def drop_link(script: object) -> object:
        for transport in transports:
            if transport.name == "web2":  # type: ignore[attr-defined]
                transport.closed = True  # type: ignore[attr-defined]
        return fail("extract", "tar: Unexpected EOF in archive")

    fleet.responses[("web2", "prepare")] = drop_link  # type: ignore[assignment]
    report = api.deploy(inv, artifact, api.Options(connector=connect)).report  # type: ignore[arg-type]
    assert not report.ok
    assert [t.name for t in transports].count("web2") == 2  # type: ignore[attr-defined]
    assert "abort" in fleet.names("web2") and "unlock" in fleet.names("web2")


def test_migration_records_do_not_make_a_release_good() -> None:
    from deployer.core.history import History

    lines = [
        "t\t" + json.dumps({"release": "r1", "event": "deploy", "outcome": "success"}),
        "t\t" + json.dumps({"release": "r2", "event": "migrate", "outcome": "success"}),
        "t\t" + json.dumps({"release": "r2", "event": "deploy", "outcome": "failed"}),
        "t\t" + json.dumps({"release": "r3", "event": "migrate", "outcome": "success"}),
    ]
    history = History.from_lines(lines)
    assert history.status("r2") == "failed" and history.status("r3") is None
    assert history.good(["r1", "r2", "r3"]) == ["r1"]
    assert history.last_migration() is not None and history.last_migration().release == "r3"  # type: ignore[union-attr]


def test_stale_lock_from_this_machine_is_called_stale() -> None:
    import socket
    import subprocess as sp

    from deployer.core.facts import LockInfo
    from deployer.engine.locks import describe_holder

    dead = sp.Popen(["true"])
    dead.wait()
    info = LockInfo.parse(
        json.dumps({"who": "ops", "host": socket.gethostname(), "pid": dead.pid, "operation": "deploy", "since": 1})
    )
    assert describe_holder(info).endswith("that process no longer exists: the lock is stale")
    alive = LockInfo.parse(json.dumps({"who": "ops", "host": socket.gethostname(), "pid": 1, "since": 1}))
    assert "stale" not in describe_holder(alive)


def test_console_output_never_interprets_remote_text_as_markup() -> None:
    import io

    from rich.console import Console

    from deployer.cli.render import ConsoleEvents, print_report
    from deployer.core.outcome import HostResult, Report

    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    events = ConsoleEvents(console, verbose=True)
    events.step("web1", "upload", "stopped", "tar: [/] closing tag [bold]x")
    events.warning("[/] weird")
    report = Report(
        "deploy",
        "prod",
        None,
        None,
        [HostResult("web1", outcome="aborted", error="[/red] boom")],
        error="stderr said [/]",
    )
    print_report(console, report)
    text = buffer.getvalue()
    assert "tar: [/] closing tag [bold]x" in text and "stderr said [/]" in text and "[/red] boom" in text


def test_dry_run_without_secret_values_still_shows_them_masked(tmp_path: Path, artifact: Artifact) -> None:
    from deployer.core.inventory import load_inventory

    from .helpers import write_inventory

    write_inventory(tmp_path / "inv", BASE)
    inv = load_inventory("test", tmp_path / "inv", environ={}, resolve_secrets=False)
    fleet = fleet_with()
    result = run_deploy(inv, artifact, fleet, dry_run=True)
    prepare = result.plan.host("web1").prepare.render()  # type: ignore[union-attr]
    assert "HELLO_SECRET=********" in prepare
    assert "not resolved" not in prepare
