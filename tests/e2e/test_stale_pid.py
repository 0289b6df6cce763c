"""A pid is trusted only when it is the node of this deploy_to.

A ``node.pid`` left behind (after a reboot, a crash, a kill) that now names an unrelated live process must
never be signalled: ``stop`` says nothing runs and leaves it alone, ``start`` starts the node instead of
saying "already running", and ``status`` reports the real node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import node as ops
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, "stalepid")
    deployment.rewrite(hosts=deployment.data["hosts"][:1], migrate=None)
    yield deployment
    remove_app(deployment)


def alive(app: App, pid: str) -> bool:
    return app.sh("h1", f"kill -0 {pid} 2>/dev/null && echo yes || echo no").strip() == "yes"


def test_a_stale_pid_file_naming_an_unrelated_process_is_never_signalled(app: App) -> None:
    first = api.deploy(app.inventory(), inspect_tarball(build_hello("0.1.0", migrations=2), "hello"))
    assert first.report.ok, explain(first.report)
    stopped = ops.lifecycle(app.inventory(), "stop")
    assert stopped.report.ok, explain(stopped.report)
    # An unrelated process of the same user, and a pid file naming it (as after a reboot or a kill -9).
    other = app.sh("h1", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!").strip()
    try:
        app.sh("h1", f"echo {other} > {app.deploy_to}/shared/node.pid")

        again = ops.lifecycle(app.inventory(), "stop")
        assert again.report.ok, explain(again.report)
        assert alive(app, other), "stop signalled a process that is not the node"

        app.sh("h1", f"echo {other} > {app.deploy_to}/shared/node.pid")
        started = ops.lifecycle(app.inventory(), "start")
        assert started.report.ok, explain(started.report)
        assert alive(app, other)
        health = app.health("h1")
        assert health is not None and health["version"] == "0.1.0"
        assert health["os_pid"] != other
        recorded = app.sh("h1", f"cat {app.deploy_to}/shared/node.pid").split()[0]
        assert recorded == health["os_pid"]

        [row] = ops.status(app.inventory())
        assert row.facts is not None and row.facts.node_pids == (int(health["os_pid"]),)
        assert row.health is not None and row.health.state == "ok"
    finally:
        app.sh("h1", f"kill {other} 2>/dev/null || true")
