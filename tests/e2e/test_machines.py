"""The machine fleet itself: booted Debian machines (systemd as PID 1) that reboot and lose power.

Everything is checked from the outside as a user would: OpenSSH with strict host key
checking as the non-root ``deploy`` user, ``sudo -n``, ``systemctl`` and ``journalctl``;
the harness's ``exec`` is only used to set things up or look at what the machine runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.machines import (
    REGISTRY,
    MachineError,
    MachineFleet,
    MachinesUnavailable,
    check_environment,
    reap_stale_machines,
)

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]

UNIT = """\
[Unit]
Description=deployer machine test ticker

[Service]
ExecStart=/bin/sh -c 'echo "ticker up boot=$(cat /proc/sys/kernel/random/boot_id)"; exec sleep infinity'
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""

# What `deploy` may do as root in these tests: the narrow kind of rule issue 14 asks for.
SUDOERS = (
    "deploy ALL=(root) NOPASSWD: /usr/bin/install -m 0644 /home/deploy/ticker.service "
    "/etc/systemd/system/ticker.service, /usr/bin/systemctl, /usr/bin/journalctl\n"
)


def _require_machines() -> None:
    try:
        check_environment()
    except MachinesUnavailable as exc:
        if os.environ.get("DEPLOYER_REQUIRE_FLEET", "") not in ("", "0"):
            pytest.fail(f"machines must run here: {exc}")
        pytest.skip(f"cannot run machines here: {exc}")


@pytest.fixture(scope="module")
def machines() -> Iterator[MachineFleet]:
    """Two machines shared by this module's tests (they reboot them, in order)."""
    _require_machines()
    with MachineFleet(2) as fleet:
        yield fleet


def ssh(
    fleet: MachineFleet, host: str, command: str, *, user: str = "deploy", known_hosts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """OpenSSH as a user would run it: strict host key checking against the fleet's known_hosts."""
    argv = fleet.ssh_argv(host, user=user)
    if known_hosts is not None:
        argv = [a.replace(str(fleet.known_hosts_path), str(known_hosts)) for a in argv]
    return subprocess.run([*argv, command], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def must(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[-1]!r}: exit {result.returncode}: {result.stderr.strip()}"
    return result.stdout


def boot_id(fleet: MachineFleet, host: str) -> str:
    return must(ssh(fleet, host, "cat /proc/sys/kernel/random/boot_id")).strip()


def install_ticker(fleet: MachineFleet, host: str) -> None:
    """As ``deploy`` with sudo: install, enable and start the unit."""
    fleet.install_sudoers(host, "deployer-test", SUDOERS)
    must(ssh(fleet, host, f"cat > ~/ticker.service <<'EOF'\n{UNIT}EOF"))
    must(
        ssh(
            fleet,
            host,
            "sudo -n /usr/bin/install -m 0644 /home/deploy/ticker.service /etc/systemd/system/ticker.service"
            " && sudo -n /usr/bin/systemctl daemon-reload && sudo -n /usr/bin/systemctl enable --now ticker",
        )
    )


def ticker_pid(fleet: MachineFleet, host: str) -> int:
    out = must(ssh(fleet, host, "systemctl is-active ticker && systemctl show -P MainPID ticker"))
    state, pid = out.split()
    assert state == "active"
    return int(pid)


def journal_boots(fleet: MachineFleet, host: str) -> list[str]:
    """The boot ids the ticker announced in the journal, oldest first."""
    out = must(ssh(fleet, host, "sudo -n /usr/bin/journalctl -u ticker -o cat --no-pager"))
    return [line.split("boot=", 1)[1] for line in out.splitlines() if line.startswith("ticker up boot=")]


# --------------------------------------------------------------------------- machines


def test_machines_boot_systemd_with_their_own_identity(machines: MachineFleet) -> None:
    ids = set()
    for m in machines.hosts:
        out = must(ssh(machines, m.name, "id -un; hostname; ps -o comm= -p 1; systemctl is-system-running || true"))
        user, hostname, init, state = out.split()
        assert (user, hostname, init) == ("deploy", m.name, "systemd")
        assert state in ("running", "degraded"), out
        ids.add(must(ssh(machines, m.name, "cat /etc/machine-id", user="root")).strip())
        assert must(ssh(machines, m.name, "systemctl is-active systemd-journald ssh dbus")).split() == ["active"] * 3
    assert len(ids) == 2, "each machine has its own machine-id"
    # Each machine reaches the other by name and address, nothing outside the fleet by route.
    m2 = machines.hosts[1]
    must(ssh(machines, "m1", f"getent hosts m2 | grep -q {m2.address} && timeout 10 bash -c 'echo > /dev/tcp/m2/22'"))
    assert "unreachable" in ssh(machines, "m1", "ip route get 1.1.1.1 2>&1 || echo unreachable").stdout


def test_strict_host_key_checking_rejects_a_machine_it_does_not_know(machines: MachineFleet, tmp_path: Path) -> None:
    m1 = machines.hosts[0]
    wrong = tmp_path / "known_hosts"
    # m2's key listed under m1's address: a machine impersonating another is refused.
    entry = machines.known_hosts_path.read_text().splitlines()[1].split(None, 1)[1]
    wrong.write_text(f"{m1.address} {entry}\n")
    result = ssh(machines, "m1", "true", known_hosts=wrong)
    assert result.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    result = ssh(machines, "m1", "true", known_hosts=empty)
    assert result.returncode == 255 and "Host key verification failed" in result.stderr


def test_deploy_has_no_sudo_until_a_validated_drop_in_allows_it(machines: MachineFleet) -> None:
    denied = ssh(machines, "m2", "sudo -n true")
    assert denied.returncode != 0 and "password is required" in denied.stderr
    # A drop-in that visudo rejects is never installed (a broken sudoers locks everyone out).
    with pytest.raises(subprocess.CalledProcessError):
        machines.install_sudoers("m2", "broken", "deploy ALL=(root NOPASSWD: ALL\n")
    assert must(machines.exec("m2", ["ls", "-A", "/etc/sudoers.d"])).split() == ["README"]
    machines.install_sudoers("m2", "narrow", "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl\n")
    assert must(ssh(machines, "m2", "sudo -n /usr/bin/systemctl is-system-running || true")).strip() in (
        "running",
        "degraded",
    )
    # Only what the line names: anything else still needs a password.
    assert ssh(machines, "m2", "sudo -n true").returncode != 0
    mode = must(machines.exec("m2", ["stat", "-c", "%a %U", "/etc/sudoers.d/narrow"])).strip()
    assert mode == "440 root"
    machines.exec("m2", ["rm", "/etc/sudoers.d/narrow"])
    assert ssh(machines, "m2", "sudo -n /usr/bin/systemctl is-system-running").returncode != 0


def test_enabled_unit_comes_back_after_graceful_reboot_and_power_cut(machines: MachineFleet) -> None:
    install_ticker(machines, "m1")
    first_pid = ticker_pid(machines, "m1")
    first_boot = boot_id(machines, "m1")
    must(ssh(machines, "m1", "echo before-reboot > ~/written && sync ~/written"))

    machines.reboot("m1")
    second_boot = boot_id(machines, "m1")
    assert second_boot != first_boot, "a reboot gives a new boot id"
    assert ticker_pid(machines, "m1") > 0  # enabled: systemd started it again, nobody else did
    assert must(ssh(machines, "m1", "cat ~/written")).strip() == "before-reboot"
    assert machines.boots("m1") == 2

    # Written and fsync'd just before the power goes.
    must(ssh(machines, "m1", "echo before-cut > ~/written2 && sync ~/written2"))
    machines.power_cut("m1")
    third_boot = boot_id(machines, "m1")
    assert third_boot not in (first_boot, second_boot)
    ticker_pid(machines, "m1")
    assert must(ssh(machines, "m1", "cat ~/written ~/written2")).split() == ["before-reboot", "before-cut"]
    # The persistent journal has the unit's output from every boot, in order.
    assert journal_boots(machines, "m1") == [first_boot, second_boot, third_boot]
    assert machines.boots("m1") == 3 and first_pid > 0


def test_power_cut_kills_every_process_of_the_machine_at_once(machines: MachineFleet) -> None:
    must(ssh(machines, "m2", "nohup sleep 1000 >/dev/null 2>&1 & echo $! > ~/sleeper.pid"))
    sleeper = int(must(ssh(machines, "m2", "cat ~/sleeper.pid")))
    outside = [p for p in _pids_in_netns(machines.hosts[1].netns) if _cmdline(p) == ["sleep", "1000"]]
    assert len(outside) == 1 and sleeper > 0
    machines.power_cut("m2", restore=False)
    assert not machines.is_on("m2")
    assert not Path(f"/proc/{outside[0]}").exists(), "the machine's processes died with it"
    with pytest.raises(MachineError, match="not running"):
        machines.exec("m2", ["true"])
    machines.power_on("m2")
    assert must(ssh(machines, "m2", "cat ~/sleeper.pid")).strip() == str(sleeper)


def test_pid_file_from_before_a_reboot_points_at_nothing_or_a_stranger(machines: MachineFleet) -> None:
    """Groundwork for issue 14: a pid file survives a reboot, the process it named does not."""
    must(ssh(machines, "m2", "nohup sleep 1001 >/dev/null 2>&1 & echo $! > ~/app.pid"))
    pid = int(must(ssh(machines, "m2", "cat ~/app.pid")))
    assert must(ssh(machines, "m2", f"tr '\\0' ' ' < /proc/{pid}/cmdline")).strip() == "sleep 1001"
    machines.reboot("m2")
    assert int(must(ssh(machines, "m2", "cat ~/app.pid"))) == pid, "the disk (and the pid file) survived"
    now = machines.exec("m2", ["cat", f"/proc/{pid}/cmdline"], check=False)
    assert now.returncode != 0 or now.stdout != "sleep\0001001\0", "the old process cannot have survived"
    # The dangerous case, made deterministic: the stale pid names a live process of another
    # user, which `kill -0` as root calls "running" and which deploy cannot signal.  Put one
    # there, unless a process of the machine already holds the pid.
    for _ in range(5):
        with contextlib.suppress(MachineError):
            machines.spawn_at_pid("m2", pid, ["sleep", "2002"], user="nobody")
        holder = machines.exec("m2", ["stat", "-c", "%U", f"/proc/{pid}"], check=False)
        if holder.returncode == 0:
            break
    assert holder.stdout.strip() not in ("", "deploy"), holder
    assert machines.exec("m2", ["kill", "-0", str(pid)], check=False).returncode == 0
    denied = ssh(machines, "m2", f"kill {pid}")
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied


def test_spawn_at_pid_refuses_a_pid_in_use(machines: MachineFleet) -> None:
    sshd = int(must(machines.exec("m1", ["systemctl", "show", "-P", "MainPID", "ssh"])))
    with pytest.raises(MachineError, match="taken"):
        machines.spawn_at_pid("m1", sshd, ["sleep", "1"])


# --------------------------------------------------------------------------- teardown


def _pids_in_netns(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")
    except OSError:
        return []


def _snapshot(fleet: MachineFleet) -> dict[str, list[str]]:
    data = json.loads((fleet.base_dir / "machines.json").read_text())
    return {
        "netns": [m["netns"] for m in data["machines"]],
        "veths": [m["veth"] for m in data["machines"]],
        "pids": [str(m[k]) for m in data["machines"] for k in ("nspawn_pid", "leader_pid")],
        "roots": [f"{m['dir']}/root" for m in data["machines"]],
        "base": [data["base_dir"]],
        "network": [f"10.{data['octet']}.0.0/16"],
    }


def _nspawn_pids() -> set[int]:
    return {
        int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _cmdline(int(e.name))[:1] == ["systemd-nspawn"]
    }


def assert_nothing_left(snap: dict[str, list[str]]) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in snap["netns"]:
        assert ns not in namespaces, f"namespace {ns} left behind"
    for veth in snap["veths"]:
        assert not Path("/sys/class/net", veth).exists(), f"link {veth} left behind"
    for pid in snap["pids"]:
        assert not Path(f"/proc/{pid}").exists() or _cmdline(int(pid))[:1] != ["systemd-nspawn"], f"pid {pid} left"
    mounts = Path("/proc/mounts").read_text()
    for root in snap["roots"]:
        assert root not in mounts, f"overlay {root} still mounted"
    assert not Path(snap["base"][0]).exists()
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    assert snap["network"][0] not in routes


def test_teardown_leaves_nothing_behind() -> None:
    _require_machines()
    fleet = MachineFleet(1).start()
    snap = _snapshot(fleet)
    fleet.exec("m1", ["sh", "-c", "setsid -f sleep 1000 </dev/null >/dev/null 2>&1"])
    inside = _pids_in_netns(fleet.hosts[0].netns)
    assert inside
    fleet.stop()
    assert_nothing_left(snap)
    assert not [p for p in inside if Path(f"/proc/{p}").exists()], "processes of the machine survived"
    fleet.stop()  # idempotent


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.5, 3.0])
def test_teardown_in_the_middle_of_a_reboot_leaves_nothing(delay: float) -> None:
    """Whether the machine is shutting down, between boots or booting: stop() still cleans up."""
    _require_machines()
    fleet = MachineFleet(1).start()
    snap = _snapshot(fleet)
    errors: list[BaseException] = []

    def reboot() -> None:
        try:
            fleet.reboot("m1")
        except BaseException as exc:  # the fleet goes away under it: expected
            errors.append(exc)

    rebooter = threading.Thread(target=reboot)
    rebooter.start()
    time.sleep(delay)
    try:
        fleet.stop()
    finally:
        rebooter.join(timeout=240)
    assert not rebooter.is_alive()
    fleet.stop()
    # nspawn processes of every boot, including one started after the snapshot.
    snap["pids"] += [str(fleet._rt["m1"].nspawn_pid)]
    assert_nothing_left(snap)


OWNER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from tests.harness.machines import MachineFleet
    fleet = MachineFleet(1).start()
    print(fleet.base_dir, flush=True)
    time.sleep(600)
    """
)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Adopt the orphans of killed owners (this machine's PID 1 never reaps them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    try:
        yield
    finally:
        libc.prctl(36, 0, 0, 0, 0)


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "ctrl-c", "sigkill"])
def test_owner_killed_tears_down_or_is_reaped(sig: signal.Signals) -> None:
    """SIGTERM, Ctrl-C: the owner tears its machines down itself.  SIGKILL: the next fleet reaps them."""
    _require_machines()
    with subreaper():
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER.format(repo=str(REPO))], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        try:
            assert owner.stdout is not None
            base = Path(owner.stdout.readline().strip())
            assert base.parent == REGISTRY, f"owner did not start: {base}"
            fleet = MachineFleet.load(base / "machines.json")
            snap = _snapshot(fleet)
            owner.send_signal(sig)
            owner.wait(timeout=120)
            if sig == signal.SIGKILL:
                assert Path(snap["base"][0]).exists(), "a SIGKILLed owner cannot clean up"
                assert base.name in reap_stale_machines()
            deadline = time.monotonic() + 30
            while _nspawn_pids() & {int(p) for p in snap["pids"] if p != "None"} and time.monotonic() < deadline:
                _reap_children()
                time.sleep(0.1)
            _reap_children()
            assert_nothing_left(snap)
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait()
            reap_stale_machines()


# --------------------------------------------------------------------------- releases


def test_example_release_runs_on_a_machine_as_deploy(machines: MachineFleet) -> None:
    """What the root filesystem must hold for a deployed OTP release: every library its
    bundled ERTS and NIFs link (ldd), crypto working, and a system ERTS of the same OTP."""
    from tests.harness.examples import build_hello

    tarball = build_hello()
    with tarball.open("rb") as data:
        upload = subprocess.run(
            [*machines.ssh_argv("m1"), "rm -rf ~/rel && mkdir ~/rel && tar -C ~/rel -xzf -"],
            stdin=data,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert upload.returncode == 0, upload.stderr
    ldd = must(
        ssh(
            machines,
            "m1",
            "cd ~/rel && find . -type f | while read -r f; do "
            'head -c4 "$f" | grep -q ELF && { echo "## $f"; ldd "$f" 2>&1; }; done; true',
        )
    )
    assert ldd.count("## ") >= 5, ldd  # beam.smp, erlexec, epmd, NIFs...
    assert "not found" not in ldd, [line for line in ldd.splitlines() if "not found" in line]
    out = must(ssh(machines, "m1", "~/rel/bin/hello eval 'IO.puts(byte_size(:crypto.strong_rand_bytes(16)))'"))
    assert out.strip() == "16"
    here = subprocess.run(
        ["erl", "-noshell", "-eval", 'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
        capture_output=True,
        text=True,
    ).stdout
    there = must(
        ssh(machines, "m1", "erl -noshell -eval 'io:format(\"~s\", [erlang:system_info(otp_release)]), halt().'")
    )
    assert there == here != ""


def test_fleet_up_machines_writes_an_inventory_for_deploy_and_reboots(tmp_path: Path) -> None:
    """``invoke fleet.up --machines`` / ``fleet.reboot`` / ``fleet.down``, as the demo uses them."""
    _require_machines()
    import yaml

    invoke = [str(Path(sys.executable).with_name("invoke")), "-r", str(REPO)]
    env = f"machines{os.getpid()}"
    inventories = tmp_path / "inventory"

    def inv(*args: str) -> str:
        result = subprocess.run(
            [*invoke, *args, "--env", env], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result.stdout

    with subreaper():
        inv("fleet.up", "--machines", "--hosts", "1", "--inventory-dir", str(inventories))
        try:
            data = yaml.safe_load((inventories / f"{env}.yml").read_text())
            assert data["ssh"]["user"] == "deploy" and data["deploy_to"] == "/srv/hello"
            fleet = MachineFleet.load(tmp_path / ".fleet" / f"{env}.json")
            host = data["hosts"][0]
            assert (host["name"], host["address"]) == ("m1", fleet.hosts[0].address)
            assert must(ssh(fleet, "m1", "stat -c %U /srv/hello; id -un")).split() == ["deploy", "deploy"]
            before = boot_id(fleet, "m1")
            assert "reboot done" in inv("fleet.reboot", "--host", "m1")
            assert boot_id(fleet, "m1") != before
            snap = _snapshot(MachineFleet.load(tmp_path / ".fleet" / f"{env}.json"))
        finally:
            down = inv("fleet.down", "--inventory-dir", str(inventories))
        _reap_children()
    assert "is down" in down and not (inventories / f"{env}.yml").exists()
    assert_nothing_left(snap)
