"""The node's lifecycle scripts run by a real ``sh`` against a scratch deploy_to, with a fake release.

The fake release's "VM" is a copy of ``sleep`` installed as ``releases/<id>/erts-1/bin/beam.smp``: for the
scripts it is a BEAM of this deploy_to (its executable is an ERTS ``beam.smp``, its command line names the
release) that lives ``FAKE_LIFETIME`` seconds. ``bin/hello daemon`` starts it detached and records the
environment and argv it was started with; ``bin/hello rpc`` answers after ``FAKE_RPC_HANG`` seconds.
"""

from __future__ import annotations

import ast
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.core.facts import parse_outcome, parse_probe
from deployer.core.paths import RemoteLayout
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import (
    EXIT_UNHEALTHY,
    HELPERS,
    LAUNCHER,
    RESERVED_ENV_NAMES,
    HealthCheck,
    body_text,
    fold_helpers,
    helper_block,
    loopback_target,
    node_pids,
    record,
    script,
    switch,
    text,
)
from deployer.remote.shell import MASK, Script, Secret, env_file_text

COOKIE = "C00KIE-real-0123456789"
MIX = flavour("mix")
FAKE_BIN = """#!/bin/sh
root=$(cd "$(dirname "$0")/.." && pwd -P)
shared="$root/../../shared"
case $1 in
  daemon)
    env -0 > "$shared/daemon-env"
    setsid "$root/erts-1/bin/beam.smp" "${FAKE_LIFETIME:-1000}" </dev/null >/dev/null 2>&1 &
    ;;
  rpc)
    if [ -n "${FAKE_RPC_HANG:-}" ]; then sleep "$FAKE_RPC_HANG"; fi
    echo ok
    ;;
  *) exit 3 ;;
esac
"""


def make_release(d: Path, release_id: str, env: dict[str, str | Secret] | None = None) -> None:
    root = d / "releases" / release_id
    (root / "bin").mkdir(parents=True)
    (root / "erts-1" / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("sleep") or "/bin/sleep", root / "erts-1" / "bin" / "beam.smp")
    (root / "bin" / "hello").write_text(FAKE_BIN)
    (root / "bin" / "hello").chmod(0o755)
    (d / "shared" / "env").mkdir(parents=True, exist_ok=True)
    (d / "shared" / "env" / f"{release_id}.env").write_text(env_file_text(env or {}).render(reveal=True))
    cookie = d / "shared" / ".cookie"
    if not cookie.exists():
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)


def run(script_: Script, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-s"], input=script_.render(reveal=True), capture_output=True, text=True, timeout=timeout, check=False
    )


def pids_of(d: Path) -> list[int]:
    """Live fake BEAMs of ``d`` (read from /proc, the way a test on a host would)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            state = (entry / "stat").read_text().rsplit(") ", 1)[1].split()[0]
        except OSError:
            continue
        if exe.startswith(f"{d}/releases/") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.fixture
def deploy_to(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "srv" / "hello"
    d.mkdir(parents=True)
    yield d
    for pid in pids_of(d):
        os.kill(pid, signal.SIGKILL)


def health(stable_for: float = 1.0, deadline: float = 10, rpc: str | None = "ok") -> HealthCheck:
    return HealthCheck(http=None, rpc=rpc, deadline=deadline, interval=0.2, start_grace=10, stable_for=stable_for)


def activate(d: Path, release_id: str, check: HealthCheck, suffix: str = "t1") -> Script:
    return rc.activate(
        RemoteLayout(str(d), "hello"),
        MIX,
        release_id=release_id,
        health=check,
        stop_timeout=5,
        tmp_suffix=suffix,
        success_record=f'{{"release":"{release_id}"}}',
    )


# --- fragments compose: exact rendering, only the helpers used --------------------------------------------------


def test_script_defines_exactly_the_helpers_its_fragments_need() -> None:
    layout = RemoteLayout("/srv/hello", "hello")
    plain = script("x", text("echo {{v}}\n", v="a b"))
    assert plain.render() == (rc.PRELUDE + "__deployer_main() {\necho 'a b'\n\n}\n__deployer_main </dev/null\n")
    with_nodes = script("y", text("d={{d}}\n", d=layout.deploy_to), node_pids()).render()
    block = helper_block(["find_nodes"])
    assert block.startswith("# deployer helpers: proc_start is_node scan_nodes recorded_node find_nodes\n")
    assert with_nodes == (
        rc.PRELUDE + block + "__deployer_main() {\nd=/srv/hello\n"
        'find_nodes\nfor p in $NODE_PIDS; do echo "node_pid=$p"; done\n'
        "\n}\n__deployer_main </dev/null\n"
    )
    assert "stop_node()" not in with_nodes and "LAUNCHER=" not in with_nodes
    assert fold_helpers(with_nodes) == with_nodes.replace(
        block, "# helpers: proc_start is_node scan_nodes recorded_node find_nodes (deployer/remote/fragments.py)\n"
    )
    with pytest.raises(KeyError):
        helper_block(["no_such_helper"])
    assert all(set(h.needs) <= set(HELPERS) for h in HELPERS.values())


def test_switch_and_record_render_exactly() -> None:
    assert body_text(switch("20261124010203-0.2.0", "ab12"), record(['{"a":1}'])) == (
        "step switch\n"
        "rid=20261124010203-0.2.0\n"
        '[ -d "$d/releases/$rid" ] || fail "release $rid is not on this host"\n'
        't="$d/current.tmp."ab12\n'
        'rm -f "$t"\n'
        'ln -s "releases/$rid" "$t"\n'
        'mv -T "$t" "$d/current"\n'
        "step record\n"
        'printf \'%s\\t%s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \'{"a":1}\' >> "$d/revisions.log"\n'
    )


def test_no_remote_module_imports_another_ones_private_names() -> None:
    root = Path(__file__).resolve().parents[2] / "deployer"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deployer.remote"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path} imports {private} from {node.module}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("rc", "oc", "release", "ops", "fragments", "shell")
            ):
                assert not node.attr.startswith("_"), f"{path}: {node.value.id}.{node.attr}"


# --- the launcher: a clean environment from the env file, the cookie never in argv -------------------------------


def launch(d: Path, release_id: str, mode: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = ["env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", LAUNCHER, "launch", str(d), release_id, mode]
    return subprocess.run([*argv, "/bin/sh", "-c", command], capture_output=True, text=True, timeout=20, check=False)


def test_launcher_starts_from_a_clean_environment_and_names_cannot_change_it(deploy_to: Path) -> None:
    hostile = "$(touch /tmp/deployer-pwned-launch)`id`'\"; \\n\n\\"
    env: dict[str, str | Secret] = {
        "d": "/tmp/elsewhere",
        "PATH": "/nonexistent",
        "cookie_from_home": "0",
        "mode": "env",
        "HELLO": hostile,
        "SECRET": Secret("SECRET", __import__("pydantic").SecretStr(hostile + "s")),
        "ERL_AFLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    make_release(deploy_to, "r1", env)
    done = launch(deploy_to, "r1", "home", "/usr/bin/env -0")
    assert done.returncode == 0, done.stderr
    seen = dict(item.split("=", 1) for item in done.stdout.split("\0") if item)
    assert seen["HELLO"] == hostile and seen["SECRET"] == hostile + "s"
    assert not Path("/tmp/deployer-pwned-launch").exists()
    assert seen["d"] == "/tmp/elsewhere" and seen["PATH"] == "/nonexistent" and seen["mode"] == "env"
    # deployer's own values win: the VM reads $HOME/.erlang.cookie; the script gets a throwaway cookie.
    assert seen["HOME"] == f"{deploy_to}/shared/home"
    assert (deploy_to / "shared" / "home" / ".erlang.cookie").read_text() == COOKIE
    assert seen["RELEASE_COOKIE"] != COOKIE and len(seen["RELEASE_COOKIE"]) == 32
    assert seen["ERL_AFLAGS"] == "-setcookie -kernel inet_dist_use_interface {127,0,0,1}"
    assert seen["PWD"] == f"{deploy_to}/shared"
    # Nothing of the calling session leaks in.
    assert set(seen) == {*env, "HOME", "RELEASE_COOKIE", "RELX_COOKIE", "COOKIE", "PWD", "DEPLOYER_RELEASE_ID"}


def test_launcher_cookie_modes(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    for mode, real in (("home", False), ("home+script", True), ("env", True)):
        done = launch(deploy_to, "r1", mode, 'printf "%s|%s" "$RELX_COOKIE" "${ERL_AFLAGS-unset}"')
        cookie, aflags = done.stdout.split("|")
        assert (cookie == COOKIE) == real, mode
        assert aflags == ("unset" if mode == "env" else "-setcookie "), mode


def test_launcher_refuses_a_missing_cookie_an_old_env_file_and_a_bad_line(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    env_file = deploy_to / "shared" / "env" / "r1.env"
    env_file.write_text("# written by deployer; sourced with set -a before the node starts\nA='x'\n")
    done = launch(deploy_to, "r1", "home", "true")
    assert done.returncode == 1 and "written by an older deployer" in done.stderr
    env_file.write_text(env_file_text({}).render(reveal=True) + "not a line\n")
    done = launch(deploy_to, "r1", "home", "true")
    assert done.returncode == 1 and f"{env_file}:2: expected NAME=value" in done.stderr
    (deploy_to / "shared" / ".cookie").unlink()
    done = launch(deploy_to, "r1", "home", "true")
    assert done.returncode == 1 and "cookie" in done.stderr
    assert not (deploy_to / "shared" / ".cookie").exists()


def test_reserved_names_cover_what_deployer_sets() -> None:
    assert {"RELEASE_COOKIE", "HOME", "IFS", "RELEASE_NODE", "DEPLOYER_RELEASE_ID"} <= RESERVED_ENV_NAMES
    assert "PATH" not in RESERVED_ENV_NAMES  # the node may have its own PATH


# --- activate: start, find the node, health gate that means healthy ------------------------------------------------


def test_activate_starts_the_node_from_the_env_file_and_records_its_pid(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"HELLO": "a\nb", "IFS": "x"})
    done = run(activate(deploy_to, "r1", health(stable_for=0.5)))
    assert done.returncode == 0, done.stderr
    [pid] = pids_of(deploy_to)
    assert f"node_pid={pid}" in done.stdout and "@@step record" in done.stderr
    assert (deploy_to / "shared" / "node.pid").read_text().split()[0] == str(pid)
    assert os.readlink(deploy_to / "current") == "releases/r1"
    started = dict(item.split("=", 1) for item in (deploy_to / "shared" / "daemon-env").read_text().split("\0") if item)
    assert started["HELLO"] == "a\nb"
    assert COOKIE not in (deploy_to / "shared" / "daemon-env").read_text()
    assert "SSH_CONNECTION" not in started and "PYTEST_CURRENT_TEST" not in started
    outcome = run(rc.await_outcome(RemoteLayout(str(deploy_to), "hello"), "activate-t1", 5))
    parsed = parse_outcome(outcome.stdout)
    assert parsed.ok and parsed.step == "record" and parsed.state == "finished"


@pytest.mark.parametrize("lifetime", ["0.1", "1", "3"])
def test_a_node_that_dies_after_its_first_healthy_answer_is_not_healthy(deploy_to: Path, lifetime: str) -> None:
    make_release(deploy_to, "r1", {"FAKE_LIFETIME": lifetime})
    done = run(activate(deploy_to, "r1", health(stable_for=4)))
    assert done.returncode == EXIT_UNHEALTHY, done.stderr
    # (At 0.1 s the fake VM may be gone before it was ever seen: then it "did not start".)
    assert "exited" in done.stderr or (lifetime == "0.1" and "did not start" in done.stderr), done.stderr
    assert "@@step record" not in done.stderr and not (deploy_to / "revisions.log").exists()


def test_stable_for_zero_accepts_the_first_answer(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"FAKE_LIFETIME": "3"})
    done = run(activate(deploy_to, "r1", health(stable_for=0)))
    assert done.returncode == 0, done.stderr


def test_an_rpc_check_that_hangs_fails_at_the_deadline(deploy_to: Path) -> None:
    make_release(deploy_to, "r1", {"FAKE_RPC_HANG": "25"})
    started = time.monotonic()
    done = run(activate(deploy_to, "r1", health(deadline=2)))
    assert done.returncode == EXIT_UNHEALTHY, done.stderr
    assert "did not answer within" in done.stderr and "did not become healthy within 2s" in done.stderr
    assert time.monotonic() - started < 20  # (sanity: the 25 s answer was not waited for)


# --- pids are trusted only when they are ours ------------------------------------------------------------------------


def test_a_stale_pid_file_pointing_at_another_process_is_never_signalled(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    (deploy_to / "current").symlink_to("releases/r1")
    other = subprocess.Popen(["sleep", "60"])
    try:
        (deploy_to / "shared" / "node.pid").write_text(f"{other.pid}\n")
        layout = RemoteLayout(str(deploy_to), "hello")
        stopped = run(oc.stop(layout, stop_timeout=2))
        assert stopped.returncode == 0 and "stopped=none" in stopped.stdout
        assert other.poll() is None
        (deploy_to / "shared" / "node.pid").write_text(f"{other.pid}\n")
        started = run(oc.start(layout, MIX, health=health(stable_for=0.2)))
        assert started.returncode == 0, started.stderr
        assert "already_running" not in started.stdout and "started=" in started.stdout
        assert other.poll() is None
        facts = parse_probe(run(rc.probe(layout)).stdout)
        assert facts.node_pids == tuple(pids_of(deploy_to)) and other.pid not in facts.node_pids
    finally:
        other.kill()


def test_a_pid_reused_by_another_process_of_ours_is_not_the_node(deploy_to: Path) -> None:
    # Same pid file format as deployer writes, but a start time that does not match: not the node.
    make_release(deploy_to, "r1")
    other = subprocess.Popen([str(deploy_to / "releases" / "r1" / "erts-1" / "bin" / "beam.smp"), "60"])
    try:
        (deploy_to / "shared" / "node.pid").write_text(f"{other.pid} 1\n")
        probe = script(
            "p", text("d={{d}}\n", d=str(deploy_to)), text("recorded_node || echo none\n", helpers=["recorded_node"])
        )
        assert run(probe).stdout.strip() == "none"
    finally:
        other.kill()


def test_stop_finds_a_node_without_a_pid_file_and_waits_for_it(deploy_to: Path) -> None:
    make_release(deploy_to, "r1")
    assert run(activate(deploy_to, "r1", health(stable_for=0))).returncode == 0
    (deploy_to / "shared" / "node.pid").unlink()
    stopped = run(oc.stop(RemoteLayout(str(deploy_to), "hello"), stop_timeout=5))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped=none" not in stopped.stdout and pids_of(deploy_to) == []


# --- revert: records written after the step they describe --------------------------------------------------------


def test_revert_records_success_only_after_the_old_node_is_healthy(deploy_to: Path) -> None:
    layout = RemoteLayout(str(deploy_to), "hello")
    make_release(deploy_to, "r1", {"FAKE_LIFETIME": "0.5"})  # the "previous" release cannot stay up either
    script_ = rc.revert(
        layout,
        MIX,
        previous_id="r1",
        health=health(stable_for=2),
        stop_timeout=5,
        tmp_suffix="r",
        records=['{"event":"revert","outcome":"success"}'],
        failure_records=['{"event":"deploy","outcome":"failed"}'],
    )
    text_ = script_.render()
    assert text_.index('"outcome":"failed"') < text_.index("step switch") < text_.index("step health")
    assert text_.index("step health") < text_.index('"outcome":"success"')
    done = run(script_)
    assert done.returncode == EXIT_UNHEALTHY
    log = (deploy_to / "revisions.log").read_text()
    assert '"outcome":"failed"' in log and '"outcome":"success"' not in log


# --- detached runs ----------------------------------------------------------------------------------------------------


def test_detached_run_survives_its_foreground_and_writes_its_outcome_after_the_last_step(deploy_to: Path) -> None:
    layout = RemoteLayout(str(deploy_to), "hello")
    worker = script("slow", text("step one\nsleep 2\nstep two\necho done=1\n"))
    detached = rc.detach(layout, worker, run_id="slow-1", limit=30)
    assert detached.run_id == "slow-1" and detached.name == "slow"
    proc = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(detached.render(reveal=True).encode())
    proc.stdin.close()
    time.sleep(0.7)
    proc.kill()  # the controlling connection is gone
    proc.wait()
    outcome = parse_outcome(run(rc.await_outcome(layout, "slow-1", 20)).stdout)
    assert outcome.state == "finished" and outcome.status == 0 and outcome.step == "two", outcome
    assert outcome.stdout == ("done=1",)
    again = run(detached)
    assert again.returncode == 1 and "already started" in again.stderr


def test_detached_run_streams_steps_and_exits_with_the_workers_status(deploy_to: Path) -> None:
    layout = RemoteLayout(str(deploy_to), "hello")
    worker = script("w", text("step first\necho out=1\nstep second\necho broken >&2\nexit 76\n"))
    done = run(rc.detach(layout, worker, run_id="w-1", limit=30))
    assert done.returncode == 76
    assert "@@step first\n@@step second\nbroken\n" in done.stderr and done.stdout == "out=1\n"


def test_the_host_ends_a_run_at_its_own_deadline(deploy_to: Path) -> None:
    layout = RemoteLayout(str(deploy_to), "hello")
    worker = script("hang", text("step wait\nsleep 60\nstep never\n"))
    done = run(rc.detach(layout, worker, run_id="hang-1", limit=1))
    assert done.returncode == 124 and "own deadline" in done.stderr
    outcome = parse_outcome(run(rc.await_outcome(layout, "hang-1", 1)).stdout)
    assert outcome.deadline_expired and outcome.step == "wait"
    # Nothing of the run is left running.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(deploy_to / "shared" / "runs" / "hang-1") not in ps


@pytest.mark.parametrize("how", ["killed", "rebooted"])
def test_await_outcome_says_lost_at_once_when_the_supervisor_is_gone_without_an_outcome(
    deploy_to: Path, how: str
) -> None:
    """A power cut, a reboot or a kill ends the supervisor before it writes an outcome: the reader must not
    wait out the whole run's limit for a file that will never come, nor call the run still running."""
    layout = RemoteLayout(str(deploy_to), "hello")
    worker = script("long", text("step wait\nsleep 60\n"))
    proc = subprocess.Popen(["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(rc.detach(layout, worker, run_id="long-1", limit=120).render(reveal=True).encode())
    proc.stdin.close()
    record = deploy_to / "shared" / "runs" / "long-1" / "supervisor"
    deadline = time.monotonic() + 10
    while not record.exists() or not record.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid, started, boot = record.read_text().split()
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    still = parse_outcome(run(rc.await_outcome(layout, "long-1", 0.5)).stdout)
    assert still.state == "running", still
    if how == "killed":
        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
    else:
        # After a reboot the recorded pid and start time may well name a live process again (here: this
        # test's own): only the boot id tells it is not the supervisor.
        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
        mine = Path("/proc/self/stat").read_text().rsplit(") ", 1)[1].split()[19]
        record.write_text(f"{os.getpid()} {mine} another-boot\n")
    proc.kill()
    proc.wait()
    # Waiting out the limit would say "running": "lost" means the reader saw the supervisor gone.
    outcome = parse_outcome(run(rc.await_outcome(layout, "long-1", 60)).stdout)
    assert outcome.state == "lost" and not outcome.ok, outcome
    assert started.isdigit()


def test_await_outcome_of_a_run_that_never_started(deploy_to: Path) -> None:
    outcome = parse_outcome(run(rc.await_outcome(RemoteLayout(str(deploy_to), "hello"), "nope-1", 0)).stdout)
    assert outcome.state == "missing" and not outcome.ok


def test_detach_refuses_secrets_and_odd_run_ids() -> None:
    layout = RemoteLayout("/srv/hello", "hello")
    secret = Secret("x", __import__("pydantic").SecretStr("v"))
    with pytest.raises(ValueError, match="secrets"):
        rc.detach(layout, script("s", text("echo {{v}}\n", v=secret)), run_id="a", limit=1)
    with pytest.raises(ValueError, match="run id"):
        rc.detach(layout, script("s", text("true\n")), run_id="../x", limit=1)
    assert MASK not in rc.detach(layout, script("s", text("true\n")), run_id="a", limit=1).render()


def test_a_node_of_a_release_without_erts_runs_the_systems_beam_and_is_found(deploy_to: Path, tmp_path: Path) -> None:
    # include_erts: false: the VM is the system's erts-*/bin/beam.smp; its command line names the release.
    # (Here that "VM" is a copy of sh, so it can carry a release path in its argv the way -boot does.)
    system_beam = tmp_path / "usr" / "lib" / "erlang" / "erts-14.0" / "bin" / "beam.smp"
    system_beam.parent.mkdir(parents=True)
    shutil.copy(os.path.realpath("/bin/sh"), system_beam)
    make_release(deploy_to, "r1")
    shutil.rmtree(deploy_to / "releases" / "r1" / "erts-1")
    (deploy_to / "current").symlink_to("releases/r1")
    boot = f"{deploy_to}/releases/r1/releases/0.1.0/start"
    node = subprocess.Popen([str(system_beam), "-c", "sleep 60; :", boot])
    unrelated = subprocess.Popen([str(system_beam), "-c", "sleep 60; :", "/srv/other/releases/x"])
    layout = RemoteLayout(str(deploy_to), "hello")
    try:
        time.sleep(0.3)
        assert parse_probe(run(rc.probe(layout)).stdout).node_pids == (node.pid,)
        stopped = run(oc.stop(layout, stop_timeout=5))
        assert f"stopped={node.pid}" in stopped.stdout, stopped.stderr
        assert node.wait(10) is not None and unrelated.poll() is None
    finally:
        node.kill()
        unrelated.kill()


def test_stop_says_sigterm_again_to_a_vm_that_lost_the_first_one(deploy_to: Path) -> None:
    # A VM still booting has no SIGTERM handler yet: here, a "VM" that ignores the first SIGTERM only.
    make_release(deploy_to, "r1")
    beam = deploy_to / "releases" / "r1" / "erts-1" / "bin" / "beam.smp"
    beam.unlink()
    shutil.copy(os.path.realpath("/bin/sh"), beam)
    node = subprocess.Popen(
        [str(beam), "-c", "n=0; trap 'n=$((n+1)); [ $n -ge 2 ] && exit 0' TERM; while :; do sleep 0.1; done"]
    )
    try:
        time.sleep(0.3)
        stopped = run(oc.stop(RemoteLayout(str(deploy_to), "hello"), stop_timeout=20))
        assert f"stopped={node.pid}" in stopped.stdout, stopped.stderr
        assert "SIGKILL" not in stopped.stderr and node.wait(5) == 0
    finally:
        node.kill()


# --- polling without a process per poll (issue 17) ------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    """``/health``: the status in the server's ``status`` list, one per request (the last one repeats)."""

    protocol_version = "HTTP/1.1"  # as the nodes' servers answer (with a Content-Length)

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, _HealthServer)
        server.requests += 1
        status = server.statuses[0] if len(server.statuses) == 1 else server.statuses.pop(0)
        body = b'{"status":"ok"}\n' if status < 400 else b"down\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _HealthServer(http.server.ThreadingHTTPServer):
    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Health)
        self.statuses = statuses
        self.requests = 0


@pytest.fixture
def health_server() -> Iterator[Callable[[list[int]], _HealthServer]]:
    servers: list[_HealthServer] = []

    def start(statuses: list[int]) -> _HealthServer:
        server = _HealthServer(statuses)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def shim_path(tmp_path: Path, *, without: tuple[str, ...] = ()) -> tuple[str, Path]:
    """A PATH where every command of /usr/bin and /bin is reachable (but ``without``), and ``curl``, ``sleep``,
    ``grep`` and ``bash`` log each start to the returned file first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "spawned"
    log.write_text("")
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in sorted(Path(directory).iterdir()):
            target = bin_dir / entry.name
            if entry.name in without or target.exists() or target.is_symlink():
                continue
            if entry.name in ("curl", "sleep", "grep", "bash"):
                target.write_text(f'#!/bin/sh\necho {entry.name} >> {log}\nexec {entry} "$@"\n')
                target.chmod(0o755)
            else:
                target.symlink_to(entry)
    return str(bin_dir), log


def http_health(port: int, **kwargs: float) -> HealthCheck:
    return HealthCheck(
        http=f"http://127.0.0.1:{port}/health",
        rpc=None,
        deadline=kwargs.get("deadline", 10),
        interval=0.1,
        start_grace=10,
        stable_for=kwargs.get("stable_for", 1.0),
    )


def run_with_path(script_: Script, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-s"],
        input=script_.render(reveal=True),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"PATH": path, "HOME": "/nonexistent"},
    )


def test_with_bash_the_health_gate_polls_http_without_spawning_a_process_per_poll(
    deploy_to: Path, tmp_path: Path, health_server: Callable[[list[int]], _HealthServer]
) -> None:
    make_release(deploy_to, "r1")
    make_release(deploy_to, "r2")
    server = health_server([200])
    path, log = shim_path(tmp_path)
    first = run_with_path(activate(deploy_to, "r1", http_health(server.server_address[1], stable_for=0)), path)
    assert first.returncode == 0, first.stderr
    [old] = pids_of(deploy_to)
    # The upgrade: stop the recorded node, start r2, find it, wait for it.
    server.statuses[:] = [503, 503, 200]
    server.requests = 0
    log.write_text("")
    done = run_with_path(activate(deploy_to, "r2", http_health(server.server_address[1], stable_for=1.0), "t2"), path)
    assert done.returncode == 0, done.stderr
    [pid] = pids_of(deploy_to)
    assert pid != old and f"node_pid={pid}" in done.stdout
    assert (deploy_to / "shared" / "node.pid").read_text().split()[0] == str(pid)
    # 2 failing answers, then 1 s of good ones every 0.1 s: a dozen polls, all answered by the one helper.
    assert server.requests >= 8
    spawned = log.read_text().split()
    # The helper starts after the launch (the node must not inherit its pipes); the stop before it may sleep
    # while the old node exits. From the launch on: nothing per poll.
    assert spawned.count("bash") == 1, spawned
    after_launch = spawned[spawned.index("bash") + 1 :]
    assert "curl" not in after_launch and "sleep" not in after_launch, spawned
    # No pass over /proc (grep over every comm) to find the node after `daemon`, nor to stop the old one.
    assert "grep" not in spawned, spawned
    assert not list((deploy_to / "shared" / "tmp").glob(".agent.*"))


def test_the_helper_reports_a_failing_http_answer(
    deploy_to: Path, tmp_path: Path, health_server: Callable[[list[int]], _HealthServer]
) -> None:
    make_release(deploy_to, "r1")
    server = health_server([200, 200, 500])
    path, _ = shim_path(tmp_path)
    done = run_with_path(activate(deploy_to, "r1", http_health(server.server_address[1], stable_for=3)), path)
    assert done.returncode == EXIT_UNHEALTHY, done.stderr
    assert "passed the health check, then failed it" in done.stderr
    assert f"http://127.0.0.1:{server.server_address[1]}/health: HTTP status 500" in done.stderr


def test_the_helper_says_when_nothing_answers_before_the_deadline(deploy_to: Path, tmp_path: Path) -> None:
    make_release(deploy_to, "r1")
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    path, log = shim_path(tmp_path)
    done = run_with_path(activate(deploy_to, "r1", http_health(port, deadline=1.5)), path)
    assert done.returncode == EXIT_UNHEALTHY, done.stderr
    assert "did not become healthy within 1.5s" in done.stderr and "Connection refused" in done.stderr
    assert "curl" not in log.read_text().split()


def test_without_bash_the_health_gate_polls_with_curl_and_sleep(
    deploy_to: Path, tmp_path: Path, health_server: Callable[[list[int]], _HealthServer]
) -> None:
    make_release(deploy_to, "r1")
    server = health_server([503, 200])
    path, log = shim_path(tmp_path, without=("bash",))
    done = run_with_path(activate(deploy_to, "r1", http_health(server.server_address[1], stable_for=0.5)), path)
    assert done.returncode == 0, done.stderr
    spawned = log.read_text().split()
    assert "bash" not in spawned and spawned.count("curl") == server.requests >= 3 and "sleep" in spawned


def test_a_health_url_elsewhere_than_loopback_stays_with_curl() -> None:
    assert loopback_target("http://127.0.0.1:4000/health") == ("127.0.0.1", 4000, "/health")
    assert loopback_target("http://localhost/ready?full=1") == ("localhost", 80, "/ready?full=1")
    for url in (
        "https://127.0.0.1:4000/health",
        "http://10.1.2.3:4000/health",
        "http://[::1]:4000/health",
        "http://user:pw@127.0.0.1/health",
        "http://127.0.0.1:4000/a b",
        "http://127.0.0.1:70000/",
    ):
        assert loopback_target(url) is None, url
    check = HealthCheck("https://app.internal/health", None, deadline=5, interval=0.5)
    rendered = rc.activate(
        RemoteLayout("/srv/hello", "hello"),
        MIX,
        release_id="r1",
        health=check,
        stop_timeout=5,
        tmp_suffix="t",
        success_record="{}",
    ).render()
    assert "agent_get" not in rendered.split("step health", 1)[1]
    assert 'curl -fsS -o /dev/null --max-time "$SECS" https://app.internal/health' in rendered
    assert "  pause 0.5\n" in rendered  # the pauses still need no process


def test_the_loopback_http_check_and_the_start_render_exactly() -> None:
    layout = RemoteLayout("/srv/hello", "hello")
    check = HealthCheck("http://127.0.0.1:4000/health", None, deadline=5, interval=0.5, stable_for=2)
    rendered = rc.activate(
        layout, MIX, release_id="r1", health=check, stop_timeout=5, tmp_suffix="t", success_record="{}"
    ).render()
    assert (
        "step start\nclock\nlaunched=$NOW\npid_mark\n"
        "launch '' \"$rid\" home /srv/hello/current/bin/hello daemon\n"
        'if ! await_node 5 "$launched" "$PID_MARK"; then\n'
    ) in rendered
    assert (
        '  if [ -n "$ok" ]; then\n'
        '    if [ "$AGENT_NET" = 1 ] && agent_get "$SECS" 127.0.0.1 4000 /health 2>"$d/shared/tmp/health.err"; '
        "then :\n"
        '    elif [ "$AGENT_NET" = 1 ]; then ok=\n'
        '    elif [ -n "$have_curl" ]; then curl -fsS -o /dev/null --max-time "$SECS" http://127.0.0.1:4000/health '
        '2>"$d/shared/tmp/health.err" || ok=\n'
        '    else wget -q -O /dev/null -T "$(( ${SECS%.*} + 1 ))" http://127.0.0.1:4000/health '
        '2>"$d/shared/tmp/health.err" || ok=; fi\n'
        "  fi\n"
    ) in rendered
    assert "  pause 0.5\ndone\n" in rendered and "sleep 0.5" not in rendered
    # One try for status and the re-deploy check: plain curl, no helper started.
    once = oc.status(layout, MIX, check).render()
    assert (
        "agent" not in once.lower() and 'curl -fsS -o /dev/null --max-time "$SECS" http://127.0.0.1:4000/health' in once
    )
