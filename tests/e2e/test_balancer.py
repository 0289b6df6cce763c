"""End to end: hooks at the seams and HAProxy draining, on real sshd hosts behind a real HAProxy.

The example (0.1.0) runs on h1-h3 of the session fleet; HAProxy runs inside h3 (its own network and
/run), with h1-h3 as servers and health checks on; deployer reaches its admin socket over SSH. Every
test asserts on what the hosts and the balancer really say afterwards: node pids, versions, the lock,
each server's state in HAProxy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer import api
from deployer.core.artifact import inspect_tarball
from deployer.operations.balancer import balancer_states
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet
from tests.harness.loadbalancer import Balancer, missing_tools

from .support import App, explain, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def lb(session_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, Balancer]]:
    if missing_tools():
        pytest.skip(f"not installed: {', '.join(missing_tools())} (bash scripts/install-lb-deps.sh)")
    app = make_app(session_fleet, tmp_path_factory.mktemp("lb"), "lb1", strategy={"kind": "rolling", "batch_size": 1})
    done = api.deploy(app.inventory(), inspect_tarball(build_hello("0.1.0"), "hello"))
    assert done.report.ok, explain(done.report)
    servers = {h.name: f"{h.address}:{app.port}" for h in session_fleet.hosts}
    balancer = Balancer(session_fleet, "h3", servers, port=app.port + 1000).start()
    app.rewrite(load_balancer=balancer.inventory_section(drain_timeout=10))
    try:
        yield app, balancer
    finally:
        balancer.stop()
        remove_app(app)


@pytest.fixture
def setup(lb: tuple[App, Balancer]) -> Iterator[tuple[App, Balancer]]:
    app, balancer = lb
    yield app, balancer
    # Each test leaves the fleet as it found it: no hooks, every server ready, no lock.
    app.data.pop("hooks", None)
    app.rewrite()
    for host in HOSTS:
        balancer.command(f"set server app/{host} state ready")


def pids(app: App) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for host in HOSTS:
        health = app.health(host)
        out[host] = int(health["os_pid"]) if health else None
    return out


def locked(app: App) -> list[str]:
    return [h for h in HOSTS if app.sh(h, f"test -d {app.deploy_to}/.lock && echo y || true").strip() == "y"]


def admin_drained(balancer: Balancer) -> dict[str, str]:
    return {name: state for name, state in balancer.admin_states().items() if state != "READY"}


def wait_serving(balancer: Balancer, timeout: float = 30) -> dict[str, str]:
    """HAProxy's health checks see every server UP again (rise 2 x 1 s) within ``timeout``."""
    deadline = time.monotonic() + timeout
    states = balancer.states()
    while time.monotonic() < deadline and set(states.values()) != {"UP"}:
        time.sleep(0.5)
        states = balancer.states()
    return states


def test_status_shows_each_servers_state(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    balancer.command("set server app/h2 state maint")
    states = balancer_states(app.inventory())
    assert set(states) == {"h3"}
    assert states["h3"]["h2"] == "MAINT" and states["h3"]["h1"] != "MAINT"
    # What the operator sees: `deployer status` (JSON and the table) names each server's state.
    argv = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "status", "--env", "e2e"]
    argv += ["--inventory-dir", str(app.inventory_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, timeout=180, check=False)
    assert json.loads(shown.stdout)["balancer"]["h3"]["h2"] == "MAINT", shown.stderr
    table = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    assert "load balancer h3:" in table.stderr and "h2 MAINT" in table.stderr, table.stderr


def test_a_restart_drains_each_host_and_puts_it_back(setup: tuple[App, Balancer], tmp_path: Path) -> None:
    app, balancer = setup
    before = pids(app)
    log = tmp_path / "hooks.log"
    app.rewrite(
        hooks={
            "before_stop": {"run": f'echo "$DEPLOYER_HOST $(date +%s.%N)" >> {log}'},
            "after_healthy": {"run": 'echo "$DEPLOYER_HOST $DEPLOYER_OPERATION" > /tmp/after_healthy', "on": "hosts"},
        }
    )
    report = api.restart(app.inventory()).report
    assert report.ok, explain(report)
    after = pids(app)
    assert all(after[h] is not None and after[h] != before[h] for h in HOSTS), (before, after)
    assert [line.split()[0] for line in log.read_text().splitlines()] == list(HOSTS)
    for host in HOSTS:
        assert app.sh(host, "cat /tmp/after_healthy").strip() == f"{host} restart"
    assert admin_drained(balancer) == {}
    assert wait_serving(balancer) == {h: "UP" for h in HOSTS}


def test_a_failing_before_deploy_hook_aborts_cleanly(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    before = pids(app)
    app.rewrite(hooks={"before_deploy": {"run": "echo 'change freeze' >&2; exit 3", "on": "hosts"}})
    report = api.deploy(app.inventory(), inspect_tarball(build_hello("0.2.0"), "hello")).report
    assert not report.ok and "change freeze" in (report.error or ""), explain(report)
    assert {h.outcome for h in report.hosts} == {"untouched"}
    assert pids(app) == before and app.versions() == {h: "0.1.0" for h in HOSTS}
    assert locked(app) == [] and admin_drained(balancer) == {}


def test_a_failing_before_stop_hook_leaves_its_host_running_and_serving(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    before = pids(app)
    app.rewrite(hooks={"before_stop": {"run": '[ "$DEPLOYER_HOST" != h2 ] || exit 9', "on": "hosts"}})
    report = api.restart(app.inventory()).report
    rows = {h.host: h for h in report.hosts}
    assert rows["h2"].outcome == "aborted" and rows["h2"].step == "hook before_stop", explain(report)
    assert rows["h1"].outcome == "success"
    assert pids(app)["h2"] == before["h2"]
    # h2 was drained before its hook failed: the run put it back and says so.
    assert admin_drained(balancer) == {}
    assert any(w.startswith("h2: was still drained") for w in report.warnings), explain(report)
    assert locked(app) == []


def test_an_unhealthy_release_is_reverted_and_returned_to_the_balancer(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    unhealthy = inspect_tarball(build_hello("0.2.0", variant="unhealthy"), "hello")
    report = api.deploy(app.inventory(), unhealthy, api.Options(hosts=["h1"])).report
    rows = {h.host: h for h in report.hosts}
    assert rows["h1"].outcome == "reverted", explain(report)
    assert app.versions()["h1"] == "0.1.0"
    assert admin_drained(balancer) == {}
    assert wait_serving(balancer)["h1"] == "UP"


def test_a_node_that_stays_down_is_reported_left_drained(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    # A start script that cannot start the node: the restart of h1 fails and has nothing to revert to.
    current = f"{app.deploy_to}/current"
    app.sh("h1", f"cp {current}/bin/hello /tmp/hello.bin && printf '#!/bin/sh\\nexit 1\\n' > {current}/bin/hello")
    try:
        report = api.restart(app.inventory(), api.Options(hosts=["h1"])).report
    finally:
        app.sh("h1", f"cp /tmp/hello.bin {current}/bin/hello")
    assert {h.host: h.outcome for h in report.hosts} == {"h1": "failed"}, explain(report)
    assert admin_drained(balancer) == {"h1": "DRAIN"}
    assert any(w.startswith("h1: left drained in app (server h1 on h3)") for w in report.warnings), explain(report)
    done = api.start(app.inventory(), api.Options(hosts=["h1"])).report
    assert done.ok, explain(done)
    assert admin_drained(balancer) == {}


def test_a_drained_server_is_restored_after_ctrl_c(setup: tuple[App, Balancer]) -> None:
    app, balancer = setup
    app.rewrite(hooks={"before_stop": {"run": "sleep 2", "on": "hosts"}})
    argv = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "restart", "--env", "e2e"]
    argv += ["--inventory-dir", str(app.inventory_dir)]
    proc = subprocess.Popen(
        argv, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not seen and proc.poll() is None:
        seen = admin_drained(balancer)
        time.sleep(0.1)
    assert seen, "no server was ever drained"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out
    assert "interrupt" in out.lower(), out
    assert admin_drained(balancer) == {}, out
    assert all(app.health(h) is not None for h in HOSTS)
    assert locked(app) == []


def test_the_generic_form_runs_the_drain_and_undrain_commands(setup: tuple[App, Balancer], tmp_path: Path) -> None:
    app, balancer = setup
    log = tmp_path / "generic.log"
    section: dict[str, Any] = {
        "drain": f'echo "out $DEPLOYER_LB_SERVER" >> {log}',
        "undrain": f'echo "in $DEPLOYER_LB_SERVER" >> {log}',
    }
    app.rewrite(load_balancer=section)
    try:
        report = api.restart(app.inventory()).report
    finally:
        app.rewrite(load_balancer=balancer.inventory_section(drain_timeout=10))
    assert report.ok, explain(report)
    assert log.read_text().split("\n")[:-1] == [f"{w} {h}" for h in HOSTS for w in ("out", "in")]
