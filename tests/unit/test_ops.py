"""Fleet operations without a fleet: script builders, parsers, the lifecycle runner over a fake transport,
check's rules, and the status/logs scripts run by a local ``sh`` against a scratch deploy_to."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import Artifact
from deployer.core.facts import parse_probe
from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout
from deployer.errors import DeployerError, InventoryError, PlanError
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import body_text
from deployer.remote.release import EXIT_UNHEALTHY, HealthCheck
from deployer.testing import FakeFleet, fail, ok

from .helpers import BASE, inventory

CURRENT = "20261101000000-0.1.0"
FAILED = "20261102000000-0.2.0"
SECRET = "s3cr3t-sentinel-value"
LAYOUT = RemoteLayout("/srv/hello", "hello")
MIX = flavour("mix")
HEALTH = HealthCheck(http="http://127.0.0.1:4000/health", rpc=None, deadline=20, interval=0.5)


def rev(release: str, outcome: str = "success", version: str = "0.1.0") -> str:
    return "rev=2026-11-01T00:00:00Z\t" + json.dumps({"release": release, "outcome": outcome, "version": version})


def probe_output(*, current: str | None = CURRENT, pids: str = "4242", lock: str | None = None) -> str:
    lines = ["now=1", "arch=x86_64", "libc=ldd (Debian GLIBC 2.36-9) 2.36", "exists=1", "writable=1"]
    lines += ["tool=tar", "tool=sha256sum", "tool=curl", "disk_free_kb=9999999", "cookie=1"]
    if current:
        lines += [f"current=releases/{current}", f"release={current}", rev(current)]
    lines += [f"release={FAILED}", rev(FAILED, "failed", "0.2.0")]
    if pids:
        lines.append(f"node_pid={pids}")
    if lock:
        lines.append(f"lock={lock}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(tmp_path, secret=SECRET)


def options(fleet: FakeFleet, **kwargs: Any) -> api.Options:
    return api.Options(connector=fleet.connect, **kwargs)


# --- scripts -----------------------------------------------------------------------------------------------


def test_status_script_is_the_probe_plus_one_health_try() -> None:
    text = oc.status(LAYOUT, MIX, HEALTH).render()
    inner = body_text(rc.host_facts())
    assert inner in text and text.index(inner) < text.index("step health")
    assert 'curl -fsS -o /dev/null --max-time "$SECS" http://127.0.0.1:4000/health' in text
    # One try, no loop, nothing written on the host.
    assert "while" not in text.split("step health", 1)[1]
    assert "health.err" not in text and "node.pid" not in text.split("step health", 1)[1]


def test_lifecycle_scripts() -> None:
    stop = oc.stop(LAYOUT, stop_timeout=12.4).render()
    assert "stop_node 12\n" in stop and "daemon" not in stop
    start = oc.start(LAYOUT, MIX, health=HEALTH).render()
    assert "already_running=" in start and "/srv/hello/current/bin/hello daemon" in start
    assert f"exit {EXIT_UNHEALTHY}" in start
    restart = oc.restart(LAYOUT, MIX, health=HEALTH, stop_timeout=5).render()
    assert restart.index("stop_node 5") < restart.index("bin/hello daemon") < restart.index("step health")
    for text in (start, restart):
        assert "launch '' \"$rid\" home /srv/hello/current/bin/hello daemon" in text and "step current" in text


def test_console_loads_the_env_on_the_host_and_keeps_stdin() -> None:
    script = oc.console(LAYOUT, MIX)
    assert not script.stdin and not script.secrets
    text = script.render()
    assert "</dev/null" not in text  # the remote shell reads the terminal
    assert text.rstrip().endswith(
        'exec env -i "PATH=$PATH" "TERM=${TERM:-dumb}" /bin/sh -c "$LAUNCHER" deployer-launch "$d" "$rid" home '
        "/srv/hello/current/bin/hello remote"
    )
    assert "\nstep " not in text  # stderr is the operator's terminal
    assert oc.console(LAYOUT, flavour("rebar3")).render().rstrip().endswith("bin/hello remote_console")


def test_follow_is_an_argv_script_and_epmd_uses_the_bundled_binary() -> None:
    follow = oc.follow_logs(LAYOUT, lines=7)
    assert not follow.stdin and follow.remote_command().startswith("sh -c ")
    assert "tail -n 7 -F" in follow.render()
    names = oc.epmd_names(LAYOUT, epmd_port=4370).render()
    assert '"$d"/current/erts-*/bin/epmd' in names and "ERL_EPMD_PORT=4370" in names


# --- the scripts run by a real sh against a scratch deploy_to ------------------------------------------------


def run_sh(script_text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-s"], input=script_text, capture_output=True, text=True, timeout=60, check=False)


def test_status_script_runs(tmp_path: Path) -> None:
    layout = RemoteLayout(str(tmp_path / "app"), "hello")
    nothing = run_sh(oc.status(layout, MIX, HEALTH).render(reveal=True))
    assert nothing.returncode == 0, nothing.stderr
    assert ops.parse_health(nothing.stdout).state == "none"
    (tmp_path / "app" / "releases" / CURRENT).mkdir(parents=True)
    (tmp_path / "app" / "current").symlink_to(f"releases/{CURRENT}")
    down = run_sh(oc.status(layout, MIX, HEALTH).render(reveal=True))
    assert down.returncode == 0, down.stderr
    health = ops.parse_health(down.stdout)
    assert (health.state, health.healthy) == ("down", False)
    assert parse_probe(down.stdout).current_release == CURRENT


def test_logs_script_reads_the_newest_lines_across_files(tmp_path: Path) -> None:
    layout = RemoteLayout(str(tmp_path / "app"), "hello")
    missing = run_sh(oc.logs(layout, lines=5).render())
    assert missing.returncode == 1 and "no node logs" in missing.stderr
    log = tmp_path / "app" / "shared" / "tmp" / "log"
    log.mkdir(parents=True)
    (log / "erlang.log.2").write_text("a1\na2\na3\n")
    (log / "erlang.log.1").write_text("b1\nb2\n")  # written last: the newest
    old = log / "erlang.log.2"
    os.utime(old, (1_000_000, 1_000_000))
    done = run_sh(oc.logs(layout, lines=3).render())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a3", "b1", "b2"]


# --- parsers and documents -------------------------------------------------------------------------------------


def test_parse_health() -> None:
    assert ops.parse_health("health=ok\n") == ops.NodeHealth("ok")
    failing = ops.parse_health("x=1\nhealth=failing\nhealth_error=curl: (7) refused\n")
    assert failing.healthy is False and failing.error == "curl: (7) refused"
    assert ops.parse_health("health=down\n").error == "the node is not running"
    assert ops.parse_health("").state == "unknown" and ops.parse_health("health=none").healthy is None


def test_parse_epmd_names() -> None:
    out = "epmd: up and running on port 4369 with data:\nname app3 at port 37543\nname rem-1a2b-app3 at port 40001\n"
    assert ops.parse_epmd_names(out) == {"app3": 37543, "rem-1a2b-app3": 40001}
    assert ops.parse_epmd_names("epmd: Cannot connect to local epmd\n") == {}


def test_status_document_adds_health_and_flags_mixed() -> None:
    rows = [
        ops.HostStatus("a", True, parse_probe(probe_output()), ops.NodeHealth("ok")),
        ops.HostStatus("b", True, parse_probe(probe_output(current=FAILED)), ops.NodeHealth("failing", "503")),
        ops.HostStatus("c", False, None, None, "c: cannot connect"),
    ]
    doc = ops.status_document(rows)
    assert doc["mixed"] is True and doc["healthy"] is False
    a, b, c = doc["hosts"]
    assert (a["healthy"], a["health"], a["running"], a["node_pids"]) == (True, "ok", True, [4242])
    assert (b["healthy"], b["health_error"]) == (False, "503")
    assert (c["reachable"], c["healthy"], c["error"]) == (False, None, "c: cannot connect")
    only_ok = ops.status_document(rows[:1])
    assert only_ok["healthy"] is True and only_ok["mixed"] is False


def test_releases_document() -> None:
    row = api.HostStatus("a", True, parse_probe(probe_output() + "release=20261103000000-0.3.0\n"))
    (host,) = ops.releases_document([row])["hosts"]
    assert host["current"] == CURRENT
    assert [(r["release"], r["version"], r["status"], r["current"]) for r in host["releases"]] == [
        (CURRENT, "0.1.0", "good", True),
        (FAILED, "0.2.0", "failed", False),
        ("20261103000000-0.3.0", None, "unknown", False),
    ]


# --- status and lifecycle over a fake transport ---------------------------------------------------------------


def test_status_runs_one_session_per_host(inv: Inventory) -> None:
    fleet = FakeFleet()
    fleet.responses["status"] = ok(probe_output() + "health=ok\n")
    fleet.responses[("web2", "status")] = ok(probe_output() + "health=failing\nhealth_error=HTTP 503\n")
    fleet.unreachable.add("web3")
    rows = ops.status(inv, options(fleet))
    assert [(r.host, r.reachable, r.health.state if r.health else None) for r in rows] == [
        ("web1", True, "ok"),
        ("web2", True, "failing"),
        ("web3", False, None),
    ]
    assert fleet.names() == ["status", "status"]
    assert rows[2].error and "Connection refused" in rows[2].error


def test_filters_matching_nothing_are_errors(inv: Inventory) -> None:
    fleet = FakeFleet()
    with pytest.raises(InventoryError):
        ops.status(inv, options(fleet, hosts=["nope"]))
    with pytest.raises(InventoryError):
        ops.lifecycle(inv, "restart", options(fleet, roles=["nope"]))
    assert fleet.calls == []


def deployed(fleet: FakeFleet, hosts: tuple[str, ...] = ("web1", "web2", "web3")) -> FakeFleet:
    fleet.probe_output = {h: probe_output() for h in hosts}
    return fleet


def test_restart_rolls_under_the_lock(inv: Inventory) -> None:
    fleet = deployed(FakeFleet())
    result = ops.lifecycle(inv, "restart", options(fleet, strategy={"kind": "rolling", "batch_size": 2}))
    assert result.report.ok, result.report.error
    assert result.plan is not None and result.plan.batches == (("web1", "web2"), ("web3",))
    for host in ("web1", "web2", "web3"):
        assert fleet.names(host) == ["lock+probe", "restart", "unlock"]
        assert result.report.hosts[0].healthy is True
    assert {h.before for h in result.report.hosts} == {CURRENT} and result.report.release == CURRENT


def test_a_failing_batch_stops_the_rollout(inv: Inventory) -> None:
    fleet = deployed(FakeFleet())
    fleet.responses[("web1", "restart")] = fail("health", "the node did not become healthy within 20s", EXIT_UNHEALTHY)
    result = ops.lifecycle(inv, "restart", options(fleet, strategy={"kind": "rolling", "batch_size": 1}))
    report = result.report
    assert not report.ok
    outcomes = {h.host: (h.outcome, h.healthy, h.step) for h in report.hosts}
    assert outcomes["web1"] == ("failed", False, "health")
    assert outcomes["web2"][0] == outcomes["web3"][0] == "untouched"
    assert "restart" not in fleet.names("web2")
    assert any("not restarted: web2, web3" in w for w in report.warnings)
    assert all(fleet.names(h)[-1] == "unlock" for h in ("web1", "web2", "web3"))


def test_start_needs_a_deployed_release_but_stop_does_not(inv: Inventory) -> None:
    fleet = FakeFleet(probe_output={"web1": probe_output(current=None, pids="")})
    started = ops.lifecycle(inv, "start", options(fleet, hosts=["web1"]))
    assert started.report.error and "nothing is deployed on web1" in started.report.error
    assert "start" not in fleet.names()
    assert fleet.names()[-1] == "unlock"
    fleet.responses["stop"] = ok("stopped=none\n")
    stopped = ops.lifecycle(inv, "stop", options(fleet, hosts=["web1"]))
    assert stopped.report.ok and stopped.report.hosts[0].healthy is None


def test_lifecycle_dry_run_only_probes(inv: Inventory) -> None:
    fleet = deployed(FakeFleet())
    result = ops.lifecycle(inv, "stop", options(fleet, dry_run=True))
    assert result.report.dry_run and result.plan is not None
    assert set(fleet.names()) == {"probe"}
    assert [h.host for h in result.plan.hosts] == ["web1", "web2", "web3"]


def test_lifecycle_refuses_when_locked(inv: Inventory) -> None:
    fleet = deployed(FakeFleet())
    fleet.probe_output = {"web1": probe_output(lock='{"who": "alice", "operation": "deploy", "since": 1}')}
    result = ops.lifecycle(inv, "restart", options(fleet))
    assert result.report.error and "alice" in result.report.error
    assert "restart" not in fleet.names()


def test_cancel_stops_before_the_next_batch(inv: Inventory) -> None:
    import threading

    cancel = threading.Event()
    fleet = deployed(FakeFleet())

    def restart_and_cancel(script: object) -> Any:
        cancel.set()
        return ok()

    fleet.responses[("web1", "restart")] = restart_and_cancel
    result = ops.lifecycle(inv, "restart", options(fleet, cancel=cancel, strategy={"kind": "rolling", "batch_size": 1}))
    assert result.report.interrupted and not result.report.ok
    assert [h.outcome for h in result.report.hosts] == ["success", "untouched", "untouched"]
    assert all(fleet.names(h)[-1] == "unlock" for h in ("web1", "web2", "web3"))


# --- check ------------------------------------------------------------------------------------------------


def artifact(*, erts: str | None = "13.1.5", size: int = 50 * 2**20) -> Artifact:
    return Artifact(
        path=Path("hello-0.1.0.tar.gz"),
        name="hello",
        version="0.1.0",
        sha256="a" * 64,
        size=size,
        unpacked_size=size * 2,
        erts_version=erts,
    )


def problems(inv: Inventory, text: str, art: Artifact | None = None, compatibility: tuple[str, ...] = ()) -> list[str]:
    return ops.check_host(parse_probe(text), inventory=inv, artifact=art, compatibility=compatibility)


def test_check_passes_a_ready_host(inv: Inventory) -> None:
    assert problems(inv, probe_output(), artifact()) == []


def test_check_finds_every_problem(inv: Inventory) -> None:
    bad = (
        "arch=aarch64\nlibc=musl libc (aarch64)\ndisk_free_kb=1024\ntool=tar\n"
        'lock={"who": "bob", "operation": "deploy"}\n'
    )
    found = problems(inv, bad, artifact(), ("the release is linked against glibc, the host has musl",))
    text = "\n".join(found)
    assert "not writable" in text
    assert "sha256sum is not installed" in text
    assert "neither curl nor wget" in text
    assert "1 MiB free" in text
    assert "the host has musl" in text
    assert "locked: bob" in text


def test_check_never_compares_hosts_with_this_machine(inv: Inventory, tmp_path: Path) -> None:
    """A host of another architecture than the machine running deployer is fine when the release was built
    for it: check uses the deploy's compatibility preflight (the release's ELF files and build sidecar)."""
    from .helpers import release_tarball

    tarball = release_tarball(tmp_path / "hello-0.1.0.tar.gz")  # its beam.smp is no real ELF: nothing known
    art = Artifact(tarball, "hello", "0.1.0", "b" * 64, 100, 200, "13.1.5")
    other = probe_output().replace("x86_64", "riscv64").replace("2.36-9) 2.36", "2.17-1) 2.17")
    fleet = FakeFleet(probe_output={"web1": other})
    (row,) = ops.check(inv, options(fleet, hosts=["web1"]), artifact=art)
    assert row.ok, row.problems
    doc = ops.check_document([row], tarball=True)
    assert "local" not in doc and doc["note"] is None
    assert ops.check_document([row])["note"] == ops.NO_TARBALL_NOTE


def test_check_reports_the_release_compatibility_findings(inv: Inventory, tmp_path: Path) -> None:
    from deployer.core.compat import BuildPlatform, write_sidecar

    from .helpers import release_tarball

    tarball = release_tarball(tmp_path / "hello-0.1.0.tar.gz")
    write_sidecar(tarball, BuildPlatform(arch="aarch64", libc="ldd (GNU libc) 2.36", machine="builder"), "c" * 64)
    art = Artifact(tarball, "hello", "0.1.0", "c" * 64, 100, 200, "13.1.5")
    fleet = FakeFleet(probe_output={"web1": probe_output()})
    (row,) = ops.check(inv, options(fleet, hosts=["web1"]), artifact=art)
    assert not row.ok
    assert any("built on builder (aarch64), the host is x86_64" in p for p in row.problems), row.problems


def test_check_over_a_fake_transport(inv: Inventory) -> None:
    fleet = FakeFleet(probe_output={"web1": probe_output(), "web2": probe_output().replace("tool=tar\n", "")})
    fleet.unreachable.add("web3")
    rows = ops.check(inv, options(fleet))
    assert [(r.host, r.ok) for r in rows] == [("web1", True), ("web2", False), ("web3", False)]
    assert rows[1].problems == ["tar is not installed"]
    assert "Connection refused" in rows[2].problems[0]
    doc = ops.check_document(rows)
    assert doc["ok"] is False and doc["hosts"][0]["tools"] == ["curl", "sha256sum", "tar"]


# --- observer and one-host helpers ------------------------------------------------------------------------


def test_local_node_argv_never_holds_the_cookie(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("THE-REAL-COOKIE")

    class Forward:
        def __init__(self, port: int) -> None:
            self.port = port

    tunnel = ops.ObserverTunnel(
        "h1",
        "it's@127.0.0.1",
        40001,
        Forward(4370),
        Forward(40001),
        cookie,
        None,  # type: ignore[arg-type]
    )
    argv = tunnel.erl_argv("halt()")
    command = tunnel.shell_command()
    assert "THE-REAL-COOKIE" not in " ".join(argv) + command
    assert argv[argv.index("-dist_listen") + 1] == "false" and argv[argv.index("-start_epmd") + 1] == "false"
    assert "-hidden" in argv and "halt() catch" in argv[-1]
    assert "N = 'it\\'s@127.0.0.1'" in argv[-1] and str(cookie) in argv[-1]
    assert tunnel.env() == {"ERL_EPMD_PORT": "4370"} and command.startswith("ERL_EPMD_PORT=4370 erl ")
    tunnel.epmd = Forward(4369)  # type: ignore[assignment]
    assert tunnel.env() == {}


def test_observer_needs_a_loopback_name_node(tmp_path: Path) -> None:
    data = {**BASE, "node": {"distribution": "sname"}}
    inv = inventory(tmp_path, data)
    with pytest.raises(DeployerError, match="needs a node named"), ops.observer_tunnel(inv, "web1"):
        pass


def test_one_host_operations_need_exactly_one_host(inv: Inventory) -> None:
    for host in (None, "", "web1,web2"):
        with pytest.raises(DeployerError, match="exactly one host"):
            ops.logs(inv, host, on_output=lambda s, t: None)
    with pytest.raises(InventoryError):
        ops.connect(inv, "nope")


def test_plan_lifecycle_rejects_unknown_operations(inv: Inventory) -> None:
    with pytest.raises(ValueError):
        ops.plan_lifecycle(inv, "reboot", {})  # type: ignore[arg-type]
    with pytest.raises(PlanError):
        ops.plan_lifecycle(inv, "restart", {"web1": parse_probe(probe_output(current=None))})
