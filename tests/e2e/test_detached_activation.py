"""Activation survives the controlling connection: a restart whose SSH link is cut half-way finishes on the
host by itself, and after a reconnect ``await_outcome`` reads what happened; the host runs what it says."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.core.facts import parse_outcome
from deployer.core.plan import health_check, layout_for
from deployer.errors import ConnectError
from deployer.operations import release as api
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.ssh.endpoints import ssh_connector
from deployer.ssh.transport import Transport
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app


def reconnect(connect: Callable[[], Transport], attempts: int = 30) -> Transport:
    """Connect again once the link is back (the neighbour entry may still say "no route" for a moment)."""
    for _ in range(attempts - 1):
        try:
            return connect()
        except ConnectError:
            time.sleep(1)
    return connect()


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, "detached")
    deployment.data["ssh"].update({"connect_timeout": 4, "keepalive": 1, "keepalive_count": 2})
    deployment.rewrite(hosts=deployment.data["hosts"][:1], migrate=None)
    yield deployment
    session_fleet.restore_link("h1")
    remove_app(deployment)


def test_a_restart_cut_off_from_its_connection_finishes_and_its_outcome_is_read_after_a_reconnect(app: App) -> None:
    first = api.deploy(app.inventory(), inspect_tarball(build_hello("0.1.0", migrations=2), "hello"))
    assert first.report.ok, explain(first.report)
    before = app.health("h1")
    assert before is not None
    inventory = app.inventory()
    layout = layout_for(inventory)
    script = oc.restart(layout, flavour("mix"), health=health_check(inventory), stop_timeout=20, run_id="restart-cut-1")
    connect = ssh_connector(inventory)
    transport = connect(inventory.hosts[0])
    cut = threading.Event()

    def on_output(stream: str, text: str) -> None:
        # The link goes down as soon as the host says the new node is being started.
        if "@@step start" in text and not cut.is_set():
            cut.set()
            app.fleet.cut_link("h1")

    try:
        result = transport.run(script, on_output=on_output)
    except Exception:  # the transport may raise or report a lost connection: both are "cut off"
        result = None
    finally:
        transport.close()
    assert cut.is_set()
    assert result is None or not result.ok
    app.fleet.restore_link("h1")

    again = reconnect(lambda: connect(inventory.hosts[0]))
    try:
        outcome = parse_outcome(again.run(rc.await_outcome(layout, "restart-cut-1", 120)).stdout)
    finally:
        again.close()
    assert outcome.state == "finished" and outcome.status == 0 and outcome.step == "health", outcome
    # What the host runs: a new node, healthy, the one recorded.
    after = app.health("h1")
    assert after is not None and after["os_pid"] != before["os_pid"]
    recorded = app.sh("h1", f"cat {app.deploy_to}/shared/node.pid").split()[0]
    assert recorded == after["os_pid"]
