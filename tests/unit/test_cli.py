"""The `deployer` console script, the package version, the changelog and the manual's generated pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

import deployer
from deployer.cli.docgen import render_tasks
from deployer.cli.program import main

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> int:
    """``deployer ARGS`` in this process; its exit status (Invoke exits 0 after --list and --version)."""
    try:
        main(["deployer", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_version_matches_pyproject_and_changelog() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert deployer.__version__ == pyproject["project"]["version"]
    assert f"## [{deployer.__version__}] - " in (REPO / "CHANGELOG.md").read_text()


def test_console_script_points_at_cli_main() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["deployer"] == "deployer.cli.program:console"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_the_console_script_exits_with_the_status_and_all_its_output() -> None:
    done = _python(
        "import sys\nfrom deployer.cli.program import console\nsys.argv = ['deployer', '--version']\nconsole()"
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"deployer {deployer.__version__}")
    done = _python("import sys\nfrom deployer.cli.program import console\nsys.argv = ['deployer', 'deplyo']\nconsole()")
    assert done.returncode == 2
    assert "deplyo" in done.stderr and "deploy" in done.stderr


def test_exit_now_runs_atexit_and_flushes_and_waits_for_working_threads() -> None:
    quick = _python(
        "import atexit\nfrom deployer.cli.program import exit_now\n"
        "atexit.register(lambda: print('atexit ran'))\nprint('buffered, not flushed')\nexit_now(5)"
    )
    assert quick.returncode == 5
    assert quick.stdout.splitlines() == ["buffered, not flushed", "atexit ran"]
    # A thread still working (not a daemon) is waited for, as an ordinary exit would.
    waited = _python(
        "import threading, time\nfrom deployer.cli.program import exit_now\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished'))).start()\nexit_now(3)"
    )
    assert (waited.returncode, waited.stdout.strip()) == (3, "thread finished")


def test_version_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--version") == 0
    assert capsys.readouterr().out.strip() == f"deployer {deployer.__version__}"
    assert run("--list") == 0
    listed = capsys.readouterr().out
    for name in ("deploy", "rollback", "migrate", "status", "init"):
        assert f"  {name} " in listed
    # The repository's own development tasks (test fleet, benchmark) are never shown to users.
    assert "fleet." not in listed and "bench" not in listed


def test_task_help_and_unknown_task() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "deployer.cli.program", "deploy", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: deployer deploy [--flags]" in done.stdout
    assert "--dry-run" in done.stdout and "--env=STRING" in done.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "deployer.cli.program", "nosuchtask"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert unknown.returncode == 2
    assert unknown.stderr == "error: deployer: no task named 'nosuchtask' (deployer --list lists the tasks)\n"


def test_missing_env_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("status") == 2
    assert "--env is required" in capsys.readouterr().err


def test_task_reference_is_current() -> None:
    run("--list")  # running the program must not change what the reference says
    assert render_tasks() == render_tasks()
    assert (REPO / "docs" / "tasks-reference.md").read_text() == render_tasks(), (
        "run: python -m deployer.cli.docgen tasks > docs/tasks-reference.md"
    )


def test_task_reference_covers_every_task_and_flag() -> None:
    from deployer.tasks import ns

    text = render_tasks()
    for name in ns.task_names:
        assert f"\n## {name}\n" in text, name
    assert "| `--dry-run` |" in text and "| `--[no-]edit-mix` |" in text
    assert "| `--lines=INT` | `100` |" in text  # logs: typed flags and defaults
    assert "inventory/&lt;env&gt;.yml" in text  # not an HTML tag


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_page_of_the_manual_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material" and config["strict"] is True
    nav = _nav_files(config["nav"])
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert [p for p in pages if p not in nav] == []
    for page in (
        "quickstart.md",
        "concepts.md",
        "failures.md",
        "inventory.md",
        "tasks-reference.md",
        "security.md",
        "troubleshooting.md",
        "building.md",
        "migrating.md",
        "adopting.md",
    ):
        assert page in nav
