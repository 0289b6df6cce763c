"""Build strategies: inventory settings, the source archive, the build-host scripts (run with a local sh),
the exact docker command line, and picking the exported tarball."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from deployer.build import builder as build
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
    assert build.docker_command(config, project, project / "_build" / "deployer") == [
        "docker", "build",
        "--file", f"{project}/deploy/Dockerfile",
        "--target", "release",
        "--platform", "linux/arm64",
        "--build-arg", "BUILDER_IMAGE=hexpm/elixir:1.16.2-erlang-26.2.5-debian-bookworm-20240513",
        "--build-arg", "HEX_MIRROR",
        "--build-arg", "MIX_ENV",
        "--output", f"type=local,dest={project}/_build/deployer",
        str(project),
    ]  # fmt: skip


def test_docker_command_minimal(tmp_path: Path) -> None:
    config = inventory(tmp_path, with_build(strategy="docker")).config
    assert build.docker_command(config, tmp_path, tmp_path / "out") == [
        "docker", "build", "--file", f"{tmp_path}/Dockerfile", "--output", f"type=local,dest={tmp_path}/out",
        str(tmp_path),
    ]  # fmt: skip


def test_docker_unavailable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert build.docker_unavailable() == "the docker command is not installed"


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
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    config = inventory(tmp_path, with_build(strategy="docker", path=str(tmp_path))).config
    monkeypatch.setattr(build, "docker_unavailable", lambda: "no Docker engine answers `docker info`: down")
    with pytest.raises(ArtifactError, match="cannot build with Docker: no Docker engine"):
        build.build_in_docker(config, tmp_path)


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
