"""``deployer lock`` on a real fleet: every host locked with the reason, a deploy refused with it, unlock lifts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import __version__
from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app

MESSAGE = "database maintenance until 14:00"


@pytest.fixture(scope="module")
def v1() -> Path:
    return build_hello("0.1.0")


@pytest.fixture(scope="module")
def v2() -> Path:
    return build_hello("0.2.0")


@pytest.fixture
def app(fleet: Fleet, tmp_path: Path, v1: Path) -> Iterator[App]:
    deployment = make_app(fleet, tmp_path, "manuallock")
    first = api.deploy(deployment.inventory(), inspect_tarball(v1, "hello"))
    assert first.report.ok, explain(first.report)
    yield deployment
    remove_app(deployment)


def deployer(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "deployer.cli.program",
        *args,
        "--env",
        "e2e",
        "--inventory-dir",
        str(app.inventory_dir),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def lock_files(app: App) -> dict[str, str]:
    """Each host's ``.lock/info`` ('' when it is not locked)."""
    return {
        h.name: app.sh(h.name, f"cat {app.deploy_to}/.lock/info 2>/dev/null || true").strip() for h in app.fleet.hosts
    }


def test_a_manual_lock_refuses_a_deploy_with_its_reason_until_unlock(app: App, v2: Path) -> None:
    taken = deployer(app, "lock", "--message", MESSAGE)
    assert taken.returncode == 0, taken.stderr
    infos = lock_files(app)
    assert all(MESSAGE in info for info in infos.values()), infos

    refused = deployer(app, "deploy", "--tarball", str(v2))
    assert refused.returncode == 1, refused.stderr
    assert MESSAGE in refused.stderr and "locked by hand" in refused.stderr and "since" in refused.stderr
    assert "`deployer unlock --env e2e`" in refused.stderr
    # Nothing happened: every host still serves 0.1.0 and still holds the manual lock (not the refused run's).
    assert app.versions() == {h.name: "0.1.0" for h in app.fleet.hosts}
    assert lock_files(app) == infos

    second = deployer(app, "lock", "--message", "another reason")
    assert second.returncode == 1 and MESSAGE in second.stderr
    assert lock_files(app) == infos

    lifted = deployer(app, "unlock")
    assert lifted.returncode == 0, lifted.stderr
    assert MESSAGE in lifted.stderr
    assert set(lock_files(app).values()) == {""}

    deployed = deployer(app, "deploy", "--tarball", str(v2))
    assert deployed.returncode == 0, deployed.stderr
    assert app.versions() == {h.name: "0.2.0" for h in app.fleet.hosts}

    # Who deployed which commit: every host's revisions.log says where 0.2.0 came from and which deployer.
    history = deployer(app, "history", "--json")
    assert history.returncode == 0, history.stderr
    for host in json.loads(history.stdout)["hosts"]:
        last = host["revisions"][-1]
        assert (last["version"], last["deployer"]) == ("0.2.0", __version__), last
        assert last["commit"] is None and last["source"].startswith("prebuilt tarball"), last
    check = deployer(app, "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["deployer"] == __version__ and report["source"]["describe"]
    assert all(h["built_from"].startswith("prebuilt tarball") for h in report["hosts"]), report
