"""The engine's side of hot upgrades. A hot upgrade whose SSH link is lost: the engine waits for the
detached activation's outcome on the host, then judges the host from what it runs (hot-upgrade records
included), never a needless restart. And the hot upgrade's records carry the provenance a deploy's do."""

from __future__ import annotations

import copy
import io
import json
import re
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from deployer import __version__
from deployer.cli.render import history_document, print_history, print_plan
from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.config import HostConfig
from deployer.core.facts import parse_outcome, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.plan import HostPlan, HostStep, plan_rollback
from deployer.core.provenance import PREBUILT, Source
from deployer.engine import recovery
from deployer.engine.executor import Executor
from deployer.errors import ConnectError
from deployer.operations import upgrade as hot
from deployer.operations.release import Options
from deployer.operations.status import HostStatus
from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, FakeTransport, ok

from .helpers import BASE, inventory, release_tarball

OLD = "20261101000000-1.0.0"
ROOT = f"/srv/hello/releases/{OLD}"
NODE = f'{{deployer_node,"{ROOT}","4242",[{{"1.0.0",permanent}}],[]}}\n'
RELUP = '{"1.1.0",[{"1.0.0",[],[]}],[{"1.0.0",[],[]}]}.\n'


def rev(release: str, event: str, outcome: str = "success", when: str = "2026-11-01T00:00:00Z", **extra: str) -> str:
    return f"rev={when}\t" + json.dumps({"release": release, "event": event, "outcome": outcome, **extra})


def probe(current: str, *records: str, pids: str = "4242", releases: tuple[str, ...] = ()) -> str:
    lines = [
        "now=1800000000",
        "arch=x86_64",
        "exists=1",
        "writable=1",
        "disk_free_kb=99999999",
        "cookie=1",
        f"current=releases/{current}",
        f"release={OLD}",
        *(f"release={r}" for r in releases),
        rev(OLD, "deploy", version="1.0.0"),
        *records,
    ]
    if pids:
        lines.append(f"node_pid={pids}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    relup = tarfile.TarInfo("releases/1.1.0/relup")
    relup.size = len(RELUP)
    path = release_tarball(tmp_path / "hello-1.1.0.tar.gz", version="1.1.0")
    # release_tarball fills extra members with "x": add the relup with its real text instead.
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        tar.addfile(relup, io.BytesIO(RELUP.encode()))
    return inspect_tarball(path, "hello")


class Host:
    """One fake host whose hot upgrade loses its link at the activation, and goes on by itself."""

    def __init__(self, outcome: str, *, finishes: bool, records: tuple[str, ...] = ("hot-upgrade",)) -> None:
        self.outcome = outcome
        self.finishes = finishes
        self.records = records
        self.release: str | None = None

    def activate(self, script: Script) -> CommandResult:
        match = re.search(r"^rid=(\S+)$", script.render(), re.MULTILINE)
        assert match is not None
        self.release = match.group(1).strip("'")
        # The link drops while the host is installing: no exit status ever arrives.
        return CommandResult(-1, "", "@@step install\n", 0.0)

    def probe(self, script: Script) -> CommandResult:
        if self.release is None:
            return ok(probe(OLD))
        records = [rev(self.release, event, when="2027-01-15T08:00:00Z") for event in self.records if self.finishes]
        return ok(probe(self.release, *records, releases=(self.release,)))


def one_host(tmp_path: Path) -> tuple[Inventory, FakeFleet]:
    """A relx app on one fake host (web1) whose node runs 1.0.0 permanently from release OLD."""
    data = copy.deepcopy(BASE)
    data["app"]["flavour"] = "rebar3"
    data["hosts"] = data["hosts"][:1]
    fleet = FakeFleet(probe_output={"web1": probe(OLD)})
    fleet.responses["node-release"] = ok(NODE)
    return inventory(tmp_path, data), fleet


def upgrade(tmp_path: Path, artifact: Artifact, host: Host, outcome: str) -> tuple[FakeFleet, hot.Result]:
    inv, fleet = one_host(tmp_path)
    fleet.responses["hot-upgrade"] = host.activate
    fleet.responses["probe"] = host.probe
    fleet.responses["await-outcome"] = ok(outcome)
    return fleet, hot.upgrade(inv, artifact, Options(connector=fleet.connect))  # type: ignore[arg-type]


FINISHED = "run=finished\nstatus=0\nstep=permanent\nreason=\nfinished=1800000100\nout=hot_upgraded=4242\n"
FAILED = (
    "run=finished\nstatus=1\nstep=install\nreason=\nfinished=1800000100\n"
    "log=release_handler:install_release failed: {error,{code_change_failed,boom}}\n"
)


def test_a_hot_upgrade_the_host_finished_is_reported_upgraded_and_not_touched(
    tmp_path: Path, artifact: Artifact
) -> None:
    host = Host(FINISHED, finishes=True)
    fleet, result = upgrade(tmp_path, artifact, host, FINISHED)
    report = result.report
    assert report.operation == "upgrade"
    row = report.hosts[0]
    assert (row.outcome, row.after, row.known, row.error) == ("success", host.release, True, None)
    names = fleet.names("web1")
    assert names.index("hot-upgrade") < names.index("await-outcome") < names.index("probe")
    assert "revert" not in names  # no restart: the node kept its OS pid and runs the new version


def test_a_hot_upgrade_that_fell_back_to_a_restart_deploy_is_reported_deployed(
    tmp_path: Path, artifact: Artifact
) -> None:
    fell_back = FINISHED.replace("out=hot_upgraded=4242", "out=fallback=the node is no longer OS pid 4242")
    host = Host(fell_back, finishes=True, records=("deploy",))
    fleet, result = upgrade(tmp_path, artifact, host, fell_back)
    row = result.report.hosts[0]
    assert (row.outcome, row.after) == ("success", host.release)
    assert "revert" not in fleet.names("web1")


def test_a_hot_upgrade_whose_install_failed_on_its_own_is_reverted_with_the_real_cause(
    tmp_path: Path, artifact: Artifact
) -> None:
    host = Host(FAILED, finishes=False)
    fleet, result = upgrade(tmp_path, artifact, host, FAILED)
    row = result.report.hosts[0]
    assert row.outcome == "reverted" and row.step == "install"
    assert row.error is not None and "SSH connection" in row.error
    assert "the host went on alone and failed at install: release_handler:install_release failed" in row.error
    assert fleet.names("web1").count("revert") == 1


def test_a_hot_upgrade_refused_on_the_host_after_the_link_was_lost_is_aborted_with_its_cause(
    tmp_path: Path, artifact: Artifact
) -> None:
    refused = (
        "run=finished\nstatus=1\nstep=check-version\nreason=\nfinished=1800000100\n"
        "log=hot upgrade refused before the install: the node is no longer OS pid 4242 (running now: 5151)\n"
    )

    class Refused(Host):
        def probe(self, script: Script) -> CommandResult:
            return ok(probe(OLD))  # never switched: the node was not touched

    host = Refused(refused, finishes=False)
    fleet, result = upgrade(tmp_path, artifact, host, refused)
    row = result.report.hosts[0]
    assert (row.outcome, row.after, row.step) == ("aborted", OLD, "check-version")
    assert "failed at check-version: hot upgrade refused before the install: the node is no longer" in (row.error or "")
    assert "revert" not in fleet.names("web1") and "abort" in fleet.names("web1")


def test_a_hot_upgrade_still_running_past_its_deadline_is_never_raced_by_a_revert(
    tmp_path: Path, artifact: Artifact
) -> None:
    host = Host("run=running\n", finishes=False)
    fleet, result = upgrade(tmp_path, artifact, host, "run=running\n")
    row = result.report.hosts[0]
    assert row.outcome == "failed" and row.known and row.after == host.release
    assert row.error is not None and "still runs on the host" in row.error
    assert "revert" not in fleet.names("web1")


def test_the_outcome_is_read_even_when_the_first_reconnects_fail(
    tmp_path: Path, artifact: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = Host(FINISHED, finishes=True)
    inv, fleet = one_host(tmp_path)
    fleet.responses["probe"] = host.probe
    fleet.responses["await-outcome"] = ok(FINISHED)
    transports: list[FakeTransport] = []
    refusals = {"left": 2}

    def connect(config: HostConfig) -> FakeTransport:
        if fleet.unreachable and refusals["left"]:
            refusals["left"] -= 1
            if not refusals["left"]:
                fleet.unreachable.clear()  # the link is back
            raise ConnectError(config.name, "cannot connect to 10.0.0.1:22: No route to host")
        transports.append(fleet.connect(config))
        return transports[-1]

    def lose_link(script: Script) -> CommandResult:
        for transport in transports:
            transport.closed = True
        fleet.unreachable.add("web1")
        return host.activate(script)

    fleet.responses["hot-upgrade"] = lose_link
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    report = hot.upgrade(inv, artifact, Options(connector=connect)).report  # type: ignore[arg-type]
    row = report.hosts[0]
    assert (row.outcome, row.after, row.error) == ("success", host.release, None)
    assert refusals["left"] == 0 and "await-outcome" in fleet.names("web1") and "revert" not in fleet.names("web1")


def _plan(before: str | None = OLD, target: str = "20270115080000-1.1.0") -> HostPlan:
    revert = HostStep("revert", Script(name="revert", parts=("true\n",)))
    return HostPlan(host="web1", before=before, target=target, steps=(revert,), node_pids=(4242,))


@pytest.mark.parametrize(
    ("kind", "event", "decision"),
    [
        ("upgrade", "hot-upgrade", "success"),
        ("upgrade", "deploy", "success"),  # fell back to a restart deploy on the host
        ("upgrade", "rollback", "revert"),
        ("deploy", "hot-upgrade", "revert"),  # a deploy is done only when it recorded a deploy
        ("rollback", "hot-downgrade", "success"),
        ("rollback", "rollback", "success"),
    ],
)
def test_decide_knows_which_records_finish_which_operation(kind: str, event: str, decision: str) -> None:
    target = "20270115080000-1.1.0"
    now = parse_probe(probe(target, rev(target, event, when="2027-01-15T08:00:00Z"), releases=(target,)))
    assert recovery.decide(_plan(target=target), kind, now, since=1800000000) == decision


def test_decide_ignores_a_record_older_than_this_run() -> None:
    target = "20270115080000-1.1.0"
    old = rev(target, "hot-upgrade", when="2026-01-01T00:00:00Z")
    now = parse_probe(probe(target, old, releases=(target,)))
    assert recovery.decide(_plan(target=target), "upgrade", now, since=1800000000) == "revert"


def test_describe_run_says_where_the_lone_run_ended() -> None:
    assert recovery.describe_run(parse_outcome(FAILED)) == (
        "the host went on alone and failed at install: "
        "release_handler:install_release failed: {error,{code_change_failed,boom}}"
    )
    assert recovery.describe_run(parse_outcome(FINISHED)) == "the host went on alone and finished the activation"
    deadline = "run=finished\nstatus=124\nstep=health\nreason=deadline\nfinished=1\n"
    assert recovery.describe_run(parse_outcome(deadline)) == (
        "the host went on alone and failed at health: ended at its own deadline (exit status 124)"
    )
    assert recovery.describe_run(parse_outcome("run=missing\n")) == "the activation never started on the host"


# --- provenance of the hot upgrade's records ------------------------------------------------------------------

COMMIT = "3f2a9c1d0b7e4a5f6e7d8c9b0a1f2e3d4c5b6a79"


def _records(script: Script) -> list[dict[str, str]]:
    """The revisions.log records a script appends, as the host will write them."""
    return [json.loads(m) for m in re.findall(r"'(\{\"[^']*\})'", script.render())]


def test_hot_upgrade_records_carry_the_deployer_version_and_the_commit_and_history_shows_them(
    tmp_path: Path, artifact: Artifact
) -> None:
    inv, fleet = one_host(tmp_path)
    built = replace(artifact, source=Source(COMMIT, dirty=True))
    result = hot.upgrade(inv, built, Options(connector=fleet.connect, dry_run=True))  # type: ignore[arg-type]
    assert result.plan is not None and result.plan.kind == "upgrade"
    host_plan = result.plan.host("web1")
    success, revert = _records(host_plan.activate), host_plan.revert
    assert [r["event"] for r in success] == ["hot-upgrade"]
    assert revert is not None
    failed, reverted = _records(revert)
    for entry in (*success, failed):
        assert (entry["deployer"], entry["commit"], entry["dirty"]) == (__version__, COMMIT, "yes"), entry
    assert (failed["event"], failed["outcome"]) == ("hot-upgrade", "failed")
    assert (reverted["event"], reverted["deployer"]) == ("revert", __version__)

    # `deployer history` shows them like a deploy's.
    line = "rev=2027-01-15T08:00:00Z\t" + json.dumps(success[0])
    rows = [HostStatus("web1", True, parse_probe(probe(success[0]["release"], line)))]
    shown = history_document(rows, "test")["hosts"][0]["revisions"][-1]
    assert (shown["event"], shown["commit"], shown["dirty"], shown["deployer"]) == (
        "hot-upgrade",
        COMMIT,
        True,
        __version__,
    )
    buffer = io.StringIO()
    print_history(Console(file=buffer, width=300), rows)
    assert f"from {COMMIT[:12]} (dirty)  deployer {__version__}" in buffer.getvalue()


def test_a_fallback_restart_deploy_and_a_hot_downgrade_record_their_provenance(
    tmp_path: Path, artifact: Artifact
) -> None:
    inv, fleet = one_host(tmp_path)
    built = replace(artifact, source=Source(note=PREBUILT))
    options = Options(connector=fleet.connect, dry_run=True)  # type: ignore[arg-type]
    plan = hot.upgrade(inv, built, options, fallback="restart").plan
    assert plan is not None
    entries = _records(plan.host("web1").activate)
    assert [(r["event"], r["source"], r["deployer"]) for r in entries] == [
        ("deploy", PREBUILT, __version__),  # the fallback's, written first in the script
        ("hot-upgrade", PREBUILT, __version__),
    ]

    # A rollback of a hot-upgraded node downgrades in place and records where its target came from.
    new = "20270115080000-1.1.0"
    upgraded = rev(new, "hot-upgrade", root=OLD, version="1.1.0", when="2027-01-15T08:00:00Z")
    built_v1 = rev(OLD, "deploy", version="1.0.0", commit=COMMIT)
    text = probe(new, upgraded, releases=(new,)).replace(rev(OLD, "deploy", version="1.0.0"), built_v1)
    facts = {"web1": parse_probe(text)}
    fleet = FakeFleet()
    fleet.responses["node-release"] = ok(
        f'{{deployer_node,"{ROOT}","4242",[{{"1.1.0",permanent}},{{"1.0.0",old}}],["1.0.0"]}}\n'
    )
    with Executor(inv, fleet.connect) as executor:  # type: ignore[arg-type]
        rollback = hot.hot_rollback(executor, inv, plan_rollback(inv, facts, who="me@here"), facts)
    down = _records(rollback.host("web1").activate)
    assert [(r["event"], r["commit"], r["deployer"]) for r in down] == [("hot-downgrade", COMMIT, __version__)]


def test_the_dry_run_shows_an_upgrade_with_its_own_phases(tmp_path: Path, artifact: Artifact) -> None:
    inv, fleet = one_host(tmp_path)
    plan = hot.upgrade(inv, artifact, Options(connector=fleet.connect, dry_run=True)).plan  # type: ignore[arg-type]
    assert plan is not None
    buffer = io.StringIO()
    print_plan(Console(file=buffer, width=300), plan)
    text = buffer.getvalue()
    assert f"Plan: upgrade in test, release {plan.release_id} (version 1.1.0)" in text
    assert "upload -> prepare -> migrate once on web1 -> per batch: switch, install in the running node" in text
