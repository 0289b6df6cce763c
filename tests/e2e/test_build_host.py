"""End to end: `build.strategy: host` — the source goes to a fleet host over SSH, the release is built there,
fetched back, validated and deployed by `invoke deploy` like a local build.

Fleet hosts share this machine's /usr, so rebar3 and Erlang are available on them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.compat import read_sidecar
from tests.harness.examples import HELLO_ERL_PROJECT_DIR
from tests.harness.fleet import Fleet

from .build_support import make_erl_app
from .support import App, remove_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the Erlang example, with things that must never be sent to the build host."""
    dest = tmp_path / "hello_erl"
    shutil.copytree(HELLO_ERL_PROJECT_DIR, dest, ignore=shutil.ignore_patterns("_build"))
    (dest / "_build" / "prod").mkdir(parents=True)
    (dest / "_build" / "prod" / "stale.beam").write_text("stale build output")
    (dest / ".git").mkdir()
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return dest


@pytest.fixture
def host_built(session_fleet: Fleet, tmp_path: Path, project: Path) -> Iterator[App]:
    fleet = session_fleet
    deployment = make_erl_app(fleet, tmp_path, "hostbuild", project=project)
    build = dict(deployment.data["build"])
    build.update(
        strategy="host",
        host="h1",  # an inventory host, reached like any target (strict host keys)
        remote_path=f"{fleet.deploy_root}/build-area",
        env={"HELLO_ERL_VERSION": "0.3.0", "HELLO_ERL_MIGRATIONS": "2"},
        timeout=900,
    )
    deployment.rewrite(build=build)
    yield deployment
    remove_app(deployment)


def test_invoke_deploy_builds_on_the_build_host(host_built: App, project: Path) -> None:
    app = host_built
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(REPO),
            "deploy",
            "--env",
            "e2e",
            "--inventory-dir",
            str(app.inventory_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["version"] == "0.3.0"
    assert "(host)" in done.stderr and "build host h1" in done.stderr
    assert app.versions() == {h.name: "0.3.0" for h in app.fleet.hosts}
    assert app.migrations_log() == ["1 0.3.0", "2 0.3.0"]

    # The tarball was fetched into build.output, with the build host's platform recorded beside it.
    tarball = project / "_build" / "deployer" / "hello_erl-0.3.0.tar.gz"
    assert tarball.is_file()
    platform = read_sidecar(tarball)
    assert platform is not None and platform.strategy == "host" and platform.machine == "h1"
    assert platform.arch == os.uname().machine and platform.libc and "GLIBC" in platform.libc.upper()
    # No build directory is left on the build host, and the local build output was never sent.
    assert app.sh("h1", f"ls -A {app.fleet.deploy_root}/build-area").strip() == ""
