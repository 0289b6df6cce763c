"""End to end: the Erlang example (rebar3 / relx) deployed like the Elixir one, migrations included.

deploy 0.1.0 (migrations 1, 2), deploy 0.2.0 (migration 3 applied once, in a fresh VM booted from the
release's own ERTS), roll back, migrate again (nothing applied twice). The relx node gets its name from
``vm.args.src`` (``-name ${RELEASE_NODE}``), its cookie from ``$HOME/.erlang.cookie`` (never from argv),
and writes nothing into the release directory.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello_erl
from tests.harness.fleet import Fleet

from .build_support import make_erl_app
from .support import App, explain, remove_app

_names = itertools.count(1)


@pytest.fixture(scope="module")
def erl_tarballs() -> dict[str, Path]:
    return {"0.1.0": build_hello_erl("0.1.0", migrations=2), "0.2.0": build_hello_erl("0.2.0", migrations=3)}


@pytest.fixture
def erl_app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_erl_app(session_fleet, tmp_path, f"erl{next(_names)}", keep_releases=3)
    yield deployment
    remove_app(deployment)


def deploy(app: App, path: Path) -> api.Result:
    return api.deploy(app.inventory(), inspect_tarball(path, "hello_erl"))


def test_rebar3_release_deploy_upgrade_rollback_migrate(erl_app: App, erl_tarballs: dict[str, Path]) -> None:
    app = erl_app
    hosts = [h.name for h in app.fleet.hosts]

    first = deploy(app, erl_tarballs["0.1.0"])
    assert first.report.ok, explain(first.report)
    assert first.report.migrated_on == "h1"
    assert app.versions() == {h: "0.1.0" for h in hosts}
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0"]
    v1 = first.report.release
    health = app.health("h2")
    assert health is not None and health["migrations"] == [1, 2]
    assert health["node"] == f"{app.name}@127.0.0.1"  # from vm.args.src: -name ${RELEASE_NODE}
    old_pids = {h: app.health(h)["os_pid"] for h in hosts}  # type: ignore[index]

    # The cookie is in no argv of the VM, and relx rendered vm.args outside the release, privately.
    cookie = app.sh("h2", f"cat {app.deploy_to}/shared/.cookie").strip()
    argv = app.sh("h2", f"tr '\\0' ' ' < /proc/{old_pids['h2']}/cmdline")
    assert "-name" in argv and cookie not in argv
    assert app.sh("h2", f"stat -c %a {app.deploy_to}/shared/tmp/relx").strip() == "700"
    rendered = app.sh("h2", f"ls {app.deploy_to}/shared/tmp/relx").split()
    assert "vm.args" in rendered, rendered
    leftovers = app.sh("h2", f"find {app.deploy_to}/releases/{v1} -newer {app.deploy_to}/releases/{v1}/bin -type f")
    assert leftovers.strip() == "", f"written into the release directory: {leftovers}"
    assert app.sh("h2", f"ls {app.deploy_to}/shared/tmp/log").split().count("erlang.log.1") == 1

    second = deploy(app, erl_tarballs["0.2.0"])
    assert second.report.ok, explain(second.report)
    v2 = second.report.release
    assert app.versions() == {h: "0.2.0" for h in hosts}
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0", "3 0.2.0"]
    for host in hosts:
        assert app.current(host) == f"releases/{v2}"
        alive = app.sh(host, f"test -d /proc/{old_pids[host]} && echo alive || echo gone").strip()
        assert alive == "gone", f"{host}: the old node {old_pids[host]} is still running"

    back = api.rollback(app.inventory())
    assert back.report.ok, explain(back.report)
    assert app.versions() == {h: "0.1.0" for h in hosts}
    assert all(app.current(h) == f"releases/{v1}" for h in hosts)

    migrated = api.migrate(app.inventory())
    assert migrated.report.ok, explain(migrated.report)
    assert app.migrations_log() == ["1 0.1.0", "2 0.1.0", "3 0.2.0"]


def test_rebar3_node_crashing_at_boot_is_reverted_not_waited_on_forever(
    session_fleet: Fleet, tmp_path: Path, erl_tarballs: dict[str, Path]
) -> None:
    """relx's `daemon` polls until the node answers, without end; a node that dies at boot must neither
    hang the deploy nor stay switched: the wait is bounded, the health gate fails, the host is reverted."""
    app = make_erl_app(session_fleet, tmp_path, f"erl{next(_names)}")
    app.rewrite(hosts=[h for h in app.data["hosts"] if h["name"] == "h1"])  # one host is enough here
    app.rewrite(health={**app.data["health"], "deadline": 20})
    try:
        first = deploy(app, erl_tarballs["0.1.0"])
        assert first.report.ok, explain(first.report)
        # The next release gets an environment the application cannot boot with (HELLO_PORT is not a number).
        app.rewrite(env={**app.data["env"], "clear": {**app.data["env"]["clear"], "HELLO_PORT": "not-a-port"}})
        started = time.monotonic()
        second = deploy(app, erl_tarballs["0.2.0"])
        assert time.monotonic() - started < 300
        assert not second.report.ok
        (host,) = second.report.hosts
        assert host.outcome == "reverted", explain(second.report)
        assert app.current("h1") == f"releases/{first.report.release}"
        health = app.health("h1")
        assert health is not None and health["version"] == "0.1.0"
    finally:
        remove_app(app)
