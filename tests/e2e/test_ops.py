"""End to end: operating a deployed fleet — status, releases, logs, restart/stop/start, console, observer, check.

One deployment of the example (0.1.0 on three real sshd hosts) is shared by the tests of this module; each
test leaves it running and healthy. The tasks are driven through the real CLI (``python -m invoke``), the
console through a pty (pexpect), the observer tunnel by a local hidden Erlang node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.plan import layout_for
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.remote import ops as oc
from deployer.remote.flavours import flavour
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, cli, cli_argv, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def app(session_fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path_factory.mktemp("ops"), "ops1")
    done = api.deploy(deployment.inventory(), inspect_tarball(build_hello("0.1.0", migrations=2), "hello"))
    assert done.report.ok, done.report.error
    yield deployment
    remove_app(deployment)


def node_pids(app: App) -> dict[str, int]:
    pids = {}
    for host in HOSTS:
        health = app.health(host)
        assert health is not None, f"{host} is not healthy"
        pids[host] = int(health["os_pid"])
    return pids


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def remote_processes(app: App, host: str, pattern: str) -> list[str]:
    out = app.sh(host, "ps -eo pid,args", check=False)
    return [line for line in out.splitlines() if re.search(pattern, line) and "ps -eo" not in line]


# --- status / releases ---------------------------------------------------------------------------------------


def test_status_json_and_table(app: App) -> None:
    pids = node_pids(app)
    done = cli(app, "status", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["mixed"] is False and doc["healthy"] is True
    assert [h["host"] for h in doc["hosts"]] == list(HOSTS)
    current = app.current("h1").removeprefix("releases/")
    for h in doc["hosts"]:
        assert h["reachable"] is True and h["error"] is None
        assert (h["current"], h["version"]) == (current, "0.1.0")
        assert h["running"] is True and h["node_pids"] == [pids[h["host"]]]
        assert (h["health"], h["healthy"], h["health_error"]) == ("ok", True, None)
        assert [r["release"] for r in h["releases"]] == [current]
        assert h["lock"] is None and h["disk_free_kb"] > 0
    table = cli(app, "status")
    assert table.returncode == 0, table.stderr
    assert all(host in table.stderr for host in HOSTS) and "yes" in table.stderr
    # A host filter matching nothing is an error, never "all hosts".
    nothing = cli(app, "status", "--hosts", "h9")
    assert nothing.returncode != 0 and "no host named h9" in nothing.stdout + nothing.stderr


def test_status_flags_an_unhealthy_node_and_a_lock(app: App) -> None:
    # The health check runs once on each host: point it at a port nothing listens on.
    good = dict(app.data["health"])
    app.rewrite(health={**good, "http": "http://127.0.0.1:9/health"})
    info = json.dumps({"who": "mallory", "since": 1})
    app.sh("h2", f"mkdir {app.deploy_to}/.lock && echo '{info}' > {app.deploy_to}/.lock/info")
    try:
        done = cli(app, "status", "--json")
        assert done.returncode == 1
        doc = json.loads(done.stdout)
        assert doc["healthy"] is False
        h1, h2, _ = doc["hosts"]
        assert (h1["health"], h1["healthy"], h1["running"]) == ("failing", False, True)
        assert "9" in (h1["health_error"] or "")
        assert h2["lock_holder"] == "mallory" and "mallory" in h2["lock"]
    finally:
        app.rewrite(health=good)
        app.sh("h2", f"rm -rf {app.deploy_to}/.lock")


def test_releases(app: App) -> None:
    done = cli(app, "releases", "--json", "--hosts", "h1,h3")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [h["host"] for h in doc["hosts"]] == ["h1", "h3"]
    current = app.current("h1").removeprefix("releases/")
    for host in doc["hosts"]:
        assert host["releases"] == [{"release": current, "version": "0.1.0", "status": "good", "current": True}]
    table = cli(app, "releases", "--roles", "migrator")
    assert table.returncode == 0 and "h1" in table.stderr and "h2" not in table.stderr
    assert current in table.stderr and "good" in table.stderr


# --- logs ---------------------------------------------------------------------------------------------------


def test_logs_prints_the_node_log(app: App) -> None:
    done = cli(app, "logs", "--host", "h2", "--lines", "50")
    assert done.returncode == 0, done.stderr
    assert "hello 0.1.0" in done.stdout and f"listening on 0.0.0.0:{app.port}" in done.stdout
    assert cli(app, "logs").returncode != 0  # --host is required


def test_logs_follow_streams_until_ctrl_c(app: App) -> None:
    log_dir = f"{app.deploy_to}/shared/tmp/log"
    newest = app.sh("h3", f"ls -t {log_dir}/erlang.log.* | head -n 1").strip()
    process = subprocess.Popen(
        cli_argv(app, "logs", "--host", "h3", "--follow", "--lines", "5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""

    def saw(marker: bytes) -> bool:
        nonlocal seen
        seen += process.stdout.read() or b""  # type: ignore[union-attr]
        return marker in seen

    try:
        assert wait_until(lambda: saw(b"listening on"), 30), seen
        app.sh("h3", f"echo followed-line-1 >> {newest}")
        assert wait_until(lambda: saw(b"followed-line-1"), 15), seen
        # run_erl moves on to the next erlang.log.N: the follow switches to the newer file.
        app.sh("h3", f"sleep 1; echo followed-line-2 > {log_dir}/erlang.log.9")
        assert wait_until(lambda: saw(b"followed-line-2"), 15), seen
        assert remote_processes(app, "h3", r"tail -n \S+ -F")
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
        app.sh("h3", f"rm -f {log_dir}/erlang.log.9")
    assert code == 0, process.stderr.read() if process.stderr else ""
    # Closing the channel hung up the remote session: no tail is left behind on the host.
    assert wait_until(lambda: not remote_processes(app, "h3", r"tail -n \S+ -F"), 10)


# --- node lifecycle --------------------------------------------------------------------------------------------


def test_restart_is_rolling_and_health_gated(app: App) -> None:
    before = node_pids(app)
    done = cli(app, "restart", "--batch-size", "1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["operation"] == "restart" and report["ok"] is True
    assert [(h["host"], h["outcome"], h["healthy"]) for h in report["hosts"]] == [(h, "success", True) for h in HOSTS]
    # The deploy's executor ran it: hosts probed under the lock, known, every session counted.
    assert all(h["known"] and h["sessions"] >= 3 and "restart" in h["timings"] for h in report["hosts"])
    # One host at a time (batch size 1), each after the previous one was healthy again.
    phases = re.findall(r"restart batch (\d)/3 (h\d)", done.stderr)
    assert phases == [("1", "h1"), ("2", "h2"), ("3", "h3")]
    after = node_pids(app)
    for host in HOSTS:
        assert after[host] != before[host]
        gone = app.sh(host, f"test -d /proc/{before[host]} && echo alive || echo gone").strip()
        assert gone == "gone", f"{host}: the old VM {before[host]} is still running"
        # node.pid holds "<pid> <start time>": the start time tells a reused pid from the node.
        assert app.sh(host, f"cat {app.deploy_to}/shared/node.pid").split()[0] == str(after[host])
    assert app.sh("h1", f"test -d {app.deploy_to}/.lock && echo locked || echo free").strip() == "free"


def test_restart_stops_the_rollout_when_a_node_is_not_healthy(app: App) -> None:
    good = dict(app.data["health"])
    app.rewrite(health={**good, "http": "http://127.0.0.1:9/health", "deadline": 3})
    before = node_pids(app)
    try:
        done = cli(app, "restart", "--batch-size", "1", "--json")
    finally:
        app.rewrite(health=good)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    outcomes = {h["host"]: h for h in report["hosts"]}
    assert (outcomes["h1"]["outcome"], outcomes["h1"]["healthy"], outcomes["h1"]["step"]) == ("failed", False, "health")
    assert "within 3s" in outcomes["h1"]["error"]
    assert outcomes["h2"]["outcome"] == outcomes["h3"]["outcome"] == "untouched"
    assert any("not restarted: h2, h3" in w for w in report["warnings"])
    after = {h: int(app.health(h)["os_pid"]) for h in ("h2", "h3")}  # type: ignore[index]
    assert after == {h: before[h] for h in ("h2", "h3")}, "hosts after the failed batch were restarted"
    assert wait_until(lambda: app.health("h1") is not None, 20)  # really healthy: only the check was wrong


def test_stop_and_start(app: App) -> None:
    pid = node_pids(app)["h2"]
    stopped = cli(app, "stop", "--hosts", "h2")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert app.health("h2") is None
    assert app.sh("h2", f"test -d /proc/{pid} && echo alive || echo gone").strip() == "gone"
    assert not remote_processes(app, "h2", re.escape(f"{app.deploy_to}/releases/") + r".*beam\.smp")
    status = cli(app, "status", "--json")
    assert status.returncode == 1
    h2 = json.loads(status.stdout)["hosts"][1]
    assert (h2["running"], h2["health"], h2["healthy"]) == (False, "down", False)
    # start: h2 is started and health-gated; the others already run and are only checked.
    others = {h: p for h, p in node_pids_safe(app).items() if h != "h2"}
    started = cli(app, "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "already running" in started.stderr
    assert app.health("h2") is not None
    assert {h: p for h, p in node_pids(app).items() if h != "h2"} == others


def node_pids_safe(app: App) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for host in HOSTS:
        health = app.health(host)
        out[host] = int(health["os_pid"]) if health else None
    return out


def test_lifecycle_dry_run_changes_nothing(app: App) -> None:
    before = node_pids(app)
    for task in ("stop", "restart", "start"):
        done = cli(app, task, "--dry-run")
        assert done.returncode == 0, done.stderr
        assert f"Plan: {task} in e2e" in done.stderr and "nothing was changed" in done.stderr
    assert node_pids(app) == before
    assert app.sh("h1", f"test -d {app.deploy_to}/.lock && echo locked || echo free").strip() == "free"


# --- console ------------------------------------------------------------------------------------------------


def test_console_evaluates_in_the_running_node_and_ctrl_d_leaves_it_running(app: App) -> None:
    pid = node_pids(app)["h1"]
    argv = cli_argv(app, "console", "--host", "h1")
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env={**os.environ, "TERM": "dumb"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 160),
    )
    try:
        child.expect(r"iex\(ops1@127\.0\.0\.1\)\d+> ")
        child.send('"os pid " <> List.to_string(:os.getpid())\r')
        child.expect(rf'"os pid {pid}"')
        child.expect(r"iex\(ops1@127\.0\.0\.1\)\d+> ")
        # The console runs in the node itself: its applications are there.
        child.send("Application.spec(:hello, :vsn)\r")
        child.expect(r"'0\.1\.0'")
        child.expect(r"iex\(ops1@127\.0\.0\.1\)\d+> ")
        child.send("\x04")  # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    # The node still runs (same VM); the console's own VM is gone.
    assert node_pids(app)["h1"] == pid
    assert wait_until(lambda: not remote_processes(app, "h1", r"rem-[0-9a-f]+-ops1"), 10)


def test_console_never_puts_the_cookie_in_argv(app: App) -> None:
    cookie = app.sh("h1", f"cat {app.deploy_to}/shared/.cookie").strip()
    script = oc.console(layout_for(app.inventory()), flavour("mix"))
    assert cookie not in script.remote_command()
    assert not script.secrets


# --- observer -------------------------------------------------------------------------------------------------


def ping_through(tunnel: ops.ObserverTunnel) -> subprocess.CompletedProcess[str]:
    then = (
        'io:format("~s ~s ~p~n", [net_adm:ping(N), rpc:call(N, erlang, system_info, [otp_release]), '
        "list_to_integer(rpc:call(N, os, getpid, []))]), halt()"
    )
    return subprocess.run(
        tunnel.erl_argv(then),
        env={**os.environ, **tunnel.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def local_beams_with(name: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if name in line and "beam" in line]


def test_observer_tunnel_reaches_the_node(app: App) -> None:
    pid = node_pids(app)["h2"]
    cookie = app.sh("h2", f"cat {app.deploy_to}/shared/.cookie").strip()
    with ops.observer_tunnel(app.inventory(), "h2") as tunnel:
        assert tunnel.node == "ops1@127.0.0.1"
        cookie_file = tunnel.cookie_file
        assert cookie_file.stat().st_mode & 0o777 == 0o600
        assert cookie not in tunnel.shell_command()
        done = ping_through(tunnel)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split() == ["pong", "25", str(pid)]
        assert tunnel.dist.connections >= 1
    # The tunnel and the cookie file are gone; no local node is left.
    assert not cookie_file.exists()
    for port in (tunnel.epmd_port, tunnel.dist_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not local_beams_with(tunnel.local_name.split("@")[0])


def test_observer_tunnel_when_the_local_epmd_port_is_taken(app: App) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the last tunnel's TIME_WAIT may linger
    try:
        blocker.bind(("127.0.0.1", ops.EPMD_PORT))
        blocker.listen(1)
    except OSError:
        pass  # something here already has 4369 (a local epmd): the same situation
    try:
        with ops.observer_tunnel(app.inventory(), "h3") as tunnel:
            assert tunnel.epmd_port != ops.EPMD_PORT
            assert tunnel.env() == {"ERL_EPMD_PORT": str(tunnel.epmd_port)}
            done = ping_through(tunnel)
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.split()[0] == "pong"
    finally:
        blocker.close()


def test_observer_print_shows_a_command_without_the_cookie(app: App) -> None:
    cookie = app.sh("h1", f"cat {app.deploy_to}/shared/.cookie").strip()
    process = subprocess.Popen(
        cli_argv(app, "observer", "--host", "h1", "--print"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert " erl " in f" {line}" and "-hidden" in line and "observer" in line
        assert cookie not in line
        # Run what was printed, with the observer start swapped for a ping (no GUI here).
        import shlex

        words = shlex.split(line)
        env = dict(os.environ)
        while "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        assert words[-2] == "-eval" and ops.OBSERVER_START in words[-1]
        words[-1] = words[-1].replace(ops.OBSERVER_START, 'io:format("~s~n", [net_adm:ping(N)]), halt()')
        done = subprocess.run(words, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout.strip() == "pong", done.stdout + done.stderr
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=20)
    stderr = process.stderr.read() if process.stderr else ""
    assert code == 0, stderr
    assert "tunnel closed" in stderr and cookie not in stderr


# --- check ------------------------------------------------------------------------------------------------


def test_check_passes_on_the_fleet(app: App) -> None:
    tarball = build_hello("0.1.0", migrations=2)
    done = cli(app, "check", "--tarball", str(tarball), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is True and [h["host"] for h in doc["hosts"]] == list(HOSTS)
    for host in doc["hosts"]:
        assert host["problems"] == [] and host["writable"] is True
        assert {"tar", "sha256sum"} <= set(host["tools"]) and host["arch"]
    assert "local" not in doc and doc["note"] is None  # hosts are checked against the release, not this machine
    table = cli(app, "check")
    assert table.returncode == 0 and "check passed" in table.stderr


def test_check_reports_every_problem(app: App, tmp_path: Path) -> None:
    # A host key nobody trusted, and a release far bigger than any disk.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = dict(app.data["ssh"])
    app.rewrite(ssh={**ssh, "known_hosts": str(empty)})
    try:
        done = cli(app, "check", "--hosts", "h1", "--json")
        assert done.returncode == 1
        (h1,) = json.loads(done.stdout)["hosts"]
        assert h1["reachable"] is False and "is not known" in h1["problems"][0]
        table = cli(app, "check", "--hosts", "h1")
        assert table.returncode == 1 and "check failed on h1" in table.stderr
    finally:
        app.rewrite(ssh=ssh)
    huge = Artifact(Path("huge.tar.gz"), "hello", "9.9.9", "f" * 64, 2**50, 2**51, "13.1.5")
    rows = ops.check(app.inventory(), api.Options(hosts=["h2"]), artifact=huge)
    assert not rows[0].ok and any("MiB free under deploy_to" in p for p in rows[0].problems)
