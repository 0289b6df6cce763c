"""Build strategies: inventory settings, the source archive, the build-host scripts (run with a local sh),
the exact container engine command line, choosing the engine, reading its log, and the docker strategy
with a stand-in engine."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from deployer.build import builder as build
from deployer.core.artifact import sha256_file
from deployer.core.compat import read_sidecar
from deployer.core.config import BuildHostConfig
from deployer.errors import ArtifactError
from deployer.ssh.endpoints import endpoint

from .helpers import BASE, inventory
from .test_inventory import load_error


def with_build(**settings: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["build"] = settings
    return data


# --- inventory --------------------------------------------------------------------------------------------


def test_local_is_the_default_strategy(tmp_path: Path) -> None:
    config = inventory(tmp_path).config.build
    assert config.strategy == "local" and config.output == "_build/deployer" and config.host is None


def test_host_strategy_needs_a_host(tmp_path: Path) -> None:
    assert load_error(tmp_path, with_build(strategy="host")).endswith(
        "test.yml: build.host: is required with strategy `host`: "
        "an inventory host name or name/address of a build machine"
    )


def test_build_host_naming_an_unknown_inventory_host(tmp_path: Path) -> None:
    assert load_error(tmp_path, with_build(strategy="host", host="web9")).endswith(
        "test.yml: build.host: no host named 'web9' in hosts"
    )


@pytest.mark.parametrize("output", ["../elsewhere", "/abs", ".", "./"])
def test_output_must_stay_inside_the_project(tmp_path: Path, output: str) -> None:
    assert "build.output" in load_error(tmp_path, with_build(output=output))


def test_docker_references_are_checked(tmp_path: Path) -> None:
    assert "build.image: 'a b' is not a valid image reference" in load_error(tmp_path, with_build(image="a b"))
    assert "build.target" in load_error(tmp_path, with_build(target="$(id)"))


def test_build_host_by_name_uses_that_hosts_connection_settings(tmp_path: Path) -> None:
    inv = inventory(tmp_path, with_build(strategy="host", host="web2", timeout=99))
    ep = build.build_host_endpoint(inv)
    assert (ep.name, ep.address, ep.user, ep.port) == ("web2", "10.0.0.2", "deploy", 22)
    assert ep.command_timeout == 99
    assert ep == dataclasses.replace(endpoint(inv, inv.config.hosts[1]), command_timeout=99)


def test_build_host_of_its_own(tmp_path: Path) -> None:
    data = with_build(strategy="host", host={"name": "builder", "address": "10.9.9.9", "port": 2222, "user": "ci"})
    data["ssh"] = {"user": "deploy", "known_hosts": "known_hosts"}
    inv = inventory(tmp_path, data)
    assert isinstance(inv.config.build.host, BuildHostConfig)
    ep = build.build_host_endpoint(inv)
    assert (ep.name, ep.address, ep.port, ep.user) == ("builder", "10.9.9.9", 2222, "ci")
    assert ep.known_hosts == (str(tmp_path / "inventory" / "known_hosts"),)  # strict, the project's file


# --- source archive -------------------------------------------------------------------------------------


def test_source_archive_leaves_out_build_output_deps_and_git(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    for name in (
        "mix.exs",
        "lib/app.ex",
        "deps/dep/mix.exs",
        "_build/prod/x.beam",
        ".git/HEAD",
        "apps/a/_build/y",
        "apps/a/lib/deps/keep.ex",
        "_build/deployer/old.tar.gz",
        "rel/env.sh.eex",
    ):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    (project / "rel" / "env.sh.eex").chmod(0o755)
    names = build.source_archive(project, tmp_path / "src.tar.gz", exclude=["_build/deployer"])
    files = {n for n in names if (project / n).is_file()}
    assert files == {"mix.exs", "lib/app.ex", "apps/a/lib/deps/keep.ex", "rel/env.sh.eex"}
    with tarfile.open(tmp_path / "src.tar.gz") as tar:
        members = {m.name: m for m in tar}
    assert members["rel/env.sh.eex"].mode & 0o111  # modes kept
    assert {m.uid for m in members.values()} == {0} and {m.uname for m in members.values()} == {""}


# --- build host scripts, run with a local sh ------------------------------------------------------------


def test_receive_source_is_an_argv_script_unpacking_stdin_into_a_fresh_dir(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "a.erl").write_text("-module(a).\n")
    build.source_archive(project, tmp_path / "src.tar.gz")
    workdir = tmp_path / "area" / "app-1"
    script = build.receive_source_script(str(workdir))
    assert not script.stdin and script.remote_command().startswith("sh -c ")
    with (tmp_path / "src.tar.gz").open("rb") as data:
        done = subprocess.run(["sh", "-c", script.render()], stdin=data, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (workdir / "src" / "a.erl").read_text() == "-module(a).\n"
    with (tmp_path / "src.tar.gz").open("rb") as data:  # never into an existing directory
        again = subprocess.run(["sh", "-c", script.render()], stdin=data, capture_output=True, check=False)
    assert again.returncode != 0


def run_build_script(workdir: Path, command: str, glob: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    script = build.remote_build_script(str(workdir), command, glob, env, 60)
    return subprocess.run(["sh", "-s"], input=script.render(reveal=True), capture_output=True, text=True, check=False)


def test_build_script_reports_the_newest_tarball_and_the_platform(tmp_path: Path) -> None:
    command = (
        "mkdir -p _build/prod && echo old > _build/prod/app-0.0.9.tar.gz && sleep 1 && "
        'echo "$V" > _build/prod/app-1.0.0.tar.gz; echo building'
    )
    done = run_build_script(tmp_path / "w", command, "_build/prod/app-*.tar.gz", {"V": "it's $HOME"})
    assert done.returncode == 0, done.stderr
    assert "building" in done.stderr and "building" not in done.stdout  # the build's output is not data
    found = build.parse_build_output(done.stdout)
    assert found["tarball"] == f"{tmp_path}/w/_build/prod/app-1.0.0.tar.gz"
    assert Path(found["tarball"]).read_text() == "it's $HOME\n"  # env values arrive verbatim
    assert found["size"] == str(len("it's $HOME\n"))
    assert "arch=" in done.stdout and "libc=" in done.stdout


def test_build_script_fails_when_the_build_fails_or_writes_nothing(tmp_path: Path) -> None:
    failed = run_build_script(tmp_path / "a", "echo broken >&2; exit 3", "*.tar.gz", {})
    assert failed.returncode == 3 and "broken" in failed.stderr
    nothing = run_build_script(tmp_path / "b", "true", "_build/*.tar.gz", {})
    assert nothing.returncode != 0 and "no tarball matching _build/*.tar.gz" in nothing.stderr


def test_build_script_does_not_run_the_glob(tmp_path: Path) -> None:
    done = run_build_script(tmp_path / "w", "true", "$(touch pwned)*.tar.gz", {})
    assert done.returncode != 0 and not (tmp_path / "w" / "pwned").exists()


def test_parse_build_output_refuses_incomplete_reports() -> None:
    with pytest.raises(ArtifactError):
        build.parse_build_output("tarball=/x\nsize=12\n")


# --- docker ---------------------------------------------------------------------------------------------


def test_docker_command_is_exact(tmp_path: Path) -> None:
    data = with_build(
        strategy="docker",
        path="app",
        dockerfile="deploy/Dockerfile",
        image="hexpm/elixir:1.16.2-erlang-26.2.5-debian-bookworm-20240513",
        target="release",
        platform="linux/arm64",
        env={"MIX_ENV": "prod", "HEX_MIRROR": "https://hex.example"},
    )
    config = inventory(tmp_path, data).config
    project = tmp_path / "app"
    assert build.docker_command(config, project, project / "_build" / "deployer", engine="podman") == [
        "podman", "build",
        "--file", f"{project}/deploy/Dockerfile",
        "--network", "host",
        "--target", "release",
        "--platform", "linux/arm64",
        "--build-arg", "BUILDER_IMAGE=hexpm/elixir:1.16.2-erlang-26.2.5-debian-bookworm-20240513",
        "--build-arg", "HEX_MIRROR",
        "--build-arg", "MIX_ENV",
        "--output", f"type=local,dest={project}/_build/deployer",
        str(project),
    ]  # fmt: skip


def test_docker_command_minimal(tmp_path: Path) -> None:
    config = inventory(tmp_path, with_build(strategy="docker", network="default")).config
    assert config.build.engine == "auto"
    assert build.docker_command(config, tmp_path, tmp_path / "out") == [
        "docker", "build", "--file", f"{tmp_path}/Dockerfile", "--output", f"type=local,dest={tmp_path}/out",
        str(tmp_path),
    ]  # fmt: skip


@pytest.mark.parametrize("engine", ["podman", "docker", "/usr/bin/podman", "auto"])
def test_engine_setting_accepts_commands_and_paths(tmp_path: Path, engine: str) -> None:
    assert inventory(tmp_path, with_build(strategy="docker", engine=engine)).config.build.engine == engine


@pytest.mark.parametrize("engine", ["podman build", "docker;id", "$(id)", "../podman", "-v", ""])
def test_engine_setting_refuses_what_is_not_a_command(tmp_path: Path, engine: str) -> None:
    assert "build.engine" in load_error(tmp_path, with_build(strategy="docker", engine=engine))


def _engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """Executables named after the keys (their bodies: shell), alone on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_docker_unavailable_says_why_for_each_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _engines(tmp_path, monkeypatch)
    assert build.docker_unavailable("podman") == "the podman command is not installed"
    assert build.docker_unavailable() == "the docker command is not installed; the podman command is not installed"


def test_auto_skips_a_docker_cli_without_a_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _engines(
        tmp_path,
        monkeypatch,
        docker='echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2; exit 1\n',
        podman="exit 0\n",
    )
    assert build.resolve_engine() == ("podman", None)
    assert build.resolve_engine("docker") == (
        None,
        f"no engine answers `{bin_dir}/docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock",
    )
    (bin_dir / "podman").unlink()
    assert build.resolve_engine()[1] == (
        f"no engine answers `{bin_dir}/docker info`: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock; the podman command is not installed"
    )


# A podman 4.3 log of a rebuild after a change in lib/ (abridged from a real run).
PODMAN_REBUILD_LOG = """\
[1/2] STEP 1/12: FROM localhost/bookworm-base AS build
[1/2] STEP 2/12: RUN apt-get update  && apt-get install -y elixir
--> Using cache eef2de377bb8662ba9c83307da1b255c88237ef2b5af1e9e3cb8da30f014be4b
--> eef2de377bb
[1/2] STEP 3/12: COPY mix.exs ./
--> Using cache 40f698927349faea2a1da16edd1308afc301ce9a6a640cd773aa08b4a2868882
--> 40f69892734
[1/2] STEP 4/12: RUN mix deps.get --only prod
--> Using cache a6bb2658271f7b1b8a68c0b7399d177f3f2f3cb504d3f83a7b5ff9999f8e17b4
--> a6bb2658271
[1/2] STEP 5/12: COPY lib lib
--> 4f830e40a56
[1/2] STEP 6/12: RUN mix release --overwrite
Using cache in the middle of a line does not count
--> d9f3568aa8c
[2/2] STEP 1/2: FROM scratch AS release
[2/2] STEP 2/2: COPY --from=build /out/ /
--> 649e5828367
"""


def test_cached_steps_of_a_podman_rebuild() -> None:
    assert build.cached_steps(PODMAN_REBUILD_LOG.splitlines()) == [
        ("FROM localhost/bookworm-base AS build", False),
        ("RUN apt-get update  && apt-get install -y elixir", True),
        ("COPY mix.exs ./", True),
        ("RUN mix deps.get --only prod", True),
        ("COPY lib lib", False),
        ("RUN mix release --overwrite", False),
        ("FROM scratch AS release", False),
        ("COPY --from=build /out/ /", False),
    ]


def test_cached_steps_of_a_classic_docker_build() -> None:
    log = "Step 1/3 : FROM debian\n ---> 1a2b\nStep 2/3 : COPY mix.exs ./\n ---> Using cache\n ---> 3c4d\n"
    log += "Step 3/3 : COPY lib lib\n ---> 5e6f\n"
    assert build.cached_steps(log.splitlines()) == [
        ("FROM debian", False),
        ("COPY mix.exs ./", True),
        ("COPY lib lib", False),
    ]


def test_pick_tarball(tmp_path: Path) -> None:
    (tmp_path / "hello-0.1.0.tar.gz").write_bytes(b"x")
    assert build.pick_tarball(tmp_path, "hello").name == "hello-0.1.0.tar.gz"
    (tmp_path / "deps.tar.gz").write_bytes(b"x")
    assert build.pick_tarball(tmp_path, "hello").name == "hello-0.1.0.tar.gz"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "hello-0.2.0.tar.gz").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"exactly one release tarball; found: hello-0\.1\.0\.tar\.gz, sub/hello"):
        build.pick_tarball(tmp_path, "hello")


def test_docker_strategy_refuses_without_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _engines(tmp_path, monkeypatch, podman="echo 'cannot connect to Podman socket' >&2; exit 125\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    config = inventory(tmp_path, with_build(strategy="docker", path=str(tmp_path), engine="podman")).config
    with pytest.raises(ArtifactError, match=r"cannot build with a container engine \(build.engine: podman\): no en"):
        build.build_in_docker(config, tmp_path)


# A stand-in engine: answers `info`; `build` prints podman-like steps, then writes into the `--output`
# directory what the rendered Dockerfile's release stage holds (the tarball and the platform probe).
FAKE_ENGINE = """\
[ "$1" = info ] && exit 0
for arg; do case "$arg" in type=local,dest=*) dest=${arg#type=local,dest=} ;; esac; done
echo "[1/2] STEP 1/3: COPY mix.exs ./"
echo "--> Using cache 40f698927349"
echo "[1/2] STEP 2/3: COPY lib lib"
echo "--> 4f830e40a56"
echo "built HELLO_VERSION=$HELLO_VERSION" >&2
[ -n "$FAIL" ] && { echo "Error: building at STEP \\"RUN mix release\\": exit status 1" >&2; exit 3; }
[ -n "$SLOW" ] && sleep 30
echo release > "$dest/hello-$HELLO_VERSION.tar.gz"
printf 'arch=aarch64\\nlibc=ldd (Debian GLIBC 2.36-9+deb12u4) 2.36\\nopenssl=OpenSSL 3.0.11 19 Sep 2023\\n' \\
  > "$dest/deployer-platform.txt"
"""


def _fake_engine_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[Any, Path]:
    bin_dir = _engines(tmp_path, monkeypatch, podman=FAKE_ENGINE)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "Dockerfile").write_text("FROM scratch\n")
    data = with_build(
        strategy="docker", path=str(project), engine="podman", image="localhost/bookworm-base", **settings
    )
    return inventory(tmp_path, data), project


def test_docker_build_streams_the_log_and_records_the_containers_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv, project = _fake_engine_build(tmp_path, monkeypatch, env={"HELLO_VERSION": "0.9.0"})
    lines: list[str] = []
    tarball = build.build(inv, log=lines.append)
    assert tarball == project / "_build" / "deployer" / "hello-0.9.0.tar.gz"
    # The probe became the sidecar: it is not left among the exported files.
    exported = sorted(p.name for p in tarball.parent.iterdir())
    assert exported == ["hello-0.9.0.tar.gz", "hello-0.9.0.tar.gz.platform.json"]
    platform = read_sidecar(tarball, sha256_file(tarball))
    assert platform is not None
    assert (platform.arch, platform.libc, platform.openssl, platform.strategy, platform.machine) == (
        "aarch64",
        "ldd (Debian GLIBC 2.36-9+deb12u4) 2.36",
        "OpenSSL 3.0.11 19 Sep 2023",
        "docker",
        "localhost/bookworm-base",
    )
    assert lines[0].startswith(f"podman build: podman build --file {project}/Dockerfile --network host ")
    assert "built HELLO_VERSION=0.9.0" in lines  # the value travelled in the environment
    assert lines[-1] == "1 of 2 build steps reused cached layers"


def test_docker_build_failure_shows_the_engines_last_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv, project = _fake_engine_build(tmp_path, monkeypatch)
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(ArtifactError) as caught:
        build.build(inv)
    message = str(caught.value)
    assert message.startswith(f"podman build failed (exit 3) in {project}\n")
    assert message.splitlines()[-2:] == [
        'Error: building at STEP "RUN mix release": exit status 1',
        "  -> the last lines above are the engine's; fix the Dockerfile step that failed",
    ]


def test_docker_build_is_killed_after_the_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv, _ = _fake_engine_build(tmp_path, monkeypatch, timeout=1)
    monkeypatch.setenv("SLOW", "1")
    with pytest.raises(ArtifactError, match=r"killed: the build took longer than build.timeout, 1s"):
        build.build(inv)


# --- local ----------------------------------------------------------------------------------------------


def test_local_build_records_the_machine_beside_the_tarball(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    data = with_build(
        path=str(project), command="mkdir -p out && echo release > out/hello-0.1.0.tar.gz", tarball="out/hello-*.tar.gz"
    )
    tarball = build.build(inventory(tmp_path, data))
    assert tarball == project / "out" / "hello-0.1.0.tar.gz"
    record = read_sidecar(tarball)
    assert record is not None and record.strategy == "local" and record.arch
    tarball.write_text("rebuilt elsewhere\n")
    assert read_sidecar(tarball, "0" * 64) is None  # a record is only trusted for its own tarball
