"""End to end: hot code upgrades (``deployer upgrade``) of the relx example ``examples/hello_relup``.

deploy 1.0.0 to every host, build state over HTTP, upgrade in place to 1.1.0 (a relup from 1.0.0 whose
appup changes the counter server's state format through ``code_change/3``): on every host the node keeps
its OS pid, the state survived in its new form and the new code answers. Then a rollback downgrades in
place through the relup's down instructions. Refusals (a release without a relup, a running version the
relup does not upgrade from) change nothing, or fall back to a restart deploy when allowed; an install
that fails is reverted by a restart on the previous release and stops the rollout. A hot upgrade whose
SSH link is cut at any moment goes on on the host; the report then says what the host really runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer import api as public
from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from deployer.operations import upgrade as hot
from deployer.operations.status import status_document
from tests.harness.examples import HELLO_RELUP_PROJECT_DIR, build_hello_relup
from tests.harness.fleet import Fleet

from .support import App, Recorder, explain, make_app, remove_app

pytestmark = pytest.mark.fleet

_names = itertools.count(1)
APP = "hello_relup"


@pytest.fixture(scope="module")
def tarballs() -> dict[str, Path]:
    return {
        "v1": build_hello_relup("1.0.0"),
        "v1.0.1": build_hello_relup("1.0.1"),
        "v2": build_hello_relup("1.1.0", relup_from="1.0.0"),
        "v2-norelup": build_hello_relup("1.1.0"),
        "v2-bad": build_hello_relup("1.1.0", "bad_code_change", relup_from="1.0.0"),
    }


def make_relup_app(fleet: Fleet, tmp_path: Path, name: str, **overrides: Any) -> App:
    """An inventory for examples/hello_relup on ``fleet`` (rebar3 flavour), with a migration to run once."""
    app = make_app(
        fleet,
        tmp_path,
        name,
        app={"name": APP, "flavour": "rebar3"},
        build={
            "path": str(HELLO_RELUP_PROJECT_DIR),
            "command": "rebar3 as prod tar",
            "tarball": f"_build/prod/rel/{APP}/{APP}-*.tar.gz",
        },
        # Runs in a fresh VM of the new release before any host changes; it leaves a trace in the data dir.
        migrate={
            "eval": 'file:write_file(os:getenv("HELLO_DATA_DIR") ++ "/migrated", <<"x">>, [append])',
            "timeout": 300,
        },
        **overrides,
    )
    app.rewrite(
        health={
            "http": f"http://127.0.0.1:{app.port}/health",
            "rpc": "true = is_pid(whereis(hello_relup_counter))",
            "deadline": 120,
        }
    )
    app.db_dir.mkdir(parents=True, exist_ok=True)
    app.db_dir.chmod(0o777)
    return app


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_relup_app(session_fleet, tmp_path, f"relup{next(_names)}", keep_releases=3)
    yield deployment
    remove_app(deployment)


def get(app: App, host: str, path: str) -> Any:
    out = app.sh(host, f"curl -fsS --max-time 10 http://127.0.0.1:{app.port}{path}")
    return out if path == "/" else json.loads(out)


def count(app: App, host: str, name: str, times: int) -> None:
    for _ in range(times):
        app.sh(host, f"curl -fsS --max-time 10 -X POST http://127.0.0.1:{app.port}/count/{name}")


def deploy(app: App, tarball: Path, **options: Any) -> api.Result:
    return api.deploy(app.inventory(), inspect_tarball(tarball, APP), api.Options(**options))


def upgrade(app: App, tarball: Path, fallback: hot.Fallback = "refuse", **options: Any) -> api.Result:
    return hot.upgrade(app.inventory(), inspect_tarball(tarball, APP), api.Options(**options), fallback=fallback)


def hosts(app: App) -> list[str]:
    return [h.name for h in app.fleet.hosts]


def pids(app: App) -> dict[str, str]:
    return {h: get(app, h, "/health")["os_pid"] for h in hosts(app)}


def revisions(app: App, host: str) -> list[dict[str, Any]]:
    lines = app.sh(host, f"cat {app.deploy_to}/revisions.log").splitlines()
    return [json.loads(line.split("\t", 1)[1]) for line in lines if "\t" in line]


def test_hot_upgrade_keeps_the_node_and_converts_its_state_then_rolls_back_in_place(
    app: App, tarballs: dict[str, Path]
) -> None:
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    for index, host in enumerate(hosts(app)):
        count(app, host, "apples", index + 2)
        count(app, host, "pears", 1)
    before = pids(app)
    for host in hosts(app):
        assert get(app, host, "/state")["state"] == {
            "format": 1,
            "counts": {"apples": hosts(app).index(host) + 2, "pears": 1},
        }
    migrated = (app.db_dir / "migrated").read_text()

    result = upgrade(app, tarballs["v2"])
    report = result.report
    assert report.ok, explain(report)
    assert report.migrated_on == "h1" and (app.db_dir / "migrated").read_text() == migrated + "x"
    v2 = report.release
    assert pids(app) == before, "a node was restarted"
    for index, host in enumerate(hosts(app)):
        state = get(app, host, "/state")
        assert state["version"] == "1.1.0" and state["generation"] == 2
        assert state["state"] == {
            "format": 2,
            "counts": {"apples": index + 2, "pears": 1},
            "total": index + 3,
            "converted_from": "1",
        }
        assert get(app, host, "/") == "hello from hello_relup 1.1.0 (code generation 2)\n"
        count(app, host, "apples", 1)
        assert get(app, host, "/state")["state"]["total"] == index + 4  # the new code runs on the new state
        # current is the new release (a restart boots it); the node still runs from the old root.
        assert app.current(host) == f"releases/{v2}"
        root = app.sh(host, f"readlink /proc/{before[host]}/cwd; ls -l /proc/{before[host]}/exe")
        assert f"releases/{v1}/erts-" in root, root
        last = revisions(app, host)[-1]
        assert (last["event"], last["outcome"], last["release"], last["root"]) == ("hot-upgrade", "success", v2, v1)

    # status knows: current is v2, the node runs from v1's directory.
    document = status_document(api.status(app.inventory()))
    assert {h["host"]: (h["current"], h["hot_root"]) for h in document["hosts"]} == {h: (v2, v1) for h in hosts(app)}

    # Rollback goes back in place through the relup's down instructions: same pid, state in format 1.
    back = api.rollback(app.inventory())
    assert back.report.ok, explain(back.report)
    assert pids(app) == before
    for index, host in enumerate(hosts(app)):
        state = get(app, host, "/state")
        assert state["version"] == "1.0.0" and state["generation"] == 1
        assert state["state"] == {"format": 1, "counts": {"apples": index + 3, "pears": 1}}
        assert app.current(host) == f"releases/{v1}"
        assert revisions(app, host)[-1]["event"] == "hot-downgrade"

    # The hot-upgraded release is still a release like any other: a restart deploy of it boots it fresh.
    again = api.rollback(app.inventory(), to=v2)
    assert again.report.ok, explain(again.report)
    after = pids(app)
    for host in hosts(app):
        assert after[host] != before[host]
        assert get(app, host, "/health")["version"] == "1.1.0"
        assert get(app, host, "/state")["state"]["format"] == 2


def test_a_release_without_relup_is_refused_or_falls_back_to_a_restart(app: App, tarballs: dict[str, Path]) -> None:
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    before = pids(app)

    refused = upgrade(app, tarballs["v2-norelup"]).report
    assert not refused.ok
    assert "cannot hot-upgrade" in (refused.error or "") and "carries no relup" in (refused.error or ""), explain(
        refused
    )
    assert "--fallback restart" in (refused.error or "") or "fallback" in explain(refused)
    assert pids(app) == before
    assert all(app.current(h) == f"releases/{v1}" for h in hosts(app))
    assert all(app.releases(h) == [v1] for h in hosts(app)), "a refused upgrade left a release behind"

    fell_back = upgrade(app, tarballs["v2-norelup"], fallback="restart").report
    assert fell_back.ok, explain(fell_back)
    assert any("a restart deploy instead" in w and "carries no relup" in w for w in fell_back.warnings)
    after = pids(app)
    for host in hosts(app):
        assert after[host] != before[host]
        assert get(app, host, "/health")["version"] == "1.1.0"
        assert revisions(app, host)[-1]["event"] == "deploy"


def test_an_unsupported_running_version_is_refused(app: App, tarballs: dict[str, Path]) -> None:
    first = deploy(app, tarballs["v1.0.1"])
    assert first.report.ok, explain(first.report)
    before = pids(app)
    refused = upgrade(app, tarballs["v2"]).report
    assert not refused.ok
    assert "the node runs 1.0.1, and the relup of 1.1.0 upgrades only from 1.0.0" in (refused.error or ""), explain(
        refused
    )
    assert pids(app) == before
    assert all(get(app, h, "/health")["version"] == "1.0.1" for h in hosts(app))


def test_a_failing_install_is_reverted_and_stops_the_rollout(app: App, tarballs: dict[str, Path]) -> None:
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    for host in hosts(app):
        count(app, host, "plums", 2)
    before = pids(app)

    report = upgrade(app, tarballs["v2-bad"], strategy={"kind": "rolling", "batch_size": 1}).report
    assert not report.ok
    outcomes = {h.host: h.outcome for h in report.hosts}
    assert outcomes == {"h1": "reverted", "h2": "untouched", "h3": "untouched"}, explain(report)
    h1 = report.hosts[0]
    assert h1.after == v1 and h1.error, explain(report)
    # h1 restarted on 1.0.0 (the state of a process whose code change failed is not trusted);
    # the others were never touched: same node, same state.
    assert get(app, "h1", "/health")["version"] == "1.0.0"
    assert app.current("h1") == f"releases/{v1}"
    for host in ("h2", "h3"):
        assert get(app, host, "/health")["os_pid"] == before[host]
        assert get(app, host, "/state")["state"] == {"format": 1, "counts": {"plums": 2}}
    events = [(r["event"], r["outcome"]) for r in revisions(app, "h1")[-2:]]
    assert events == [("hot-upgrade", "failed"), ("revert", "success")]

    # The root of h1's node was restored: the good upgrade now goes through in place.
    good = upgrade(app, tarballs["v2"]).report
    assert good.ok, explain(good)
    assert pids(app)["h2"] == before["h2"]
    assert all(get(app, h, "/health")["version"] == "1.1.0" for h in hosts(app))


def test_a_restart_boots_the_new_version_and_a_restart_rollback_restores_the_old_root(
    app: App, tarballs: dict[str, Path]
) -> None:
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    upgraded = upgrade(app, tarballs["v2"])
    assert upgraded.report.ok, explain(upgraded.report)
    v2 = upgraded.report.release
    hot_pids = pids(app)

    # A restart boots what `current` names: the new version, from its own clean directory.
    restarted = public.restart(app.inventory())
    assert restarted.report.ok, explain(restarted.report)
    fresh = pids(app)
    for host in hosts(app):
        assert fresh[host] != hot_pids[host]
        assert get(app, host, "/health")["version"] == "1.1.0"
        exe = app.sh(host, f"ls -l /proc/{fresh[host]}/exe")
        assert f"releases/{v2}/erts-" in exe, exe

    # The node no longer runs in v1's directory: the rollback restarts on v1, whose directory (changed by the
    # hot upgrade) is first put back as extracted, so it boots 1.0.0 as its only, permanent release.
    back = api.rollback(app.inventory())
    assert back.report.ok, explain(back.report)
    for host in hosts(app):
        assert get(app, host, "/health")["version"] == "1.0.0"
        assert app.current(host) == f"releases/{v1}"
        root = f"{app.deploy_to}/releases/{v1}"
        assert app.sh(host, f"cat {root}/releases/start_erl.data").split()[1] == "1.0.0"
        assert app.sh(host, f"ls {root}/releases").split() == ["1.0.0", "RELEASES", "hello_relup.rel", "start_erl.data"]
        assert app.sh(host, f"ls {root}/lib | grep hello_relup").split() == ["hello_relup-1.0.0"]

    # ... and the hot upgrade works again from there.
    before = pids(app)
    again = upgrade(app, tarballs["v2"])
    assert again.report.ok, explain(again.report)
    assert pids(app) == before
    assert all(get(app, h, "/state")["state"]["format"] == 2 for h in hosts(app))


# --- the link cut during a hot upgrade --------------------------------------------------------------------


class CutAt(Recorder):
    """Cuts h1's link when its activation reports step ``marker``; the link comes back when deployer reconnects."""

    def __init__(self, app: App, marker: str) -> None:
        super().__init__()
        self.app = app
        self.marker = f"@@step {marker}"
        self.cut = False
        self.seen = ""
        self.on("h1", "reconnect", "start", lambda: app.fleet.restore_link("h1"))

    def output(self, host: str, stream: str, text: str) -> None:
        if host != "h1" or stream != "stderr" or self.cut:
            return
        self.seen = (self.seen + text)[-4000:]  # a marker may arrive split over two chunks
        if self.marker in self.seen:
            self.cut = True
            self.app.fleet.cut_link("h1")


@pytest.fixture
def one_host(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_relup_app(session_fleet, tmp_path, f"relupcut{next(_names)}", keep_releases=3)
    # The loss is noticed within seconds (keepalives), as the detached-activation tests do.
    deployment.data["ssh"].update({"connect_timeout": 4, "keepalive": 1, "keepalive_count": 2})
    deployment.rewrite(hosts=deployment.data["hosts"][:1], migrate=None)
    yield deployment
    session_fleet.restore_link("h1")
    remove_app(deployment)


@pytest.mark.parametrize(
    "marker",
    ["check-version", "unpack", "install", "permanent"],
    ids=["before-the-switch", "while-unpacking", "while-installing", "while-making-permanent"],
)
def test_a_hot_upgrade_cut_off_from_its_link_finishes_and_is_reported_upgraded(
    one_host: App, tarballs: dict[str, Path], marker: str
) -> None:
    app = one_host
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    count(app, "h1", "apples", 3)
    pid = get(app, "h1", "/health")["os_pid"]

    events = CutAt(app, marker)
    try:
        report = hot.upgrade(app.inventory(), inspect_tarball(tarballs["v2"], APP), api.Options(events=events)).report
    finally:
        app.fleet.restore_link("h1")
    assert events.cut and ("h1", "reconnect", "start") in events.steps, "the link was never lost"
    assert ("h1", "await-outcome", "done") in events.steps, "the host's own outcome was not read"

    # The host went on alone and finished: the same node runs 1.1.0 with its state converted, and the
    # report says so (no restart, no revert).
    row = report.hosts[0]
    assert report.ok and (row.outcome, row.after, row.known) == ("success", report.release, True), explain(report)
    assert report.operation == "upgrade"
    health = get(app, "h1", "/health")
    assert (health["os_pid"], health["version"]) == (pid, "1.1.0"), "the node was restarted or not upgraded"
    assert get(app, "h1", "/state")["state"]["counts"] == {"apples": 3}
    assert app.current("h1") == f"releases/{report.release}"
    events_logged = [(r["event"], r["outcome"]) for r in revisions(app, "h1")]
    assert events_logged[-1] == ("hot-upgrade", "success") and ("revert", "success") not in events_logged


def test_a_failing_hot_upgrade_cut_off_from_its_link_is_reverted_and_reported_so(
    one_host: App, tarballs: dict[str, Path]
) -> None:
    app = one_host
    first = deploy(app, tarballs["v1"])
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    pid = get(app, "h1", "/health")["os_pid"]

    events = CutAt(app, "install")
    try:
        report = hot.upgrade(
            app.inventory(), inspect_tarball(tarballs["v2-bad"], APP), api.Options(events=events)
        ).report
    finally:
        app.fleet.restore_link("h1")
    assert events.cut and ("h1", "reconnect", "start") in events.steps, "the link was never lost"
    assert ("h1", "await-outcome", "done") in events.steps, "the host's own outcome was not read"

    # The install failed on the host while nobody watched: the revert restarted the node on 1.0.0, and the
    # report names the real cause.
    row = report.hosts[0]
    assert not report.ok and (row.outcome, row.after, row.known) == ("reverted", v1, True), explain(report)
    assert "the host went on alone and failed at " in (row.error or ""), explain(report)
    health = get(app, "h1", "/health")
    assert health["version"] == "1.0.0" and health["os_pid"] != pid
    assert app.current("h1") == f"releases/{v1}"
    events_logged = [(r["event"], r["outcome"]) for r in revisions(app, "h1")[-2:]]
    assert events_logged == [("hot-upgrade", "failed"), ("revert", "success")]
