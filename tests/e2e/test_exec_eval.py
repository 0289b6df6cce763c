"""End to end: ``exec`` and ``eval`` on the example deployed to real sshd hosts, through the API and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer import api
from deployer.core.artifact import inspect_tarball
from deployer.operations import commands
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, cli, explain, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def app(session_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path_factory.mktemp("exec"), "ex1")
    done = api.deploy(deployment.inventory(), inspect_tarball(build_hello("0.1.0"), "hello"))
    assert done.report.ok, explain(done.report)
    yield deployment
    remove_app(deployment)


def secret(app: App) -> str:
    path = Path(app.data["env"]["secrets_file"])
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name == "HELLO_SECRET":
            return value.strip().strip("'\"")
    raise AssertionError("no HELLO_SECRET in the fleet's secrets file")


def test_exec_runs_in_current_on_every_host(app: App) -> None:
    rows = commands.exec_command(app.inventory(), "readlink -f . && id -un")
    assert [r.host for r in rows] == list(HOSTS)
    for row in rows:
        assert row.ok, row
        where, user = row.stdout.split()
        assert where == app.sh(row.host, f"readlink -f {app.deploy_to}/current").strip()
        assert user == app.data["ssh"]["user"]


def test_exec_failures_name_the_host_and_keep_the_others(app: App) -> None:
    result = cli(app, "exec", "--json", "--command", '[ "$(hostname)" != h2 ] || { echo nope >&2; exit 7; }; echo fine')
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    rows = {r["host"]: r for r in document["hosts"]}
    assert not document["ok"]
    assert (rows["h2"]["exit_status"], rows["h2"]["ok"]) == (7, False) and "nope" in rows["h2"]["stderr"]
    assert rows["h1"]["stdout"] == "fine\n" and rows["h3"]["ok"]
    assert "h2: the command exited with status 7" in result.stderr


def test_eval_runs_inside_each_node_with_secrets_masked(app: App) -> None:
    value = secret(app)
    rows = commands.eval_expression(app.inventory(**{"HELLO_SECRET": value}), 'IO.puts(System.get_env("HELLO_SECRET"))')
    for row in rows:
        assert row.ok, row
        assert value not in row.stdout and "********" in row.stdout
    human = cli(app, "eval", "--expression", "1 + 41")
    assert human.returncode == 0, human.stderr
    assert human.stdout.count("42") == 3 and all(f"== {h}" in human.stdout for h in HOSTS)


def test_eval_failures_name_the_host(app: App) -> None:
    rows = commands.eval_expression(app.inventory(), 'raise "boom"', api.Options(hosts=["h3"]))
    assert [(r.host, r.ok) for r in rows] == [("h3", False)]
    assert rows[0].error and "exited with status" in rows[0].error
    assert "boom" in rows[0].stdout + rows[0].stderr
