"""``deployer init``: the task around :func:`deployer.build.init.init_project`, and what it prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from invoke.context import Context
from invoke.tasks import task

from deployer.build.dockerfile import DEFAULT_BASE_IMAGE
from deployer.build.init import InitResult, init_project
from deployer.cli.common import usage_error
from deployer.errors import DeployerError


@task(
    name="init",
    positional=[],
    auto_shortflags=False,
    help={
        "path": "The project directory (default: the current directory).",
        "force": "Overwrite files that already exist, keeping the old content in <file>.bak.",
        "edit_mix": "Edit mix.exs (a releases: entry with :tar) or rebar.config (vm_args_src) when needed (on).",
        "tasks_py": "Also write tasks.py (from deployer.tasks import ns) for running the tasks with invoke.",
        "docker": "Build in a container: write a multi-stage Dockerfile and .dockerignore, build.strategy: docker.",
        "base_image": f"With --docker: the build stage's base image (default {DEFAULT_BASE_IMAGE}).",
    },
)
def init(
    c: Context,
    path: str = ".",
    force: bool = False,
    edit_mix: bool = True,
    tasks_py: bool = False,
    docker: bool = False,
    base_image: str = "",
) -> None:
    """Adopt deployer in an existing Mix or rebar3 project: inventories, and what the release needs.

    Detects the app and release name, flavour, build command and tarball (and Phoenix, Ecto, the endpoint's
    port) and writes inventory/defaults.yml (the shared settings, once), inventory/staging.yml and
    inventory/prod.yml (hosts, strategy; placeholder hosts). Mix projects without one get lib/<app>/release.ex
    with migrate/0 and rollback/2, and a releases: entry with steps: [:assemble, :tar] in mix.exs; rebar3
    projects get config/vm.args.src with deployer's node name and no cookie. tasks.py only with --tasks-py.
    Existing files are never overwritten without --force (which keeps <file>.bak); skipped files are listed.
    With --docker also a multi-stage Dockerfile (Debian packages of Erlang/Elixir or rebar3, dependency
    layers before the sources, only the tarball exported) and build.strategy: docker.
    """
    if base_image and not docker:
        raise usage_error("--base-image only applies with --docker")
    try:
        result = init_project(
            path,
            force=force,
            edit_mix=edit_mix,
            tasks_py=tasks_py,
            docker=docker,
            base_image=base_image or DEFAULT_BASE_IMAGE,
        )
    except (DeployerError, OSError) as exc:
        raise usage_error(str(exc)) from None
    print_result(result)


def print_result(result: InitResult, out: TextIO | None = None) -> None:
    """What init did, file by file, its notes, and the next commands (on stderr: for people)."""
    stream = out if out is not None else sys.stderr
    project = result.project
    base = project.root

    def show(path: Path) -> str:
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    def emit(text: str) -> None:
        print(text, file=stream)

    emit(
        f"{project.tool} project {project.app}: release {project.release} ({project.flavour}), "
        f"build `{project.build_command}`, tarball {project.tarball}"
    )
    what = (
        ("wrote", result.written, ""),
        ("overwrote", result.overwritten, " (the previous content is in {path}.bak)"),
        ("unchanged", result.unchanged, ""),
        ("updated", result.updated, ""),
        ("skipped", result.skipped, " (exists and differs; --force overwrites it, keeping a .bak)"),
    )
    for verb, paths, detail in what:
        for path in paths:
            emit(f"  {verb:<9} {show(path)}" + detail.format(path=show(path)))
    for note in result.notes:
        emit(f"note: {note}")
    emit(
        "next: replace the example hosts in inventory/staging.yml, then `deployer trust --env staging`, "
        "`deployer check --env staging`, `deployer deploy --env staging --dry-run` and `deployer deploy --env staging`"
    )
