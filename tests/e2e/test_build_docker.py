"""End to end: `build.strategy: docker` — a multi-stage `docker build` of the Erlang example whose release
stage is exported with `--output type=local`, then deployed to the fleet.

Runs only where a Docker engine answers `docker info` (and the builder image can be pulled); elsewhere it
is skipped with the reason. The exact `docker build` command line is unit-tested in tests/unit/test_build.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.build import builder as build
from deployer.core.artifact import inspect_tarball, version_from_filename
from deployer.core.compat import read_sidecar
from deployer.operations import release as api
from tests.harness.examples import HELLO_ERL_PROJECT_DIR
from tests.harness.fleet import Fleet

from .build_support import make_erl_app
from .support import App, explain, remove_app

_DOCKER = build.docker_unavailable()
pytestmark = pytest.mark.skipif(_DOCKER is not None, reason=f"no Docker here: {_DOCKER}")


@pytest.fixture
def docker_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    # The fleet is requested here, after the Docker check, so a skip here is not a skipped fleet test
    # (which DEPLOYER_REQUIRE_FLEET=1 would turn into a failure).
    fleet: Fleet = request.getfixturevalue("session_fleet")
    project = tmp_path / "hello_erl"
    shutil.copytree(HELLO_ERL_PROJECT_DIR, project, ignore=shutil.ignore_patterns("_build"))
    deployment = make_erl_app(fleet, tmp_path, "dockerbuild", project=project)
    settings = dict(deployment.data["build"])
    settings.update(strategy="docker", dockerfile="Dockerfile", target="release", env={"HELLO_ERL_VERSION": "0.4.0"})
    deployment.rewrite(build=settings)
    yield deployment
    remove_app(deployment)


def test_docker_build_exports_the_release_and_it_deploys(docker_app: App) -> None:
    inventory = docker_app.inventory()
    tarball = build.build(inventory)
    assert tarball.name == "hello_erl-0.4.0.tar.gz"
    assert tarball.parent == Path(inventory.config.build.path) / "_build" / "deployer"
    artifact = inspect_tarball(tarball, "hello_erl", expected_version=version_from_filename(tarball, "hello_erl"))
    platform = read_sidecar(tarball, artifact.sha256)
    assert platform is not None and platform.strategy == "docker"
    report = api.deploy(inventory, artifact).report
    assert report.ok, explain(report)
    assert docker_app.versions() == {h.name: "0.4.0" for h in docker_app.fleet.hosts}
