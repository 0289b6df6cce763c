"""End to end: deploy, deploy again, roll back, prune, migrate — a real OTP release on real sshd hosts.

One fleet of three hosts; host h1 is the migrator. The example app keeps its migrations in a directory
every host sees (standing in for the shared database), so "applied once in total" is checkable.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count(1)


@pytest.fixture(scope="module")
def tarballs() -> dict[str, Path]:
    return {"0.1.0": build_hello("0.1.0", migrations=2), "0.2.0": build_hello("0.2.0", migrations=3)}


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, f"app{next(_names)}", keep_releases=2)
    yield deployment
    remove_app(deployment)


def artifact(path: Path) -> Artifact:
    return inspect_tarball(path, "hello")


def deploy(app: App, path: Path) -> api.Result:
    return api.deploy(app.inventory(), artifact(path))


def test_deploy_upgrade_rollback_prune_migrate(app: App, tarballs: dict[str, Path]) -> None:
    hosts = [h.name for h in app.fleet.hosts]

    # --- first deploy: every host serves 0.1.0; the two migrations ran once in total ------------------
    first = deploy(app, tarballs["0.1.0"])
    assert first.report.ok, explain(first.report)
    assert first.report.migrated_on == "h1"
    assert app.versions() == {h: "0.1.0" for h in hosts}
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0"]
    v1 = first.report.release
    assert v1 is not None
    for host in hosts:
        assert app.current(host) == f"releases/{v1}"
        assert app.health(host)["migrations"] == [1, 2]  # type: ignore[index]
    old_pids = {h: app.health(h)["os_pid"] for h in hosts}  # type: ignore[index]

    # The env file is private, the cookie is read-only, the secret arrived byte for byte.
    mode = app.sh("h2", f"stat -c %a {app.deploy_to}/shared/node.env").strip()
    assert mode == "600"
    assert app.sh("h2", f"stat -c %a {app.deploy_to}/shared/.cookie").strip() == "400"
    assert (
        app.sh("h2", f"test -e {app.deploy_to}/releases/{v1}/releases/COOKIE && echo baked || echo none").strip()
        == "none"
    )

    # --- second deploy: 0.2.0 everywhere, only migration 3 ran, the old VMs are gone ------------------
    second = deploy(app, tarballs["0.2.0"])
    assert second.report.ok, explain(second.report)
    v2 = second.report.release
    assert app.versions() == {h: "0.2.0" for h in hosts}
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0", "3 0.2.0"]
    for host in hosts:
        assert app.current(host) == f"releases/{v2}"
        alive = app.sh(host, f"test -d /proc/{old_pids[host]} && echo alive || echo gone").strip()
        assert alive == "gone", f"{host}: the old node {old_pids[host]} is still running"
    assert all(h.before == v1 and h.after == v2 for h in second.report.hosts)

    # --- rollback: back to 0.1.0 everywhere ---------------------------------------------------------
    back = api.rollback(app.inventory())
    assert back.report.ok, explain(back.report)
    assert app.versions() == {h: "0.1.0" for h in hosts}
    assert all(app.current(h) == f"releases/{v1}" for h in hosts)

    # --- re-deploying an artifact the hosts have uploads nothing; keep_releases=2 prunes -------------
    third = deploy(app, tarballs["0.2.0"])
    assert third.report.ok, explain(third.report)
    assert all(h.uploaded_bytes == 0 for h in third.report.hosts)
    fourth = deploy(app, tarballs["0.1.0"])
    assert fourth.report.ok, explain(fourth.report)
    v4 = fourth.report.release
    for host in hosts:
        on_disk = app.releases(host)
        assert len(on_disk) == 2, on_disk
        assert v4 in on_disk and third.report.release in on_disk  # current and the previous good
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0", "3 0.2.0"]

    # --- invoke migrate alone applies nothing twice; history records every step ---------------------
    migrated = api.migrate(app.inventory())
    assert migrated.report.ok, explain(migrated.report)
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0", "3 0.2.0"]
    log = app.sh("h3", f"cat {app.deploy_to}/revisions.log")
    events = [(line.split('"event":"')[1].split('"')[0]) for line in log.splitlines()]
    assert events == ["deploy", "deploy", "rollback", "deploy", "deploy"]
    assert app.sh("h1", f"test -d {app.deploy_to}/.lock && echo locked || echo free").strip() == "free"


def test_cli_deploy_and_status_json(app: App, tarballs: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]
    common = ["--env", "e2e", "--inventory-dir", str(app.inventory_dir)]
    done = subprocess.run(
        [*cmd, "deploy", *common, "--tarball", str(tarballs["0.1.0"]), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and {h["outcome"] for h in report["hosts"]} == {"success"}
    status = subprocess.run(
        [*cmd, "status", *common, "--json"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert rows["mixed"] is False
    assert {h["version"] for h in rows["hosts"]} == {"0.1.0"}
    assert all(h["running"] for h in rows["hosts"])
    # A rollback with nothing to go back to is refused with a non-zero exit and a clear reason.
    refused = subprocess.run(
        [*cmd, "rollback", *common], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert refused.returncode == 1
    assert "no previous good release" in refused.stdout + refused.stderr


def test_fleet_teardown_leaves_no_beam_behind(make_fleet: Any, tmp_path: Path, tarballs: dict[str, Path]) -> None:
    """A fleet running deployed nodes tears down completely: no namespace, veth, sshd or BEAM survives."""
    fleet = make_fleet(2)
    deployment = make_app(fleet, tmp_path, "teardown")
    report = deploy(deployment, tarballs["0.1.0"]).report
    assert report.ok, explain(report)
    netns = [h.netns for h in fleet.hosts]
    pids = set()
    for ns in netns:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=True).stdout
        pids.update(int(p) for p in out.split())
    beams = {p for p in pids if Path(f"/proc/{p}/comm").exists() and "beam" in Path(f"/proc/{p}/comm").read_text()}
    assert len(beams) == 2  # one node per host, seen from this machine
    fleet.stop()
    shutil.rmtree(deployment.db_dir, ignore_errors=True)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "processes of the fleet survived teardown"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in listed for ns in netns)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert fleet.runid not in links
