"""End to end: `build.strategy: docker` with podman — the Mix example built inside a container from the
Dockerfile `deployer init --docker` renders, its tarball deployed to the fleet and serving; then one
source file changes and the rebuild reuses the dependency layers (podman's "Using cache").

Podman and the base image come from scripts/podman-setup.sh (run here, idempotent; CI may run it first).
As root this test runs (a skipped fleet test fails CI); elsewhere it is skipped. The exact engine command
line and the Dockerfile rendering are unit-tested (tests/unit/test_build.py, tests/unit/test_dockerfile.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.build import builder as build
from deployer.build.dockerfile import project_files, render_dockerfile
from deployer.core.artifact import inspect_tarball, version_from_filename
from deployer.core.compat import read_sidecar
from deployer.operations import release as api
from tests.harness.examples import HELLO_ERL_PROJECT_DIR, HELLO_PROJECT_DIR
from tests.harness.fleet import Fleet
from tests.harness.podman import PodmanUnavailable, ensure_podman

from .build_support import make_erl_app
from .support import App, explain, make_app, remove_app

# Everything before this step builds the toolchain and the dependencies; a source change must not redo it.
SOURCES_STEP = "COPY lib lib"


@pytest.fixture(scope="session")
def podman_image() -> str:
    """The local Debian base image (podman installed and configured on the way)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/podman-setup.sh installs podman")
    try:
        return ensure_podman()
    except PodmanUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
def podman_app(podman_image: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    fleet: Fleet = request.getfixturevalue("session_fleet")
    project = tmp_path / "hello"
    shutil.copytree(HELLO_PROJECT_DIR, project, ignore=shutil.ignore_patterns("_build", "deps"))
    files, dirs = project_files(project, "mix")
    # The Dockerfile's default base is a registry image this machine cannot pull: build.image must win.
    (project / "Dockerfile").write_text(
        render_dockerfile(
            tool="mix", release="hello", dependency_files=files, source_dirs=dirs, build_args=["HELLO_VERSION"]
        )
    )
    deployment = make_app(fleet, tmp_path, "podmanbuild")
    deployment.rewrite(
        build={
            "strategy": "docker",
            "engine": "podman",  # never the daemon-less docker CLI that may come first on the PATH
            "path": str(project),
            "image": podman_image,
            "env": {"HELLO_VERSION": "0.8.0"},
            "timeout": 1800,
        }
    )
    yield deployment
    remove_app(deployment)


def _build(app: App, version: str) -> tuple[Path, list[str]]:
    settings = dict(app.data["build"])
    settings["env"] = {"HELLO_VERSION": version}
    app.rewrite(build=settings)
    lines: list[str] = []
    return build.build(app.inventory(), log=lines.append), lines


def _deploy(app: App, tarball: Path, version: str) -> None:
    artifact = inspect_tarball(tarball, "hello", expected_version=version_from_filename(tarball, "hello"))
    platform = read_sidecar(tarball, artifact.sha256)
    # The platform is the build container's own (its probe, exported next to the tarball).
    assert platform is not None and platform.strategy == "docker", platform
    assert platform.arch == os.uname().machine and (platform.libc or "").startswith("ldd (Debian GLIBC"), platform
    report = api.deploy(app.inventory(), artifact).report
    assert report.ok, explain(report)
    assert app.versions() == {h.name: version for h in app.fleet.hosts}


def test_podman_build_deploys_and_a_source_change_reuses_the_dependency_layers(podman_app: App) -> None:
    project = Path(podman_app.data["build"]["path"])
    tarball, lines = _build(podman_app, "0.8.0")
    assert tarball == project / "_build" / "deployer" / "hello-0.8.0.tar.gz"
    assert lines[0].startswith(f"podman build: podman build --file {project}/Dockerfile --network host ")
    _deploy(podman_app, tarball, "0.8.0")

    # One source file changes (with content no earlier build has seen, so its layer cannot be cached).
    source = project / "lib" / "hello" / "json.ex"
    source.write_text(source.read_text() + f"# rebuilt {secrets.token_hex(8)}\n")
    tarball, lines = _build(podman_app, "0.8.1")
    steps = build.cached_steps(lines)
    shown = "\n".join(f"{'CACHED' if cached else 'built '} {step}" for step, cached in steps)
    names = [step for step, _ in steps]
    assert SOURCES_STEP in names, shown
    sources = names.index(SOURCES_STEP)
    # Step 0 is FROM (nothing to cache); every layer after it and before the sources came from the cache:
    # the apt-get toolchain, mix.exs, `mix deps.get`, config and `mix deps.compile`.
    dependency_layers = steps[1:sources]
    assert {"COPY mix.exs ./", "RUN mix deps.get --only prod", "RUN mix deps.compile"} <= set(names[1:sources])
    assert all(cached for _, cached in dependency_layers), shown
    # The changed sources and the release build ran again.
    rebuilt = [cached for step, cached in steps[sources:] if step == SOURCES_STEP or step.startswith("RUN mix release")]
    assert rebuilt == [False, False], shown
    assert f"{len(dependency_layers)} of {len(steps)} build steps reused cached layers" in lines, shown
    _deploy(podman_app, tarball, "0.8.1")


@pytest.fixture
def podman_erl_app(podman_image: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    fleet: Fleet = request.getfixturevalue("session_fleet")
    project = tmp_path / "hello_erl"
    shutil.copytree(HELLO_ERL_PROJECT_DIR, project, ignore=shutil.ignore_patterns("_build"))
    files, dirs = project_files(project, "rebar3")
    (project / "Dockerfile").write_text(
        render_dockerfile(
            tool="rebar3",
            release="hello_erl",
            dependency_files=files,
            source_dirs=dirs,
            base_image=podman_image,
            build_args=["HELLO_ERL_VERSION"],
        )
    )
    deployment = make_erl_app(fleet, tmp_path, "podmanerl", project=project)
    settings = dict(deployment.data["build"])
    settings.update(strategy="docker", engine="podman", env={"HELLO_ERL_VERSION": "0.5.0"}, timeout=1800)
    deployment.rewrite(build=settings)
    yield deployment
    remove_app(deployment)


def test_podman_build_of_a_rebar3_project_deploys(podman_erl_app: App) -> None:
    lines: list[str] = []
    tarball = build.build(podman_erl_app.inventory(), log=lines.append)
    assert tarball.name == "hello_erl-0.5.0.tar.gz", "\n".join(lines[-20:])
    artifact = inspect_tarball(tarball, "hello_erl", expected_version=version_from_filename(tarball, "hello_erl"))
    platform = read_sidecar(tarball, artifact.sha256)
    assert platform is not None and platform.strategy == "docker" and platform.arch == os.uname().machine, platform
    report = api.deploy(podman_erl_app.inventory(), artifact).report
    assert report.ok, explain(report)
    assert podman_erl_app.versions() == {h.name: "0.5.0" for h in podman_erl_app.fleet.hosts}
