"""Fault injection on a real fleet: every failure leaves a fleet someone can describe.

Each test starts from three hosts serving 0.1.0, injects one fault during a deploy of 0.2.0, and checks
the per-host outcome, the version every host serves, the lock, and the exit status.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.core.outcome import Report
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, Recorder, cli_popen, explain, make_app, padded_tarball, remove_app

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count(1)


@pytest.fixture(scope="module")
def v1() -> Path:
    return build_hello("0.1.0", migrations=2)


@pytest.fixture(scope="module")
def v2() -> Path:
    return build_hello("0.2.0", migrations=3)


@pytest.fixture
def app(fleet: Fleet, tmp_path: Path, v1: Path) -> Iterator[App]:
    """Three fresh hosts serving 0.1.0, with short timeouts so faults are noticed quickly."""
    deployment = make_app(fleet, tmp_path, f"fault{next(_names)}")
    deployment.data["ssh"].update({"connect_timeout": 4, "keepalive": 2, "keepalive_count": 2})
    deployment.data["health"]["deadline"] = 40  # generous: a loaded 2-core CI machine boots VMs slowly
    deployment.rewrite()
    first = api.deploy(deployment.inventory(), inspect_tarball(v1, "hello"))
    assert first.report.ok, explain(first.report)
    yield deployment
    remove_app(deployment)


def outcomes(report: Report) -> dict[str, str]:
    return {h.host: h.outcome for h in report.hosts}


def locks(app: App) -> dict[str, bool]:
    return {
        h.name: app.sh(h.name, f"test -d {app.deploy_to}/.lock && echo yes || echo no").strip() == "yes"
        for h in app.fleet.hosts
    }


def deploy(app: App, tarball: Path, events: Any = None, **options: Any) -> api.Result:
    return api.deploy(app.inventory(), inspect_tarball(tarball, "hello"), api.Options(events=events, **options))


def assert_untouched(app: App, version: str = "0.1.0") -> None:
    """Every host serves ``version`` and nobody holds the lock."""
    assert app.versions() == {h.name: version for h in app.fleet.hosts}
    assert locks(app) == {h.name: False for h in app.fleet.hosts}


def no_new_release(app: App, before: dict[str, list[str]]) -> None:
    for host in app.fleet.hosts:
        assert app.releases(host.name) == before[host.name], f"{host.name} kept a prepared release"


def snapshot(app: App) -> dict[str, list[str]]:
    return {h.name: app.releases(h.name) for h in app.fleet.hosts}


# --- failures before any host switches --------------------------------------------------------------


def test_network_cut_mid_upload_aborts_everything(app: App, tmp_path: Path, v2: Path) -> None:
    big = padded_tarball(v2, tmp_path / "hello-0.2.0-big.tar.gz", 48)
    before = snapshot(app)
    events = Recorder()
    events.on("h2", "upload", "start", lambda: app.fleet.cut_link("h2"))
    # The cleanup reconnects to h2; let the link come back at that moment so it can undo and unlock.
    events.on("h2", "reconnect", "start", lambda: app.fleet.restore_link("h2"))
    result = deploy(app, big, events)
    report = result.report
    assert not report.ok
    assert outcomes(report)["h2"] == "aborted"
    assert "h2" in (report.error or "") and "before any host switched" in (report.error or "")
    assert all(h.after == h.before for h in report.hosts)
    assert_untouched(app)
    no_new_release(app, before)


def test_host_with_sshd_stopped_changes_nothing(app: App, v2: Path) -> None:
    before = snapshot(app)
    app.fleet.stop_sshd("h3")
    try:
        report = deploy(app, v2).report
    finally:
        app.fleet.start_sshd("h3")
    assert not report.ok
    assert outcomes(report)["h3"] == "unreachable"
    assert "h3: cannot connect" in (report.error or "")
    assert_untouched(app)
    no_new_release(app, before)


def test_failing_migration_runs_once_and_switches_nothing(app: App, v2: Path) -> None:
    bad = build_hello("0.2.0", variant="bad_migration", migrations=3)
    before = snapshot(app)
    proc = cli_popen(app, "deploy", "--tarball", str(bad))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "migration failed on h1" in out
    assert sum(1 for line in out.splitlines() if " migrate " in line and " failed" in line) == 1
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0"]
    assert_untouched(app)
    no_new_release(app, before)


def test_disk_full_during_extraction_aborts(app: App, v2: Path) -> None:
    before = snapshot(app)
    releases = f"{app.deploy_to}/releases"
    # Only releases/ fills up: the preflight's free-space check of deploy_to passes, extraction fails.
    # A small tmpfs over releases/ holding a copy of what was there, then filled to the brim.
    app.sh("h2", f"cp -a {releases} {app.deploy_to}/releases.saved")
    app.fleet.fill_disk("h2", releases, "40m")
    try:
        app.sh(
            "h2",
            f"cp -a {app.deploy_to}/releases.saved/. {releases}/ && "
            f"(dd if=/dev/zero of={releases}/.filler bs=1M 2>/dev/null || true) && "
            f"truncate -s -1M {releases}/.filler",
        )
        report = deploy(app, v2).report
        assert not report.ok
        by_host = {h.host: h for h in report.hosts}
        assert by_host["h2"].outcome == "aborted" and by_host["h2"].step == "extract", explain(report)
        assert "No space left on device" in (by_host["h2"].error or "")
        assert_untouched(app)
        assert app.sh("h2", f"ls -A {releases} | grep -c partial || true").strip() == "0"
    finally:
        app.fleet.restore_disk("h2", releases)
        app.sh("h2", f"rm -rf {app.deploy_to}/releases.saved")
    no_new_release(app, before)


def test_too_little_disk_is_refused_before_uploading(app: App, v2: Path) -> None:
    app.fleet.fill_disk("h3", app.deploy_to, "4m")
    try:
        report = deploy(app, v2).report
    finally:
        app.fleet.restore_disk("h3", app.deploy_to)
    assert not report.ok
    assert "not enough disk space" in (report.error or "") and "h3:" in (report.error or "")
    assert all(h.uploaded_bytes == 0 for h in report.hosts)
    assert_untouched(app)


# --- failures after switching: per-host revert, rollout stops -----------------------------------------


def test_crashing_node_is_reverted_and_the_rollout_stops(app: App) -> None:
    crash = build_hello("0.2.0", variant="crash", migrations=2)
    before = snapshot(app)
    result = deploy(app, crash, strategy={"kind": "rolling", "batch_size": 1})
    report = result.report
    assert not report.ok
    assert outcomes(report) == {"h1": "reverted", "h2": "untouched", "h3": "untouched"}
    h1 = report.hosts[0]
    assert h1.step == "health" and h1.after == h1.before and h1.healthy is True
    assert_untouched(app)
    assert len(app.releases("h1")) == len(before["h1"]) + 1  # the failed release stays, marked failed
    assert app.releases("h2") == before["h2"] and app.releases("h3") == before["h3"]
    log = app.sh("h1", f"cat {app.deploy_to}/revisions.log")
    assert '"outcome":"failed"' in log and '"event":"revert"' in log
    # The failed release is never a rollback target, and the next deploy converges.
    assert api.deploy(app.inventory(), inspect_tarball(build_hello("0.1.0", migrations=2), "hello")).report.ok


def test_never_healthy_release_reverts_every_host(app: App) -> None:
    unhealthy = build_hello("0.2.0", variant="unhealthy", migrations=2)
    app.data["health"]["deadline"] = 10
    app.rewrite()
    report = deploy(app, unhealthy).report
    assert not report.ok
    assert set(outcomes(report).values()) == {"reverted"}, explain(report)
    assert all("did not become healthy within 10s" in (h.error or "") for h in report.hosts)
    assert_untouched(app)


def test_canary_failure_leaves_every_other_host_untouched(app: App) -> None:
    crash = build_hello("0.2.0", variant="crash", migrations=2)
    before = snapshot(app)
    report = deploy(app, crash, strategy={"canary": True}).report
    assert outcomes(report) == {"h1": "reverted", "h2": "untouched", "h3": "untouched"}
    for host in ("h2", "h3"):
        assert app.releases(host) == before[host]
        assert app.sh(host, f"grep -c . {app.deploy_to}/revisions.log").strip() == "1"
    assert_untouched(app)


def test_max_fail_stops_the_rollout(app: App) -> None:
    crash = build_hello("0.2.0", variant="crash", migrations=2)
    report = deploy(app, crash, strategy={"kind": "rolling", "batch_size": 1, "max_fail": 1}).report
    assert outcomes(report) == {"h1": "reverted", "h2": "reverted", "h3": "untouched"}
    assert any("max_fail 1" in w and "h3" in w for w in report.warnings)
    assert_untouched(app)


# --- a link cut during activation ------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.8, 2.0], ids=["at-once", "while-stopping", "while-starting"])
def test_link_cut_during_activation_reports_what_the_host_really_runs(app: App, v2: Path, delay: float) -> None:
    """The client loses h1 at some point of its activation; the report must match h1 afterwards, whatever
    the host managed to do (nothing, switch and revert, or finish): never a guess from the last marker."""
    events = Recorder()
    timers: list[threading.Timer] = []

    def cut_soon() -> None:
        timer = threading.Timer(delay, app.fleet.cut_link, args=("h1",))
        timers.append(timer)
        timer.start()

    events.on("h1", "activate", "start", cut_soon)
    events.on("h1", "reconnect", "start", lambda: app.fleet.restore_link("h1"))
    try:
        report = deploy(app, v2, events, strategy={"kind": "rolling", "batch_size": 1}).report
    finally:
        for timer in timers:
            timer.join()
        app.fleet.restore_link("h1")
    row = {h.host: h for h in report.hosts}["h1"]
    assert row.known, explain(report)
    assert row.after == app.current("h1").removeprefix("releases/"), explain(report)
    serving = app.versions()["h1"]
    if row.outcome == "success":
        assert (row.after, serving, row.error) == (report.release, "0.2.0", None), explain(report)
    else:
        assert row.outcome in ("reverted", "aborted"), explain(report)
        assert serving == "0.1.0" and row.after == row.before, explain(report)
        assert "connection" in (row.error or "") or "exit status" not in (row.error or ""), explain(report)
    assert locks(app) == {h.name: False for h in app.fleet.hosts}
    assert deploy(app, v2).report.ok  # and the fleet converges


# --- concurrency, interrupts, stale locks -------------------------------------------------------------


def test_two_deploys_at_once_exactly_one_proceeds(app: App, v2: Path) -> None:
    first = cli_popen(app, "deploy", "--tarball", str(v2))
    second = cli_popen(app, "deploy", "--tarball", str(v2))
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], outputs
    loser = outputs[[first.returncode, second.returncode].index(1)]
    assert "another operation holds the deploy lock" in loser
    assert_untouched(app, "0.2.0")


def wait_for(proc: subprocess.Popen[str], *words: str, timeout: float = 120) -> list[str]:
    """Read the process's output until a line contains all ``words`` (a step line like ``h1 upload start``)."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if all(f" {word} " in f" {line.strip()} " for word in words):
            return seen
    raise AssertionError(f"never saw {words!r}:\n{''.join(seen)}")


def test_sigint_during_upload_undoes_and_unlocks(app: App, tmp_path: Path, v2: Path) -> None:
    big = padded_tarball(v2, tmp_path / "hello-0.2.0-big.tar.gz", 48)
    before = snapshot(app)
    proc = cli_popen(app, "deploy", "--tarball", str(big), "--verbose")
    wait_for(proc, "upload", "start")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "interrupted" in out
    assert_untouched(app)
    no_new_release(app, before)
    for host in app.fleet.hosts:
        leftovers = app.sh(host.name, f"ls -A {app.deploy_to}/artifacts | grep -c upload || true").strip()
        assert leftovers == "0"
    assert deploy(app, v2).report.ok  # a later deploy succeeds


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_restart_finishes_the_host_step_and_reports_mixed(app: App, v2: Path, signum: int) -> None:
    proc = cli_popen(app, "deploy", "--tarball", str(v2), "--verbose", "--batch-size", "1")
    wait_for(proc, "activate", "start")
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    versions = app.versions()
    assert versions["h1"] == "0.2.0" and versions["h2"] == versions["h3"] == "0.1.0", out
    assert "mixed fleet: hosts run different releases" in out
    assert locks(app) == {h.name: False for h in app.fleet.hosts}
    for host in app.fleet.hosts:
        assert app.sh(host.name, f"ls -A {app.deploy_to} | grep -c current.tmp || true").strip() == "0"
    converged = deploy(app, v2).report
    assert converged.ok, explain(converged)
    assert app.versions() == {h.name: "0.2.0" for h in app.fleet.hosts}


def test_sigkill_leaves_a_stale_lock_that_unlock_removes(app: App, tmp_path: Path, v2: Path) -> None:
    big = padded_tarball(v2, tmp_path / "hello-0.2.0-big.tar.gz", 48)
    proc = cli_popen(app, "deploy", "--tarball", str(big), "--verbose")
    wait_for(proc, "upload", "start")
    proc.kill()
    proc.communicate(timeout=60)
    assert locks(app) == {h.name: True for h in app.fleet.hosts}
    refused = cli_popen(app, "deploy", "--tarball", str(v2))
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 1
    assert "holds the deploy lock" in out and "the lock is stale" in out and "deployer unlock --env e2e" in out
    unlocked = cli_popen(app, "unlock")
    out, _ = unlocked.communicate(timeout=120)
    assert unlocked.returncode == 0, out
    assert "removed lock held by" in out
    report = deploy(app, v2).report
    assert report.ok, explain(report)
    assert app.versions() == {h.name: "0.2.0" for h in app.fleet.hosts}


def test_hung_command_hits_its_deadline(app: App, v2: Path) -> None:
    """A remote step that never returns must not hang the run: the per-command deadline fires."""
    # A migration that sleeps forever (the eval expression itself hangs).
    app.data["migrate"] = {"eval": "Process.sleep(:infinity)", "timeout": 3}
    app.rewrite()
    started = time.monotonic()
    holder: dict[str, Report] = {}
    thread = threading.Thread(target=lambda: holder.setdefault("r", deploy(app, v2).report))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the deploy hung"
    report = holder["r"]
    assert not report.ok
    assert "timed out after 3s" in (report.error or ""), explain(report)
    assert time.monotonic() - started < 120
    assert_untouched(app)
    # The hung VM was killed on the host, not left behind.
    assert app.sh("h1", "ps -eo args | grep -c '[P]rocess.sleep' || true").strip() == "0"
