"""Reports that tell the truth (issues 13 and 15), over the fake transport: refused runs, lost links,
migration causes, the environment's one cookie, masking of streamed output, one vocabulary, the
rollback schema warning, stale and live locks."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.facts import parse_probe
from deployer.core.inventory import Inventory
from deployer.core.plan import schema_warnings
from deployer.engine.executor import Executor
from deployer.engine.masking import Masker
from deployer.errors import LockedError, RemoteCommandError
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.remote.release import EXIT_UNHEALTHY
from deployer.remote.shell import MASK, Script
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, FakeTransport, fail, ok

from .helpers import BASE, inventory, release_tarball

SECRET = "s3cr3t-sentinel-value"
OLD = "20261101000000-0.1.0"
OLDER = "20261001000000-0.0.9"
HOSTS = ("web1", "web2", "web3")


def rev(release: str, event: str = "deploy", outcome: str = "success", **extra: str) -> str:
    return "rev=2026-11-01T00:00:00Z\t" + json.dumps(
        {"release": release, "outcome": outcome, "event": event, "version": release.split("-", 1)[1], **extra}
    )


def probe(current: str = OLD, *, cookie: bool = True, pids: str = "100", extra: str = "") -> str:
    lines = ["now=1800000000", "arch=x86_64", "exists=1", "writable=1", "disk_free_kb=99999999"]
    lines += [f"current=releases/{current}", f"release={OLDER}", f"release={OLD}", rev(OLDER), rev(OLD)]
    if current not in (OLD, OLDER):
        lines.append(f"release={current}")
    if cookie:
        lines.append("cookie=1")
    if pids:
        lines.append(f"node_pid={pids}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(tmp_path, secret=SECRET)


@pytest.fixture
def artifact(tmp_path: Path) -> Artifact:
    return inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")


def fleet() -> FakeFleet:
    return FakeFleet(probe_output={h: probe() for h in HOSTS})


def target_of(script: Script) -> str:
    match = re.search(r"^rid=(\S+)$", script.render(), re.MULTILINE)
    assert match is not None
    return match.group(1).strip("'")


def rolling(tmp_path: Path) -> Inventory:
    data = copy.deepcopy(BASE)
    data["strategy"] = {"kind": "rolling", "batch_size": 1}
    return inventory(tmp_path, data, secret=SECRET)


# --- a refused run ---------------------------------------------------------------------------------------


def test_a_deploy_refused_at_the_lock_is_not_called_mixed(inv: Inventory, artifact: Artifact) -> None:
    """Hosts never probed say nothing about the fleet: every host runs the same release here."""
    fake = fleet()
    held = {"who": "bob", "host": "ci", "pid": 5, "operation": "deploy", "since": 1}
    fake.probe_output = {**fake.probe_output, "web1": probe() + f"lock={json.dumps(held)}\n"}
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    assert not report.ok and not report.mixed and report.to_json()["mixed"] is False
    assert "bob@ci (pid 5) running deploy" in (report.error or "")
    assert {h.outcome for h in report.hosts} == {"untouched"}
    assert [h.known for h in report.hosts] == [True, False, False]


# --- a lost connection during activation -------------------------------------------------------------------


def lose_link_after(fake: FakeFleet, host: str, *, recorded: bool, pids: str = "200") -> dict[str, str]:
    """``host``'s activation switches (and with ``recorded`` finishes: health passed, success recorded), then
    the link drops before the result arrives; later probes show what the host really did."""
    state: dict[str, str] = {}

    def activate(script: Script) -> CommandResult:
        state["current"] = target_of(script)
        raise RemoteCommandError(host, "health", "the SSH connection was lost while the step ran")

    def reprobe(script: Script) -> CommandResult:
        target = state["current"]
        record = rev(target, "deploy", "success").replace("2026-11-01T00:00:00Z", "2027-01-15T08:00:00Z")
        return ok(probe(target, pids=pids, extra=(record + "\n") if recorded else ""))

    fake.responses[(host, "activate")] = activate
    fake.responses[(host, "probe")] = reprobe
    return state


def test_a_link_lost_after_the_host_finished_is_a_success_not_a_revert(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    state = lose_link_after(fake, "web2", recorded=True)
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert "revert" not in fake.names("web2"), "the last @@step marker decided, not the host"
    assert (web2.outcome, web2.after, web2.healthy, web2.error) == ("success", state["current"], True, None)
    assert report.ok and not report.mixed


@pytest.fixture
def no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake hosts never finish an activation later: do not wait for them to."""
    monkeypatch.setattr(Executor, "settle_seconds", lambda self: 0.0)


def test_a_link_lost_after_the_switch_waits_for_the_host_to_finish(inv: Inventory, artifact: Artifact) -> None:
    """The activation was still in its health gate when the link dropped: it finishes and records success
    a little later; the engine waits for that instead of racing it with a revert."""
    fake = fleet()
    state = lose_link_after(fake, "web2", recorded=False)
    probes = {"n": 0}
    late = fake.responses[("web2", "probe")]

    def finishes_later(script: Script) -> CommandResult:
        probes["n"] += 1
        if probes["n"] < 2:
            return late(script)  # type: ignore[operator,no-any-return]
        record = rev(state["current"]).replace("2026-11-01T00:00:00Z", "2027-01-15T08:00:00Z")
        return ok(probe(state["current"], pids="200", extra=record + "\n"))

    fake.responses[("web2", "probe")] = finishes_later
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert "revert" not in fake.names("web2") and probes["n"] == 2
    assert (web2.outcome, web2.after) == ("success", state["current"])


@pytest.mark.usefixtures("no_settling")
def test_a_link_lost_after_the_switch_reverts_and_says_what_the_host_runs(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    lose_link_after(fake, "web2", recorded=False)
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert fake.names("web2")[-3:] == ["probe", "revert", "unlock"]
    assert (web2.outcome, web2.after, web2.step) == ("reverted", OLD, "health")
    assert "connection was lost" in (web2.error or "")


@pytest.mark.usefixtures("no_settling")
def test_a_revert_that_loses_its_link_too_reports_what_the_host_now_runs(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    state = lose_link_after(fake, "web2", recorded=False, pids="")
    fake.responses[("web2", "revert")] = RemoteCommandError("web2", "start", "the SSH connection was lost")
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert (web2.outcome, web2.after, web2.known) == ("failed", state["current"], True)
    line = web2.error or ""
    assert "revert also failed at start" in line and f"now runs {state['current']}, no node running" in line
    assert "\n" not in line  # one line per host


def test_an_unreachable_host_after_a_lost_link_is_unknown_not_mixed(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    lose_link_after(fake, "web2", recorded=False)
    fake.responses[("web2", "probe")] = RemoteCommandError("web2", "ssh", "cannot open a session: No route to host")
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert (web2.outcome, web2.after, web2.known) == ("failed", None, False)
    assert "could not reconnect to see what the host runs" in (web2.error or "")
    assert not report.mixed  # web1 and web3 are both on the new release; web2 is unknown


# --- the migration's cause ---------------------------------------------------------------------------------


def test_a_migration_failure_shows_stdout_and_stderr_masked_and_blames_the_database(
    inv: Inventory, artifact: Artifact
) -> None:
    fake = fleet()
    stdout = (
        "08:00:01.000 [error] Postgrex.Protocol (#PID<0.200.0>) failed to connect: ** (DBConnection.ConnectionError) "
        f"tcp connect (db.internal:5432): connection refused - :econnrefused; url was postgres://app:{SECRET}@db\n"
    )
    stderr = "@@step migrate\n** (DBConnection.ConnectionError) connection not available and request was dropped\n"
    fake.responses["migrate"] = CommandResult(1, stdout, stderr, 0.0)
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    error = report.error or ""
    assert "migration failed on web1" in error and "econnrefused" in error and "request was dropped" in error
    assert SECRET not in error and MASK in error
    assert "fix the migration" not in error and "could not reach its database" in error
    assert "activate" not in fake.names()


def test_a_database_that_does_not_answer_is_named_with_its_timeout_and_address(
    inv: Inventory, artifact: Artifact
) -> None:
    fake = fleet()
    stdout = (
        "21:04:12.317 [error] HelloPg.Repo (app@10.69.254.2:5432/app) failed to connect: "
        "** (HelloPg.Repo.ConnectionError) tcp connect (10.69.254.2:5432): timeout - :timeout\n"
    )
    stderr = "@@step migrate\n** (HelloPg.Repo.ConnectionError) connection not available and request was dropped\n"
    fake.responses["migrate"] = CommandResult(1, stdout, stderr, 0.0)
    error = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report.error or ""
    assert "tcp connect (10.69.254.2:5432): timeout" in error and "could not reach its database" in error
    assert "did not finish in migrate.timeout" not in error  # the database's timeout, not the migration's


def test_a_raising_migration_says_nothing_switched_and_its_transaction_was_rolled_back(
    inv: Inventory, artifact: Artifact
) -> None:
    fake = fleet()
    stderr = "@@step migrate\n** (RuntimeError) migration 20240101000003 add_items_note raised on purpose\n"
    fake.responses["migrate"] = CommandResult(1, "", stderr, 0.0)
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    error = report.error or ""
    assert "migration failed on web1; no host switched" in error and "raised on purpose" in error
    assert "rolled back" in error and "every host still runs its previous release" in error
    assert "could not reach its database" not in error
    assert "activate" not in fake.names()


def test_a_lost_link_during_the_migration_is_not_blamed_on_the_migration(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    fake.responses["migrate"] = RemoteCommandError("web1", "migrate", "the SSH connection was lost while the step ran")
    error = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report.error or ""
    assert "connection was lost" in error and "fix the migration" not in error and "may or may not" in error


# --- one cookie per environment ------------------------------------------------------------------------------


def no_migrations(tmp_path: Path) -> Inventory:
    data = copy.deepcopy(BASE)
    del data["migrate"]
    return inventory(tmp_path, data, secret=SECRET)


def test_a_filtered_deploy_reads_the_cookie_from_an_unselected_host(tmp_path: Path, artifact: Artifact) -> None:
    inv = no_migrations(tmp_path)
    fake = fleet()
    fake.probe_output = {"web1": probe(), "web2": probe(cookie=False), "web3": probe(cookie=False)}
    fake.responses[("web1", "read-cookie")] = ok("THE-ENVIRONMENTS-COOKIE\n")
    sent: list[str] = []

    def prepare(script: Script) -> CommandResult:
        sent.append(script.render(reveal=True))
        return ok()

    fake.responses[("web2", "prepare")] = prepare
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect, hosts=["web2"])).report
    assert report.ok, report.error
    assert fake.names("web1") == ["probe", "read-cookie"]  # read-only: no lock, nothing written there
    assert "THE-ENVIRONMENTS-COOKIE" in sent[0]


def test_a_filtered_deploy_refuses_to_invent_a_cookie_when_a_host_cannot_be_asked(
    tmp_path: Path, artifact: Artifact
) -> None:
    inv = no_migrations(tmp_path)
    fake = fleet()
    fake.probe_output = {h: probe(cookie=False) for h in HOSTS}
    fake.unreachable = {"web1"}
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect, hosts=["web2"])).report
    assert not report.ok and "cannot tell whether the environment already has an Erlang cookie" in (report.error or "")
    assert "prepare" not in fake.names()


# --- --verbose masking ---------------------------------------------------------------------------------------


def test_a_secret_split_across_chunks_is_never_printed() -> None:
    masker = Masker({SECRET})
    printed: list[str] = []
    stream = masker.stream(printed.append)
    for chunk in ("DATABASE_URL=postgres://u:s3cr3", "t-sentinel-va", "lue@db/app\nnext s3", "cr3 line\n"):
        stream.write(chunk)
    stream.close()
    text = "".join(printed)
    assert SECRET not in text and "s3cr3t" not in "".join(printed[:2])
    assert text == f"DATABASE_URL=postgres://u:{MASK}@db/app\nnext s3cr3 line\n"


class ChunkedTransport(FakeTransport):
    """Delivers each script's stdout in 7-character chunks, as a slow SSH channel would."""

    def run(self, script: Script, *, on_output: object = None) -> CommandResult:
        result = self.fleet.respond(self.name, script)
        if on_output is not None:
            for start in range(0, len(result.stdout), 7):
                on_output("stdout", result.stdout[start : start + 7])  # type: ignore[operator]
        return result


class Recorder:
    def __init__(self) -> None:
        self.out: list[str] = []

    def phase(self, name: str, detail: str = "") -> None: ...
    def step(self, host: str, step: str, status: str, detail: str = "") -> None: ...
    def progress(self, host: str, sent: int, total: int) -> None: ...
    def warning(self, text: str) -> None: ...

    def output(self, host: str, stream: str, text: str) -> None:
        if stream != "script":
            self.out.append(text)


def test_verbose_output_of_a_deploy_never_shows_a_chunked_secret(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    fake.responses["migrate"] = ok(f"migrated with password {SECRET} ok\n")
    events = Recorder()
    report = api.deploy(
        inv, artifact, api.Options(connector=lambda h: ChunkedTransport(h.name, fake), events=events)
    ).report
    assert report.ok, report.error
    assert events.out and all(SECRET[:7] not in chunk or chunk == MASK for chunk in events.out)
    assert f"password {MASK} ok" in "".join(events.out)


# --- one vocabulary ------------------------------------------------------------------------------------------


def test_a_rollback_that_stops_early_reports_untouched_never_pending(tmp_path: Path) -> None:
    inv = rolling(tmp_path)
    fake = fleet()
    fake.responses[("web1", "activate")] = fail("health", "not healthy", EXIT_UNHEALTHY)
    fake.responses[("web1", "probe")] = ok(probe(OLDER, pids="300"))  # it did switch before failing
    report = api.rollback(inv, None, api.Options(connector=fake.connect)).report
    assert [h.outcome for h in report.hosts] == ["reverted", "untouched", "untouched"]
    assert any("not rolled back: web2, web3" in w for w in report.warnings)
    assert "pending" not in json.dumps(report.to_json())


# --- the rollback schema warning ---------------------------------------------------------------------------


def migrated(release: str, migrations: str | None) -> str:
    extra = {"migrations": migrations} if migrations is not None else {}
    return rev(release, "migrate", **extra)


def test_no_schema_warning_between_releases_with_the_same_migrations() -> None:
    same = "20260101_create_greetings.exs 20260201_add_index.exs"
    facts = {"web1": parse_probe(probe(extra=migrated(OLDER, same) + "\n" + migrated(OLD, same) + "\n"))}
    assert schema_warnings(facts, {OLDER}) == []


def test_schema_warning_names_the_migrations_the_target_lacks() -> None:
    text = migrated(OLDER, "20260101_create.exs") + "\n" + migrated(OLD, "20260101_create.exs 20261101_drop.exs")
    facts = {"web1": parse_probe(probe(extra=text + "\n"))}
    (warning,) = schema_warnings(facts, {OLDER})
    assert f"{OLDER} lacks migration(s)" in warning and "20261101_drop.exs" in warning


def test_deploy_records_the_migrations_the_release_ships(inv: Inventory, tmp_path: Path) -> None:
    import tarfile

    members = []
    for name in ("20260101_create.exs", "20260201_more.exs"):
        info = tarfile.TarInfo(f"lib/hello-0.2.0/priv/repo/migrations/{name}")
        info.size = 1
        members.append(info)
    tarball = release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0", extra=members)
    fake = fleet()
    result = api.deploy(inv, inspect_tarball(tarball, "hello"), api.Options(connector=fake.connect))
    assert result.report.ok
    (text,) = [t for _, n, t in fake.calls if n == "migrate"]
    assert '"migrations":"20260101_create.exs 20260201_more.exs"' in text


# --- locks: status and unlock ---------------------------------------------------------------------------------


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def lock_line(pid: int, since: float = 1) -> str:
    return "lock=" + json.dumps({"who": "ops", "host": socket.gethostname(), "pid": pid, "since": since}) + "\n"


def test_status_marks_a_lock_whose_holder_is_gone_as_stale(inv: Inventory) -> None:
    fake = FakeFleet()
    fake.responses["status"] = ok(probe() + lock_line(dead_pid()) + "health=ok\n")
    fake.responses[("web2", "status")] = ok(probe() + lock_line(os.getpid()) + "health=ok\n")
    rows = ops.status(inv, api.Options(connector=fake.connect, hosts=["web1", "web2"]))
    web1, web2 = ops.status_document(rows)["hosts"]
    assert web1["lock_stale"] is True and "the lock is stale" in web1["lock"]
    assert web2["lock_stale"] is False and "stale" not in web2["lock"]


def test_unlock_refuses_a_live_holder_without_force(inv: Inventory) -> None:
    fake = FakeFleet(probe_output={"web1": probe() + lock_line(os.getpid(), since=1)})
    with pytest.raises(LockedError, match="still running on this machine") as refused:
        api.unlock(inv, api.Options(connector=fake.connect, hosts=["web1"]))
    assert "ops@" in str(refused.value) and "--force" in str(refused.value)
    assert "unlock" not in fake.names()
    before = api.unlock(inv, api.Options(connector=fake.connect, hosts=["web1"]), force=True)
    assert before["web1"] is not None and fake.names()[-1] == "unlock"


def test_unlock_refuses_a_young_lock_of_another_machine_and_removes_a_stale_one(inv: Inventory) -> None:
    young = "lock=" + json.dumps({"who": "ci", "host": "elsewhere", "pid": 7, "since": 1800000000 - 30}) + "\n"
    fake = FakeFleet(probe_output={"web1": probe() + young, "web2": probe() + lock_line(dead_pid())})
    with pytest.raises(LockedError, match=r"web1: held by ci@elsewhere .* taken 30s ago"):
        api.unlock(inv, api.Options(connector=fake.connect, hosts=["web1", "web2"]))
    assert "unlock" not in fake.names()
    removed = api.unlock(inv, api.Options(connector=fake.connect, hosts=["web2"]))
    assert removed["web2"] is not None and fake.names("web2")[-1] == "unlock"


def test_a_session_without_exit_status_is_called_a_lost_connection(inv: Inventory, artifact: Artifact) -> None:
    fake = fleet()
    fake.responses[("web2", "activate")] = CommandResult(-1, "", "", 0.0)
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    web2 = {h.host: h for h in report.hosts}["web2"]
    assert "exit status -1" not in (web2.error or "") and "connection was lost" in (web2.error or "")
    # It never switched (the probe afterwards says so): nothing to revert, the old node still runs.
    assert (web2.outcome, web2.after) == ("aborted", OLD) and "now runs" in (web2.error or "")
    assert "revert" not in fake.names("web2")
