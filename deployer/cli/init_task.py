"""``deployer init``: the task around :func:`deployer.build.init.init_project`, and what it prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from invoke.context import Context
from invoke.tasks import task

from deployer.build.init import InitResult, init_project
from deployer.cli.common import usage_error
from deployer.errors import DeployerError


@task(
    name="init",
    positional=[],
    auto_shortflags=False,
    help={
        "path": "The project directory (default: the current directory).",
        "force": "Overwrite files that already exist (default: skip them and say so).",
        "edit_mix": "Add a releases: entry with the :tar step to mix.exs when it has none (default on).",
    },
)
def init(c: Context, path: str = ".", force: bool = False, edit_mix: bool = True) -> None:
    """Adopt deployer in an existing Mix or rebar3 project: tasks.py, inventories, a release-tasks module.

    Detects the app and release name, flavour, build command and tarball from mix.exs or rebar.config and
    writes tasks.py, inventory/staging.yml and inventory/prod.yml (commented, with placeholder hosts) and,
    for Mix projects without one, lib/<app>/release.ex with migrate/0 and rollback/2. A mix.exs without
    releases: gets one with steps: [:assemble, :tar] (--no-edit-mix: only print it). Existing files are
    never overwritten without --force; the files skipped are listed.
    """
    try:
        result = init_project(path, force=force, edit_mix=edit_mix)
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
    for path in result.written:
        emit(f"  wrote    {show(path)}")
    for path in result.updated:
        emit(f"  updated  {show(path)}")
    for path in result.skipped:
        emit(f"  skipped  {show(path)} (exists; --force overwrites it)")
    for note in result.notes:
        emit(f"note: {note}")
    emit(
        "next: replace the example hosts in inventory/staging.yml, then `deployer trust --env staging`, "
        "`deployer deploy --env staging --dry-run` and `deployer deploy --env staging`"
    )
