"""A health gate that means healthy, on real hosts.

A release that answers its first health check and dies a moment later (0.1 s, 1 s, 3 s: the example's
``dies_after_health`` variant, timing from ``HELLO_DIE_AFTER_MS``) must stop a rolling deploy: the first host
is reverted and runs its previous release again, healthy; no other host is touched; the report is not OK.
An rpc health check that hangs fails at the deadline instead of counting as healthy when it finally answers.
Assertions are on what the hosts really run: the ``current`` link, the recorded node pid alive and that very
process serving ``/health`` inside the host.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app

_names = itertools.count(1)


@pytest.fixture(scope="module")
def good() -> Path:
    return build_hello("0.1.0", migrations=2)


@pytest.fixture(scope="module")
def dying() -> Path:
    return build_hello("0.2.0", variant="dies_after_health", migrations=2)


@pytest.fixture
def app(make_fleet: Callable[..., Fleet], tmp_path: Path) -> Iterator[App]:
    deployment = make_app(make_fleet(2), tmp_path, f"gate{next(_names)}")
    deployment.data["strategy"] = {"kind": "rolling", "batch_size": 1}
    deployment.data["health"].update({"deadline": 40, "interval": 0.2, "stable_for": 5})
    deployment.rewrite()
    yield deployment
    remove_app(deployment)


def node_pid(app: App, host: str) -> int | None:
    """The pid in ``shared/node.pid`` if that process is alive and a BEAM of this deploy_to (checked in the host)."""
    out = app.sh(
        host,
        f"read -r p _ < {app.deploy_to}/shared/node.pid 2>/dev/null || exit 0; "
        f'case "$(readlink /proc/$p/exe)" in {app.deploy_to}/releases/*/beam.smp) echo "$p" ;; esac',
    ).strip()
    return int(out) if out else None


@pytest.mark.parametrize("die_after_ms", [100, 1000, 3000])
def test_a_node_that_dies_after_its_first_healthy_answer_stops_the_rollout(
    app: App, good: Path, dying: Path, die_after_ms: int
) -> None:
    first = api.deploy(app.inventory(), inspect_tarball(good, "hello"))
    assert first.report.ok, explain(first.report)
    v1 = first.report.release
    assert v1 is not None
    app.rewrite(env={**app.data["env"], "clear": {**app.data["env"]["clear"], "HELLO_DIE_AFTER_MS": str(die_after_ms)}})

    result = api.deploy(app.inventory(), inspect_tarball(dying, "hello"))
    report = result.report
    assert not report.ok, explain(report)
    outcomes = {h.host: h.outcome for h in report.hosts}
    assert outcomes["h1"] == "reverted", explain(report)
    assert outcomes["h2"] != "success", explain(report)
    h1 = next(h for h in report.hosts if h.host == "h1")
    assert h1.step == "health" and h1.after == v1, explain(report)
    # Either the node was already gone at the next poll, or its check failed while it was halting.
    error = h1.error or ""
    assert "after its first healthy answer" in error or "passed the health check, then failed" in error, error

    for host in ("h1", "h2"):
        # What the host really runs: the previous release, its recorded node alive and serving /health.
        assert app.current(host) == f"releases/{v1}", host
        pid = node_pid(app, host)
        health = app.health(host)
        assert pid is not None and health is not None, host
        assert health["version"] == "0.1.0" and health["os_pid"] == str(pid), (host, health, pid)
    log = app.sh("h1", f"cat {app.deploy_to}/revisions.log")
    assert '"outcome":"failed"' in log and '"event":"revert"' in log


def test_an_rpc_check_that_hangs_fails_at_the_deadline(app: App, good: Path) -> None:
    app.rewrite(
        health={"rpc": "Process.sleep(25_000)", "deadline": 3, "interval": 0.5, "stable_for": 0},
        hosts=app.data["hosts"][:1],
    )
    result = api.deploy(app.inventory(), inspect_tarball(good, "hello"))
    report = result.report
    assert not report.ok, explain(report)
    [h1] = report.hosts
    assert h1.outcome == "reverted" and h1.step == "health", explain(report)
    assert "did not answer within" in (h1.error or "") and "within 3s" in (h1.error or ""), h1.error
    # A first deploy is reverted to nothing: no current release, no node left running.
    assert app.sh("h1", f"test -e {app.deploy_to}/current && echo yes || echo no").strip() == "no"
    assert node_pid(app, "h1") is None
    # (epmd, started by the node, outlives it by design: count VMs only.)
    beams = app.sh(
        "h1", f"ls -ld /proc/[0-9]*/exe 2>/dev/null | grep -F {app.deploy_to}/releases/ | grep -c beam.smp || true"
    )
    assert beams.strip() == "0"
