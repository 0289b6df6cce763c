"""Build output streams while building: a live line (command, elapsed), the output in full on failure or
with --verbose, its tail in the error. Driven by fake build commands."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deployer.build import builder as build
from deployer.cli.build_progress import BuildProgress
from deployer.errors import ArtifactError

from .helpers import BASE, inventory


def local_build(tmp_path: Path, command: str) -> Any:
    project = tmp_path / "proj"
    project.mkdir(exist_ok=True)
    data = copy.deepcopy(BASE)
    data["build"] = {"path": str(project), "command": command, "tarball": "out/hello-*.tar.gz", "timeout": 60}
    return inventory(tmp_path, data), project


def test_the_output_arrives_while_the_build_still_runs(tmp_path: Path) -> None:
    # The build waits for a file the test writes only once it has seen the first line: without streaming,
    # the first line would only arrive after the build ended, and build.timeout would kill it.
    inv, project = local_build(
        tmp_path,
        "echo compiling; while [ ! -f go ]; do sleep 0.05; done; echo assembling; "
        "mkdir -p out && echo r > out/hello-0.1.0.tar.gz",
    )
    seen: list[str] = []

    def output(line: str) -> None:
        seen.append(line)
        if line == "compiling":
            (project / "go").touch()

    tarball = build.build(inv, output=output)
    assert seen == ["compiling", "assembling"] and tarball.name == "hello-0.1.0.tar.gz"


def test_a_failed_build_carries_the_tail_of_its_output(tmp_path: Path) -> None:
    inv, _ = local_build(tmp_path, "for i in $(seq 1 50); do echo line $i; done; echo 'error: boom' >&2; exit 3")
    seen: list[str] = []
    with pytest.raises(ArtifactError) as failed:
        build.build(inv, output=seen.append)
    message = str(failed.value)
    assert "build failed: `for i in" in message and "exited 3" in message
    assert message.splitlines()[-2:] == [
        "error: boom",
        "  -> fix the build, or deploy a prebuilt tarball with --tarball PATH",
    ]
    assert "line 50" in message and "line 5\n" not in message  # the last 30 lines, not all of them
    assert seen[0] == "line 1" and seen[-1] == "error: boom"  # the whole output went to the display


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_line_names_the_command_and_the_elapsed_time() -> None:
    clock = Clock()
    progress = BuildProgress(Console(file=io.StringIO()), "mix release", "local", clock=clock)
    with progress:
        clock.now += 72
        assert progress.line() == "building (local): mix release  1m12s"
        progress.output("==> hello")
        assert progress.line() == "building (local): mix release  1m12s  | ==> hello"


def _run(verbose: bool, fail: bool) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200)
    try:
        with BuildProgress(console, "mix release", "local", verbose=verbose) as progress:
            progress.log("podman build: podman build ...")
            for i in range(1, 6):
                progress.output(f"compile step {i}")
            if fail:
                raise ArtifactError("build failed")
    except ArtifactError:
        assert fail
    return buffer.getvalue()


def test_output_is_hidden_on_success_shown_in_full_on_failure_and_live_with_verbose() -> None:
    quiet = _run(verbose=False, fail=False)
    assert "compile step" not in quiet and "podman build: podman build" in quiet and "built in" in quiet
    failed = _run(verbose=False, fail=True)
    assert "build output (5 lines):" in failed
    assert all(f"| compile step {i}" in failed for i in range(1, 6)) and "build failed after" in failed
    verbose = _run(verbose=True, fail=False)
    assert all(f"| compile step {i}" in verbose for i in range(1, 6))
    verbose_failed = _run(verbose=True, fail=True)
    assert verbose_failed.count("compile step 1") == 1  # already shown live: not repeated
