"""End to end: a re-deploy of the release every host already runs, healthy, changes nothing on any host.

Real OTP nodes on the namespace fleet. "Nothing" is checked on the hosts themselves: the node is the same
process (pid and start time in the host's /proc), no release directory appeared, revisions.log and the
migrations did not grow. A changed environment, or ``restart``, deploys for real.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app

pytestmark = pytest.mark.fleet
_names = itertools.count(1)


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, f"same{next(_names)}")
    yield deployment
    remove_app(deployment)


def nodes(app: App) -> dict[str, tuple[int, str]]:
    """Per host: the node's OS pid (from the app itself) and that process's start time (the host's /proc)."""
    out = {}
    for host in app.fleet.hosts:
        health = app.health(host.name)
        assert health is not None, f"{host.name} is not healthy"
        pid = int(health["os_pid"])
        start = app.sh(host.name, f"cut -d ' ' -f 22 /proc/{pid}/stat").strip()
        out[host.name] = (pid, start)
    return out


def on_hosts(app: App, command: str) -> dict[str, str]:
    return {h.name: app.sh(h.name, command) for h in app.fleet.hosts}


def test_redeploy_of_the_running_release_touches_nothing(app: App) -> None:
    artifact = inspect_tarball(build_hello("0.1.0", migrations=2), "hello")
    first = api.deploy(app.inventory(), artifact)
    assert first.report.ok, explain(first.report)
    before = nodes(app)
    listing = f"ls -a {app.deploy_to}/releases {app.deploy_to}/artifacts; cat {app.deploy_to}/revisions.log"
    files = on_hosts(app, listing)
    migrations = app.migrations_log()

    again = api.deploy(app.inventory(), artifact)
    assert again.report.ok, explain(again.report)
    assert {h.outcome for h in again.report.hosts} == {"unchanged"}
    assert again.report.release == first.report.release and again.report.migrated_on is None
    assert all(h.uploaded_bytes == 0 and h.after == first.report.release for h in again.report.hosts)
    assert nodes(app) == before  # the very same processes: nothing was restarted
    assert on_hosts(app, listing) == files  # no release dir, no artifact, no history line
    assert app.migrations_log() == migrations

    # A changed environment is a real deploy: new release, new nodes, everywhere.
    app.rewrite(env={**app.data["env"], "clear": {**app.data["env"]["clear"], "HELLO_EXTRA": "1"}})
    changed = api.deploy(app.inventory(), artifact)
    assert changed.report.ok, explain(changed.report)
    assert {h.outcome for h in changed.report.hosts} == {"success"}
    assert changed.report.release != first.report.release
    moved = nodes(app)
    assert all(moved[h] != before[h] for h in before)

    # Unchanged again; restart=True restarts anyway.
    same = api.deploy(app.inventory(), artifact)
    assert {h.outcome for h in same.report.hosts} == {"unchanged"}, explain(same.report)
    assert nodes(app) == moved
    forced = api.deploy(app.inventory(), artifact, api.Options(restart=True))
    assert forced.report.ok, explain(forced.report)
    assert {h.outcome for h in forced.report.hosts} == {"success"}
    assert all(nodes(app)[h] != moved[h] for h in moved)
