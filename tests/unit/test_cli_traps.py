"""The traps a new user fell into, each closed, driven through the real `deployer` program.

No host is touched here: the operations are replaced by recorders (or run against deployer.testing's fake
fleet), so each test can say exactly what did or did not happen: a refused flag means no build, no lock and
no connection at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from deployer.cli import release_tasks
from deployer.cli.common import speak_deployer
from deployer.cli.program import main
from deployer.cli.run import Common
from deployer.core import inventory as inventory_module
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.testing import FakeFleet

from .helpers import BASE, release_tarball, write_inventory

INVOKE_PROGRAM_OPTIONS = ("--dry", "-R", "--pty", "--warn-only", "--write-pyc", "--echo", "--hide", "--command-timeout")


def run(*args: str) -> int:
    """``deployer ARGS`` in this process; its exit status."""
    try:
        main(["deployer", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with inventory/test.yml (three hosts) as the current directory."""
    write_inventory(tmp_path / "inventory", BASE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HELLO_SECRET", "s3cr3t-value")
    return tmp_path


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every piece of real work a task starts: build, deploy, rollback, lifecycle, probes."""
    done: list[str] = []

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            done.append(name)
            raise AssertionError(f"{name} must not run")

        return record

    monkeypatch.setattr(release_tasks.build, "build", recorder("build"))
    for name in ("deploy", "rollback", "migrate", "status", "unlock"):
        monkeypatch.setattr(api, name, recorder(name))
    for name in ("lifecycle", "status", "check", "logs", "console"):
        monkeypatch.setattr(ops, name, recorder(name))
    yield done


# --- the program's own options ---------------------------------------------------------------------------


def test_help_shows_only_deployers_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    text = capsys.readouterr().out
    assert "--list" in text and "--version" in text and "--help" in text and "deploy " in text
    for option in INVOKE_PROGRAM_OPTIONS:
        assert f"{option} " not in text and f"{option}=" not in text and f"{option}," not in text, option
    assert "fleet." not in text and "bench" not in text


@pytest.mark.parametrize("option", INVOKE_PROGRAM_OPTIONS)
def test_invoke_program_options_are_refused(
    option: str, project: Path, work: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("deploy", "--env", "test", option) == 2
    assert run(option, "deploy", "--env", "test") == 2
    assert work == []
    err = capsys.readouterr().err
    assert f"no flag {option}" in err or f"no option {option}" in err


@pytest.mark.parametrize("flag", ["--dry", "--dryrun", "--dry_run", "--dry-rn", "-n", "--Dry-Run"])
def test_a_dry_run_lookalike_never_deploys(
    flag: str, project: Path, work: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    tarball = release_tarball(project / "hello-0.1.0.tar.gz")
    assert run("deploy", "--env", "test", "--tarball", str(tarball), flag) == 2
    assert work == []
    err = capsys.readouterr().err
    assert err == f"error: deployer deploy: no flag {flag}; did you mean --dry-run? (nothing was done)\n"


def test_dry_run_on_a_task_without_one_is_refused(project: Path, work: list[str], capsys: Any) -> None:
    assert run("status", "--env", "test", "--dry-run") == 2
    assert work == []
    assert "this task has no dry run" in capsys.readouterr().err


# --- help and mistakes ---------------------------------------------------------------------------------------


def test_a_mistyped_task_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("depoy", "--env", "prod") == 2
    assert capsys.readouterr().err == (
        "error: deployer: no task named 'depoy'; did you mean deploy? (deployer --list lists the tasks)\n"
    )
    assert run("rolback") == 2
    assert "did you mean rollback?" in capsys.readouterr().err


def test_a_mistyped_flag_suggests_the_closest(project: Path, work: list[str], capsys: Any) -> None:
    assert run("deploy", "--env", "test", "--hots", "web1") == 2
    assert "no flag --hots; did you mean --hosts?" in capsys.readouterr().err
    assert work == []


def test_help_and_help_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("help") == 0
    assert "Usage: deployer <task> [--flags]" in capsys.readouterr().out
    assert run("help", "deploy") == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: deployer deploy [--flags]") and "--batch-size" in out
    assert run("help", "depoy") == 2
    assert "did you mean deploy?" in capsys.readouterr().err


def test_hidden_host_alias_is_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    for task in ("logs", "console", "observer", "trust", "unlock", "status"):
        assert run("help", task) == 0
        out = capsys.readouterr().out
        assert "--hosts=STRING" in out and "--host=" not in out, task


# --- flags checked before any work ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "error: --batch-size 0: must be at least 1"),
        (["--batch-size", "abc"], "error: --batch-size 'abc': expected a number of hosts like 2 or a percentage"),
        (["--batch-size", "150%"], "error: --batch-size 150%: a percentage must be between 1% and 100%"),
        (["--batch-size", "0%"], "error: --batch-size 0%: a percentage must be between 1% and 100%"),
        (["--max-fail", "abc"], "error: --max-fail 'abc': expected a number of hosts like 2 or a percentage"),
        (["--max-fail", "101%"], "error: --max-fail 101%: a percentage must be between 0% and 100%"),
        (["--pause", "-1"], "error: --pause -1: must be a number of seconds, 0 or more"),
        (["--pause", "soon"], "error: --pause 'soon': expected a number of seconds"),
        (["--pause", "nan"], "error: --pause nan: must be a number of seconds, 0 or more"),
        (["--strategy", "random"], "error: --strategy 'random': expected parallel or rolling"),
        (["--hosts", "web9"], "error: "),
    ],
)
@pytest.mark.parametrize("task", ["deploy", "rollback", "restart", "start", "stop"])
def test_bad_flags_exit_2_before_any_work(
    task: str,
    args: list[str],
    message: str,
    project: Path,
    work: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(task, "--env", "test", *args) == 2
    assert work == [], f"{task} {args} started work before refusing the flag"
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    if args[0] == "--hosts":
        assert "no host named web9" in err and "web1, web2, web3" in err


def test_a_bad_flag_is_refused_before_the_inventory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no inventory here at all

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the inventory was read")

    monkeypatch.setattr(inventory_module, "load_inventory", never)
    assert run("deploy", "--env", "prod", "--batch-size", "abc") == 2
    assert "--batch-size 'abc'" in capsys.readouterr().err


def test_typed_flags_say_which_flag(project: Path, work: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--env", "test", "--hosts", "web1", "--lines", "abc") == 2
    assert capsys.readouterr().err == "error: --lines 'abc': expected a whole number\n"
    assert work == []


# --- one vocabulary: --hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["logs", "console", "observer"])
def test_session_tasks_take_exactly_one_host_under_hosts(
    task: str, project: Path, work: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(task, "--env", "test", "--hosts", "web1,web2") == 2
    assert capsys.readouterr().err == (
        f"error: {task} works on one host at a time, got --hosts web1,web2: run it once per host\n"
    )
    assert run(task, "--env", "test") == 2
    assert f"{task} works on one host: name it with --hosts NAME" in capsys.readouterr().err
    assert work == []


def test_the_old_host_flag_still_works(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    monkeypatch.setattr(ops, "logs", lambda inventory, host, **kwargs: seen.append(host))
    assert run("logs", "--env", "test", "--host", "web2") == 0
    assert run("logs", "--env", "test", "--hosts", "web3") == 0
    assert seen == ["web2", "web3"]


def test_hints_speak_deployer_with_the_real_environment() -> None:
    assert speak_deployer("run `invoke trust --env <env> --host h1` first", "prod") == (
        "run `deployer trust --env prod --hosts h1` first"
    )
    assert speak_deployer("if its process is gone, `invoke unlock --env staging` removes it", "staging") == (
        "if its process is gone, `deployer unlock --env staging` removes it"
    )
    assert speak_deployer("check `invoke status`", "prod") == "check `deployer status --env prod`"
    assert speak_deployer("`invoke releases --env ENV` lists them", "qa") == "`deployer releases --env qa` lists them"


# --- dry run, output rule ------------------------------------------------------------------------------------


def _fake_fleet(monkeypatch: pytest.MonkeyPatch) -> FakeFleet:
    fleet = FakeFleet(probe_output={h["name"]: "now=1\narch=x86_64\nwritable=1\n" for h in BASE["hosts"]})
    original = Common.options

    def options(self: Common, cancel: Any = None, **extra: Any) -> api.Options:
        made = original(self, cancel, **extra)
        made.connector = fleet.connect
        return made

    monkeypatch.setattr(Common, "options", options)
    monkeypatch.setattr(api, "generate_cookie", lambda: SecretStr("c00kie"), raising=False)
    return fleet


def test_dry_run_prints_the_plan_not_the_scripts(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = _fake_fleet(monkeypatch)
    tarball = release_tarball(project / "hello-0.1.0.tar.gz")
    assert run("deploy", "--env", "test", "--tarball", str(tarball), "--dry-run", "--batch-size", "2") == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # people's output only: stderr
    err = captured.err
    assert "Plan: deploy in test" in err and "phases: lock every host -> upload -> prepare" in err
    assert "batch 1: web1, web2" in err and "batch 2: web3" in err
    assert "web1: (nothing) -> " in err
    assert "upload (tarball on stdin), prepare, migrate (once, before any switch), activate" in err
    assert "--verbose also prints the exact remote scripts" in err
    assert "#!/bin/sh" not in err and "set -eu" not in err and len(err.splitlines()) < 40
    assert set(fleet.names()) <= {"probe"}  # a dry run only probes

    assert run("deploy", "--env", "test", "--tarball", str(tarball), "--dry-run", "--verbose") == 0
    verbose = capsys.readouterr().err
    assert "--- activate: sh -s <<SCRIPT" in verbose and len(verbose.splitlines()) > 100


def test_json_goes_to_stdout_and_everything_else_to_stderr(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_fleet(monkeypatch)
    tarball = release_tarball(project / "hello-0.1.0.tar.gz")
    for json_flag in ([], ["--json"]):
        assert run("deploy", "--env", "test", "--tarball", str(tarball), "--hosts", "web1", *json_flag) == 0
        captured = capsys.readouterr()
        assert "deploy: OK" in captured.err and "release hello 0.1.0" in captured.err
        if json_flag:
            assert json.loads(captured.out)["operation"] == "deploy"
        else:
            assert captured.out == ""


def test_config_prints_the_merged_inventory_with_secrets_masked(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "inventory" / "defaults.yml").write_text("strategy:\n  kind: rolling\n  batch_size: 2\n")
    data = {**BASE, "env": {**BASE["env"], "clear": {**BASE["env"]["clear"], "DB_PASSWORD": "hunter2"}}}
    write_inventory(project / "inventory", data)
    assert run("config", "--env", "test") == 0
    captured = capsys.readouterr()
    import yaml

    shown = yaml.safe_load(captured.out)
    assert shown["strategy"]["kind"] == "rolling" and shown["strategy"]["batch_size"] == 2  # from defaults.yml
    assert shown["env"]["clear"]["DB_PASSWORD"] == "<masked>" and "hunter2" not in captured.out + captured.err
    assert "s3cr3t-value" not in captured.out + captured.err
    assert "env.clear.DB_PASSWORD looks secret" in captured.err


def test_unlock_force_reaches_the_operation(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def unlock(inventory: Any, options: api.Options, **kwargs: Any) -> dict[str, Any]:
        seen.append(bool(kwargs.get("force", options.force)))
        return {}

    monkeypatch.setattr(api, "unlock", unlock)
    assert run("unlock", "--env", "test") == 0
    assert run("unlock", "--env", "test", "--force") == 0
    assert seen == [False, True]


# --- checks that catch what will fail ------------------------------------------------------------------------


def test_a_dry_run_reports_a_missing_secret_with_its_key(
    project: Path, work: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HELLO_SECRET")
    tarball = release_tarball(project / "hello-0.1.0.tar.gz")
    assert run("deploy", "--env", "test", "--tarball", str(tarball), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "inventory/test.yml: env.secret.HELLO_SECRET: HELLO_SECRET is not set in the environment" in err
    assert work == []


def test_check_reports_a_missing_secret(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ops, "check", lambda *args, **kwargs: [])
    assert run("check", "--env", "test", "--json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    monkeypatch.delenv("HELLO_SECRET")
    # A missing secret is bad input: exit 2 with the file and key path, before any host is probed.
    assert run("check", "--env", "test", "--json") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "env.secret.HELLO_SECRET" in captured.err


def test_invokes_own_dry_option_is_refused_in_a_projects_tasks_py(project: Path, work: list[str]) -> None:
    """`invoke --dry deploy` (a project's tasks.py): Invoke's echo option is not taken for a dry run."""
    from invoke.config import Config
    from invoke.context import Context
    from invoke.exceptions import Exit

    from deployer.cli import ops_tasks

    dry = Context(Config(overrides={"run": {"dry": True}}))
    for task in (release_tasks.deploy, release_tasks.rollback, ops_tasks.restart, ops_tasks.status):
        with pytest.raises(Exit) as refused:
            task(dry, env="test")
        assert refused.value.code == 2 and "not a dry run: use --dry-run" in str(refused.value.message)
    assert work == []
