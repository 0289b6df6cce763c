"""The test fleet itself: real sshd hosts in namespaces, their isolation, faults and teardown."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from tests.harness import fleet as fleet_mod
from tests.harness import netns
from tests.harness.fleet import REGISTRY, Fleet, FleetHost, reap_stale_fleets
from tests.harness.proxy import LatencyProxy

# The lead registers the plugin from tests/conftest.py too; registering twice is harmless.
pytest_plugins = ["tests.fleet_fixtures"]

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# --------------------------------------------------------------------------- helpers


def connect(
    fleet: Fleet,
    host: FleetHost,
    *,
    known_hosts: Path | None = None,
    address: str | None = None,
    port: int | None = None,
    timeout: float = 10,
) -> paramiko.SSHClient:
    """Paramiko with strict host key checking against the fleet's (or the given) known_hosts."""
    client = paramiko.SSHClient()
    client.get_host_keys().load(str(known_hosts or fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            address or host.address,
            port=port or host.port,
            username=fleet.user,
            key_filename=str(fleet.client_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except BaseException:
        client.close()
        raise
    return client


def run(client: paramiko.SSHClient, command: str, timeout: float = 30) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    err = stderr.read().decode()
    assert stdout.channel.status_event.wait(timeout), f"no exit status for {command!r}"
    return stdout.channel.recv_exit_status(), out, err


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def netns_pids(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def process_exists(pid: int) -> bool:
    """Any trace of the pid at all, zombies included."""
    return Path(f"/proc/{pid}").exists()


def fleet_snapshot(fleet: Fleet) -> dict[str, object]:
    return {
        "netns": [h.netns for h in fleet.hosts],
        "veths": [f"{h.netns}o" for h in fleet.hosts],
        "pids": set().union(*(netns_pids(h.netns) for h in fleet.hosts)),
        "base_dir": fleet.base_dir,
        "entry": REGISTRY / fleet.runid,
        "network": str(fleet.network),
    }


def assert_nothing_left(snap: dict[str, object]) -> None:
    namespaces = netns_list()
    for ns in snap["netns"]:  # type: ignore[attr-defined]
        assert ns not in namespaces, f"namespace {ns} left behind"
    all_links = links()
    for veth in snap["veths"]:  # type: ignore[attr-defined]
        assert f" {veth}@" not in all_links and f" {veth}:" not in all_links, f"link {veth} left behind"
    left = [p for p in snap["pids"] if process_exists(p)]  # type: ignore[attr-defined]
    assert not left, f"processes left behind (zombies included): {left}"
    mounts = Path("/proc/mounts").read_text()
    assert str(snap["base_dir"]) not in mounts and "fleet-fill" not in mounts
    assert not Path(str(snap["base_dir"])).exists()
    assert not os.path.lexists(str(snap["entry"]))
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    assert str(snap["network"]) not in routes


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Adopt orphans of our subprocesses (this machine's PID 1 never reaps them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def spawn_owner(script: str) -> subprocess.Popen[str]:
    """A separate Python process owning a fleet; its first stdout line is the fleet state."""
    return subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert result and result[0], "owner process printed nothing"
    return result[0]


# --------------------------------------------------------------------------- SSH


@pytest.mark.fleet
def test_paramiko_with_strict_host_keys_reaches_every_host(fleet: Fleet) -> None:
    for host in fleet.hosts:
        client = connect(fleet, host)
        try:
            rc, out, _ = run(client, "hostname; id -u; pwd")
        finally:
            client.close()
        assert rc == 0
        assert out.split() == [host.name, "0", "/root"]


@pytest.mark.fleet
def test_openssh_client_with_strict_host_keys(fleet: Fleet) -> None:
    h2 = fleet.host("h2")
    argv = fleet.ssh_argv(h2)
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert f"UserKnownHostsFile={fleet.known_hosts}" in argv
    proc = subprocess.run([*argv, "hostname"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "h2"


@pytest.mark.fleet
def test_sftp_subsystem_works(fleet: Fleet) -> None:
    h1 = fleet.host("h1")
    client = connect(fleet, h1)
    try:
        with client.open_sftp() as sftp, sftp.open("/srv/uploaded.txt", "w") as f:
            f.write("via sftp")
    finally:
        client.close()
    assert (h1.host_dir / "uploaded.txt").read_text() == "via sftp"


@pytest.mark.fleet
def test_wrong_known_hosts_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    lines = {line.split()[0]: line.split(None, 1)[1] for line in fleet.known_hosts.read_text().splitlines()}
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{h1.address} {lines[h2.address]}\n")  # h2's key filed under h1's address
    with pytest.raises(paramiko.BadHostKeyException):
        connect(fleet, h1, known_hosts=wrong)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(fleet, h1, known_hosts=empty)

    argv = [a.replace(str(fleet.known_hosts), str(wrong)) for a in fleet.ssh_argv(h1)]
    proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr


# --------------------------------------------------------------------------- isolation


@pytest.mark.fleet
def test_each_host_sees_only_its_own_files(fleet: Fleet) -> None:
    for host in fleet.hosts:
        (host.host_dir / f"from-outside-{host.name}").write_text(host.name)
        fleet.exec(host, f"echo {host.name} > /srv/from-inside-{host.name}; echo {host.name} > /tmp/t-{host.name}")
    for host in fleet.hosts:
        listing = fleet.exec(host, "ls /srv").stdout.split()
        assert sorted(listing) == [f"from-inside-{host.name}", f"from-outside-{host.name}"]
        assert fleet.exec(host, "ls /tmp").stdout.split() == [f"t-{host.name}"]
        assert (host.host_dir / f"from-inside-{host.name}").read_text() == f"{host.name}\n"
    # Nothing leaked onto this machine's own /srv.
    assert not any(p.name.startswith("from-") for p in Path("/srv").iterdir())


@pytest.mark.fleet
def test_hosts_have_distinct_addresses_but_the_same_port_space(fleet: Fleet) -> None:
    assert len({h.address for h in fleet.hosts}) == len(fleet.hosts)
    assert all(h.port == 22 for h in fleet.hosts)
    server = textwrap.dedent("""
        import socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 4369))
        s.listen(8)
        while True:
            c, _ = s.accept()
            c.sendall(socket.gethostname().encode())
            c.close()
    """)
    for name in ("h1", "h2"):
        (fleet.host(name).host_dir / "srv.py").write_text(server)
        fleet.exec(name, "setsid python3 /srv/srv.py </dev/null >/dev/null 2>&1 &")

    def answer(address: str) -> str:
        with socket.create_connection((address, 4369), timeout=2) as s:
            return s.recv(100).decode()

    for name in ("h1", "h2"):
        host = fleet.host(name)

        def listening(host: FleetHost = host) -> bool:
            return fleet.exec(host, "ss -ltnH 'sport = :4369'").stdout.strip() != ""

        wait_until(listening, what=f"listener on {name}")
        assert answer(host.address) == name
    assert fleet.exec("h3", "ss -ltnH 'sport = :4369'").stdout.strip() == ""
    # Hosts reach each other by name (the fleet's /etc/hosts), as an Erlang cluster would.
    probe = "import socket; print(socket.create_connection(('h1', 4369), timeout=2).recv(100).decode())"
    assert fleet.exec("h3", f'python3 -c "{probe}"').stdout.strip() == "h1"


@pytest.mark.fleet
def test_pid_namespace_shows_only_the_hosts_processes(fleet: Fleet) -> None:
    fleet.exec("h2", "setsid sleep 4321 </dev/null >/dev/null 2>&1 &")
    wait_until(lambda: "sleep 4321" in fleet.exec("h2", "ps -e -o args=").stdout, what="sleep on h2")
    ps = fleet.exec("h1", "ps -e -o pid=,args=").stdout
    assert "sleep 4321" not in ps
    pids = {int(line.split()[0]): line.split(None, 1)[1] for line in ps.splitlines()}
    assert "init.py" in pids[1]
    assert any("sshd" in args and "listener" in args for args in pids.values())
    assert len(pids) < 10, ps  # init, sshd, this shell and ps: nothing of the machine's
    # The machine, of course, sees the host's processes.
    assert subprocess.run(["pgrep", "-f", "sleep 4321"], capture_output=True).returncode == 0


@pytest.mark.fleet
def test_orphaned_daemons_are_reaped_and_killable(fleet: Fleet) -> None:
    h1 = fleet.host("h1")
    client = connect(fleet, h1)
    try:
        rc, _, err = run(
            client, "setsid sh -c 'echo $$ > /tmp/orphan.pid; exec sleep 300' </dev/null >/dev/null 2>&1 &"
        )
    finally:
        client.close()
    assert rc == 0, err
    wait_until(lambda: fleet.exec(h1, "test -s /tmp/orphan.pid", check=False).returncode == 0, what="orphan pid file")
    pid = int(fleet.exec(h1, "cat /tmp/orphan.pid").stdout)
    # Its session is gone: it was adopted by the host's init (PID 1), not left to the machine.
    wait_until(lambda: fleet.exec(h1, f"ps -o ppid= -p {pid}").stdout.strip() == "1", what="adoption by init")
    fleet.exec(h1, f"kill {pid}")
    # Reaped at once: not a zombie that `kill -0` (a deployer's liveness probe) still sees.
    wait_until(
        lambda: fleet.exec(h1, f"kill -0 {pid}", check=False).returncode != 0, timeout=5, what="orphan to be reaped"
    )
    assert fleet.exec(h1, f"test -e /proc/{pid}", check=False).returncode != 0


# --------------------------------------------------------------------------- faults


@pytest.mark.fleet
def test_cut_link_times_out_and_restore_link_heals(fleet: Fleet) -> None:
    h1, h2 = fleet.host("h1"), fleet.host("h2")
    fleet.cut_link(h1)
    started = time.monotonic()
    with pytest.raises((TimeoutError, socket.timeout)):
        socket.create_connection((h1.address, 22), timeout=1.5)
    assert time.monotonic() - started >= 1.4  # a hang, not an immediate refusal
    connect(fleet, h2).close()  # the others are unaffected
    fleet.restore_link(h1)
    client = connect(fleet, h1)
    try:
        assert run(client, "hostname")[1].strip() == "h1"
    finally:
        client.close()


@pytest.mark.fleet
def test_stop_sshd_refuses_and_start_sshd_recovers(fleet: Fleet) -> None:
    h1 = fleet.host("h1")
    fleet.exec(h1, "setsid sleep 777 </dev/null >/dev/null 2>&1 &")
    fleet.stop_sshd(h1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((h1.address, 22), timeout=5)
    fleet.stop_sshd(h1)  # idempotent
    # Only sshd stopped: the host and its daemons live on.
    assert "sleep 777" in fleet.exec(h1, "ps -e -o args=").stdout
    fleet.start_sshd(h1)
    client = connect(fleet, h1)
    client.close()


@pytest.mark.fleet
def test_regenerated_host_key_is_refused_with_strict_checking(fleet: Fleet) -> None:
    h2 = fleet.host("h2")
    before = fleet.known_hosts.read_text()
    fleet.regenerate_host_key(h2)
    assert fleet.known_hosts.read_text() == before
    with pytest.raises(paramiko.BadHostKeyException):
        connect(fleet, h2)
    proc = subprocess.run([*fleet.ssh_argv(h2), "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    connect(fleet, fleet.host("h1")).close()


@pytest.mark.fleet
def test_fill_disk_makes_writes_fail_with_enospc(fleet: Fleet) -> None:
    h1 = fleet.host("h1")
    fleet.fill_disk(h1, "/srv/app", size="1m")
    client = connect(fleet, h1)
    try:
        rc, _, err = run(client, "dd if=/dev/zero of=/srv/app/big bs=64k count=64")
        assert rc != 0
        assert "No space left on device" in err
        # The rest of the host, and the other hosts, still have room.
        assert run(client, "dd if=/dev/zero of=/srv/ok bs=64k count=64 2>/dev/null")[0] == 0
    finally:
        client.close()
    assert fleet.exec("h2", "mkdir -p /srv/app && dd if=/dev/zero of=/srv/app/big bs=64k count=64").returncode == 0
    assert "fleet-fill" not in Path("/proc/mounts").read_text()
    fleet.restore_disk(h1, "/srv/app")
    assert fleet.exec(h1, "dd if=/dev/zero of=/srv/app/big bs=64k count=64").returncode == 0


# --------------------------------------------------------------------------- latency proxy


class EchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def round_trip(port: int, payload: bytes) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            got += chunk
        return time.monotonic() - started, got


def test_latency_proxy_delays_each_direction_and_keeps_order() -> None:
    echo = EchoServer()
    try:
        with LatencyProxy("127.0.0.1", echo.port, delay_s=0.15) as proxy:
            elapsed, got = round_trip(proxy.port, b"ping")
            assert got == b"ping"
            assert elapsed >= 0.3  # 0.15 there, 0.15 back
            payload = os.urandom(1 << 20)
            assert round_trip(proxy.port, payload)[1] == payload
            proxy.delay_s = 0.0
            assert round_trip(proxy.port, b"fast")[1] == b"fast"
    finally:
        echo.close()


def test_latency_proxy_connections_do_not_block_each_other() -> None:
    echo = EchoServer()
    try:
        with LatencyProxy("127.0.0.1", echo.port, delay_s=0.2) as proxy:
            results: list[float] = []
            threads = [
                threading.Thread(target=lambda: results.append(round_trip(proxy.port, b"x")[0])) for _ in range(5)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(results) == 5 and min(results) >= 0.4
            assert proxy.connections == 5
        with pytest.raises(RuntimeError):
            _ = proxy.port  # stopped
    finally:
        echo.close()


@pytest.mark.fleet
def test_latency_proxy_in_front_of_a_host(fleet: Fleet) -> None:
    h1 = fleet.host("h1")
    with LatencyProxy(h1.address, h1.port, delay_s=0.1) as proxy:
        started = time.monotonic()
        # Same host key, so strict checking still passes once the address is the proxy's.
        kh = fleet.known_hosts.parent / "proxy_known_hosts"
        key = next(
            line.split(None, 1)[1]
            for line in fleet.known_hosts.read_text().splitlines()
            if line.startswith(f"{h1.address} ")
        )
        kh.write_text(f"[127.0.0.1]:{proxy.port} {key}")
        client = connect(fleet, h1, known_hosts=kh, address="127.0.0.1", port=proxy.port)
        try:
            assert run(client, "hostname")[1].strip() == "h1"
        finally:
            client.close()
        assert time.monotonic() - started >= 0.2


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.fleet
def test_teardown_leaves_nothing_behind(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(2)
    h1 = fleet.host("h1")
    client = connect(fleet, h1)  # a live session during teardown
    run(client, "setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    fleet.exec("h2", "setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    fleet.fill_disk("h2")
    snap = fleet_snapshot(fleet)
    assert len(snap["pids"]) >= 6  # type: ignore[arg-type]
    fleet.stop()
    client.close()
    assert_nothing_left(snap)
    fleet.stop()  # idempotent
    # Nothing of ours waits to be reaped either.
    zombies = [
        e.name
        for e in os.scandir("/proc")
        if e.name.isdigit() and (st := netns.proc_stat(int(e.name))) and st[0] == "Z" and int(st[1]) == os.getpid()
    ]
    assert not zombies


@pytest.mark.fleet
def test_two_fleets_at_once_do_not_collide(make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    a = make_fleet(2)
    b = make_fleet(2, base_dir=tmp_path / "b")
    assert a.runid != b.runid and not a.network.overlaps(b.network)
    assert {h.netns for h in a.hosts}.isdisjoint(h.netns for h in b.hosts)
    assert (tmp_path / "b" / "owner.pid").exists() and (REGISTRY / b.runid).resolve() == tmp_path / "b"
    for f in (a, b):
        client = connect(f, f.host("h2"))
        client.close()
    snap = fleet_snapshot(b)
    b.stop()
    assert_nothing_left(snap)
    assert not (tmp_path / "b").exists()  # created by the fleet, so removed by it
    connect(a, a.host("h1")).close()  # a is untouched


@pytest.mark.fleet
def test_twenty_four_hosts(make_fleet: Callable[..., Fleet]) -> None:
    started = time.monotonic()
    fleet = make_fleet(24)
    elapsed = time.monotonic() - started
    print(f"24 hosts up in {elapsed:.2f}s")
    last = fleet.host("h24")
    proc = subprocess.run([*fleet.ssh_argv(last), "hostname"], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "h24"


@pytest.mark.fleet
def test_sigterm_to_the_owner_tears_the_fleet_down() -> None:
    fleet_mod.check_environment()
    owner = spawn_owner("""
        import json, time
        from tests.harness.fleet import Fleet
        f = Fleet(2).start()
        print(json.dumps({"netns": [h.netns for h in f.hosts], "base": str(f.base_dir), "runid": f.runid}),
              flush=True)
        time.sleep(120)
    """)
    try:
        info = json.loads(read_line(owner))
        assert set(info["netns"]) <= netns_list()
        pids = set().union(*(netns_pids(ns) for ns in info["netns"]))
        # Twice, as `timeout` and process-group kills do.
        owner.send_signal(signal.SIGTERM)
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(30) == -signal.SIGTERM
    finally:
        owner.kill()
        owner.wait(10)
    assert not set(info["netns"]) & netns_list()
    assert not Path(info["base"]).exists()
    assert not [p for p in pids if process_exists(p) and p != owner.pid]


@pytest.mark.fleet
def test_serve_runs_a_demo_fleet_until_interrupted() -> None:
    fleet_mod.check_environment()
    owner = spawn_owner("""
        import json
        from tests.harness.fleet import Fleet
        f = Fleet(1).start()
        print(json.dumps({"netns": f.hosts[0].netns, "base": str(f.base_dir)}), flush=True)
        f.serve(poll=0.1)
        print("stopped", flush=True)
    """)
    try:
        info = json.loads(read_line(owner))
        assert info["netns"] in netns_list()
        owner.send_signal(signal.SIGINT)
        assert read_line(owner).strip() == "stopped"
        assert owner.wait(30) == 0
    finally:
        owner.kill()
        owner.wait(10)
    assert info["netns"] not in netns_list()
    assert not Path(info["base"]).exists()


@pytest.mark.fleet
def test_detached_fleet_outlives_its_owner_and_is_stopped_from_elsewhere(tmp_path: Path) -> None:
    fleet_mod.check_environment()
    state = tmp_path / "fleet.json"
    with subreaper():
        owner = spawn_owner(f"""
            from pathlib import Path
            from tests.harness.fleet import Fleet
            f = Fleet(2).start()
            f.detach()
            f.save(Path({str(state)!r}))
            print("ok", flush=True)
        """)
        assert read_line(owner).strip() == "ok"
        assert owner.wait(30) == 0
        fleet = Fleet.load(state)
        try:
            assert {h.netns for h in fleet.hosts} <= netns_list()
            assert fleet.runid not in reap_stale_fleets()  # its owner is now the first host's init
            proc = subprocess.run([*fleet.ssh_argv("h2"), "hostname"], capture_output=True, text=True, timeout=30)
            assert proc.stdout.strip() == "h2"
            snap = fleet_snapshot(fleet)
        except BaseException:
            fleet.stop()
            raise
        fleet.stop()
    assert_nothing_left(snap)


@pytest.mark.fleet
def test_fleets_of_killed_owners_are_reaped() -> None:
    fleet_mod.check_environment()
    with subreaper():
        owner = spawn_owner("""
            import json, time
            from tests.harness.fleet import Fleet
            f = Fleet(1).start()
            print(json.dumps({"runid": f.runid, "netns": f.hosts[0].netns}), flush=True)
            time.sleep(120)
        """)
        try:
            info = json.loads(read_line(owner))
            pids = netns_pids(info["netns"])
            owner.kill()  # SIGKILL: no teardown of its own
            owner.wait(10)
            # Left behind until the next reaper (this one, or another test run's) comes by.
            reaped = reap_stale_fleets()
            assert info["runid"] in reaped or not os.path.lexists(REGISTRY / info["runid"])
        finally:
            owner.kill()
            owner.wait(10)
    assert info["netns"] not in netns_list()
    assert not os.path.lexists(REGISTRY / info["runid"])
    assert not [p for p in pids if process_exists(p)]


def test_required_fleet_tests_fail_the_session_when_skipped(tmp_path: Path) -> None:
    # As if not root: the fleet fixtures skip, and DEPLOYER_REQUIRE_FLEET=1 turns that into a failure.
    (tmp_path / "conftest.py").write_text("import os\nos.geteuid = lambda: 1000\n")
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent("""
        def test_uses_fleet(fleet):
            pass

        def test_plain():
            pass
    """)
    )
    argv = [PYTHON, "-m", "pytest", "-q", "-rs", "-p", "tests.fleet_fixtures", "-p", "no:cacheprovider", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "DEPLOYER_REQUIRE_FLEET"}
    env["PYTHONPATH"] = str(REPO)
    relaxed = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 1 skipped" in relaxed.stdout
    assert "needs root to create network namespaces" in relaxed.stdout
    required = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**env, "DEPLOYER_REQUIRE_FLEET": "1"}
    )
    assert required.returncode == 1, required.stdout
    assert "DEPLOYER_REQUIRE_FLEET=1 but 1 fleet test(s) were skipped" in required.stdout
    assert "test_x.py::test_uses_fleet" in required.stdout


def test_unavailable_without_root_or_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(fleet_mod.FleetUnavailable, match=r"^needs root: "):
        fleet_mod.check_environment()
    with pytest.raises(fleet_mod.FleetUnavailable, match=r"^needs root: "):
        Fleet(1).start()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_tool = fleet_mod.tool
    monkeypatch.setattr(fleet_mod, "tool", lambda name: None if name == "nsenter" else real_tool(name))
    with pytest.raises(fleet_mod.FleetUnavailable, match="missing tools: nsenter"):
        fleet_mod.check_environment()


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        Fleet(0)
    with pytest.raises(ValueError):
        Fleet(fleet_mod.MAX_HOSTS + 1)
    for bad in ("srv", "/", "/tmp/x", "/run", "/root/app"):
        with pytest.raises(ValueError):
            Fleet(1, deploy_root=bad)
    with pytest.raises(fleet_mod.FleetError):
        _ = Fleet(1).client_key  # not started
    Fleet(1).stop()  # stopping a fleet never started is fine


@pytest.mark.fleet
def test_session_fleet_is_shared(session_fleet: Fleet) -> None:
    assert [h.name for h in session_fleet.hosts] == ["h1", "h2", "h3"]
    assert session_fleet.exec("h3", "hostname").stdout.strip() == "h3"
