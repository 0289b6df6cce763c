"""`deployer init --docker`: a multi-stage Dockerfile for the project, build.strategy: docker, never an
overwrite without --force (which keeps a .bak)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.build.dockerfile import DEFAULT_BASE_IMAGE
from deployer.build.init import InitError, init_project
from deployer.core.inventory import load_inventory

from .helpers import deployer_cli
from .test_init import MIX_NEW, mix_project, rebar_project


def test_a_mix_project_gets_a_dockerfile_and_a_docker_inventory(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "demo")
    (root / "mix.lock").write_text("%{}\n")
    (root / "config").mkdir()
    result = init_project(root, docker=True)
    written = {p.relative_to(root).as_posix() for p in result.written}
    assert {"Dockerfile", ".dockerignore", "inventory/defaults.yml"} <= written
    dockerfile = (root / "Dockerfile").read_text()
    assert f"ARG BUILDER_IMAGE={DEFAULT_BASE_IMAGE}" in dockerfile
    lines = dockerfile.splitlines()
    # Dependency layers before the sources: a source change keeps them cached.
    assert lines.index("COPY mix.exs mix.lock ./") < lines.index("COPY config config") < lines.index("COPY lib lib")
    assert "find _build -name 'demo_app-*.tar.gz'" in dockerfile and "FROM scratch AS release" in dockerfile
    assert "_build/" in (root / ".dockerignore").read_text()
    for env in ("staging", "prod"):
        build = load_inventory(env, root / "inventory", resolve_secrets=False).config.build
        assert (build.strategy, build.dockerfile, build.engine) == ("docker", "Dockerfile", "auto")


def test_the_base_image_is_configurable_and_checked(tmp_path: Path) -> None:
    root = rebar_project(tmp_path / "relapp")
    init_project(root, docker=True, base_image="debian:trixie-slim")
    dockerfile = (root / "Dockerfile").read_text()
    assert "ARG BUILDER_IMAGE=debian:trixie-slim" in dockerfile and "rebar3 as prod tar" in dockerfile
    with pytest.raises(InitError, match="not an image reference"):
        init_project(tmp_path / "relapp", docker=True, base_image="debian; rm -rf /", force=True)


def test_an_existing_dockerfile_is_kept_unless_force_and_then_backed_up(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "demo")
    (root / "Dockerfile").write_text("FROM mine\n")
    again = init_project(root, docker=True)
    assert root / "Dockerfile" in again.skipped and (root / "Dockerfile").read_text() == "FROM mine\n"
    forced = init_project(root, docker=True, force=True)
    assert root / "Dockerfile" in forced.overwritten
    assert (root / "Dockerfile.bak").read_text() == "FROM mine\n"
    assert (root / "Dockerfile").read_text().startswith("# syntax=docker/dockerfile:1")


def test_distillery_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    root = mix_project(
        tmp_path / "dist", MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', '{:distillery, "~> 2.1"},')
    )
    with pytest.raises(InitError, match="not Distillery"):
        init_project(root, docker=True)
    assert not (root / "inventory").exists() and not (root / "Dockerfile").exists()


def test_the_task_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = mix_project(tmp_path / "demo")
    assert deployer_cli("init", "--path", str(root), "--base-image", "debian:trixie") == 2
    assert "--base-image only applies with --docker" in capsys.readouterr().err
    assert deployer_cli("init", "--path", str(root), "--docker", "--base-image", "debian:trixie") == 0
    err = capsys.readouterr().err
    assert "wrote     Dockerfile" in err and "ARG BUILDER_IMAGE=debian:trixie" in (root / "Dockerfile").read_text()
    assert (
        deployer_cli("init", "--path", str(root), "--docker") == 0
    )  # the default image now differs: kept, not overwritten
    assert "skipped   Dockerfile" in capsys.readouterr().err
