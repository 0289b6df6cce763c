"""``node.service: systemd`` on booted Debian machines, deploying as the non-root ``deploy`` user.

Two machines (systemd as PID 1, journald, sudo). ``deployer setup`` runs once as root and gives ``deploy``
a sudoers drop-in limited to the unit; every other operation logs in as ``deploy``. The assertions read
what the machines really run (``systemctl show``, ``ps``, the node's own health answer, run as root
inside the machine), not only the reports. The tests share the machines and run in file order.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.inventory import Inventory, load_inventory
from deployer.engine.run import Options
from deployer.operations import commands
from deployer.operations import env as env_api
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.operations import setup as setup_api
from tests.harness.examples import build_hello
from tests.harness.fleet_tasks import COMMON_ROOT, local_inventory, prepare_fleet_files, remove_fleet_files
from tests.harness.machines import MachineFleet

from .support import Recorder, explain
from .test_machines import _require_machines

pytestmark = pytest.mark.fleet

UNIT = "deployer-hello-e2e.service"
DROPIN = "/etc/sudoers.d/deployer-hello-e2e"
PORT = 4000
D = "/srv/hello"
APP_USER = "hello"


@pytest.fixture(scope="module")
def machines() -> Iterator[MachineFleet]:
    _require_machines()
    with MachineFleet(2, shared_dir=COMMON_ROOT / "{runid}") as fleet:
        prepare_fleet_files(fleet)
        try:
            yield fleet
        finally:
            remove_fleet_files(fleet)


@pytest.fixture(scope="module")
def inventory_dir(machines: MachineFleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data: dict[str, Any] = local_inventory(machines, port=PORT)
    data["node"] = {"service": "systemd", "stop_timeout": 20}
    data["health"]["deadline"] = 60
    directory = tmp_path_factory.mktemp("inventory")
    (directory / "e2e.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    normal = build_hello("0.1.0", migrations=2)
    return {
        "0.1.0": normal,
        "0.2.0": build_hello("0.2.0", migrations=2),
        "crash": build_hello("0.2.0", variant="crash", migrations=2),
        "system-erts": system_erts(normal, tmp_path_factory.mktemp("erts") / "hello-0.1.0-system-erts.tar.gz"),
    }


def system_erts(source: Path, dest: Path) -> Path:
    """The release as ``include_erts: false`` builds it: no ``erts-*``, the start script runs the PATH's erl,
    and the boot scripts load every application from ``$RELEASE_LIB`` (the release's lib/), not ``$ROOT``
    (which is then the system's Erlang); the boot files are made again from the edited scripts."""
    work = dest.parent / "release"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    with tarfile.open(source, "r:gz") as src:
        src.extractall(work, filter="tar")
    for erts in work.glob("erts-*"):
        shutil.rmtree(erts)
    for elixir in work.glob("releases/*/elixir"):
        lines = elixir.read_text().splitlines()
        elixir.write_text("\n".join(line for line in lines if not line.startswith('ERTS_BIN="$SCRIPT_PATH"')) + "\n")
    for boot in work.glob("releases/*/*.script"):
        boot.write_text(boot.read_text().replace('"$ROOT/lib/', '"$RELEASE_LIB/'))
        stem = str(boot.with_suffix(""))
        subprocess.run(
            ["erl", "-noshell", "-eval", f'ok = systools:script2boot("{stem}"), halt().'], check=True, timeout=120
        )
    with tarfile.open(dest, "w:gz", compresslevel=1) as out:
        for entry in sorted(work.iterdir()):
            out.add(entry, arcname=entry.name)
    return dest


def inv(directory: Path) -> Inventory:
    return load_inventory("e2e", directory)


def artifact(path: Path) -> Artifact:
    return inspect_tarball(path, "hello")


def root(fleet: MachineFleet, host: str, command: str, check: bool = True) -> str:
    return fleet.sh(host, command, check=check, timeout=60).stdout


def unit(fleet: MachineFleet, host: str) -> dict[str, str]:
    """What systemd says about the unit, read as root inside the machine."""
    out = root(fleet, host, f"systemctl show -p ActiveState -p MainPID -p NRestarts -p UnitFileState {UNIT}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def served_version(fleet: MachineFleet, host: str) -> str | None:
    out = fleet.sh(host, f"curl -fsS --max-time 5 http://127.0.0.1:{PORT}/health", check=False, timeout=30)
    if out.returncode != 0:
        return None
    return str(yaml.safe_load(out.stdout)["version"])


def wait_served(fleet: MachineFleet, host: str, version: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while served_version(fleet, host) != version:
        assert time.monotonic() < deadline, f"{host} does not serve {version}: {unit(fleet, host)}"
        time.sleep(1)


def node_runs_as_hello_from_current(fleet: MachineFleet, host: str) -> int:
    """The unit is active, enabled, its main process is the BEAM of a release of D run by the app's own
    account ``hello`` (node.user's default), not by ``deploy`` who deployed it."""
    state = unit(fleet, host)
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
    pid = int(state["MainPID"])
    assert root(fleet, host, f"ps -o user= -p {pid}").strip() == APP_USER
    exe = root(fleet, host, f"readlink /proc/{pid}/exe").strip()
    assert exe.endswith("/bin/beam.smp"), exe
    return pid


def current(fleet: MachineFleet, host: str) -> str:
    return root(fleet, host, f"readlink {D}/current").strip()


# --------------------------------------------------------------------------- setup


def test_setup_prepares_fresh_hosts_once_and_then_reports_unchanged(
    machines: MachineFleet, inventory_dir: Path
) -> None:
    inventory = inv(inventory_dir)
    dry = setup_api.setup(inventory, "root", Options(dry_run=True))
    assert dry.report.dry_run and dry.plan is not None and dry.plan.kind == "setup"
    assert root(machines, "m1", f"test -e {D} && echo yes || echo no").strip() == "no"

    first = setup_api.setup(inventory, "root")
    assert first.report.ok, explain(first.report)
    for host in ("m1", "m2"):
        changes = first.changes[host]
        assert any(c.startswith(f"created {D}") for c in changes), changes
        assert "installed the unit" in changes and f"wrote {DROPIN}" in changes, changes
        assert root(machines, host, f"stat -c '%U %a' {D}").split() == ["deploy", "755"]
        assert root(machines, host, f"stat -c '%U %a' {DROPIN}").split() == ["root", "440"]
        assert root(machines, host, f"systemctl is-enabled {UNIT}").strip() == "enabled"
        assert "systemd-journal" in root(machines, host, "id -nG deploy").split()
        assert f"created the account {APP_USER} (runs the node)" in changes, changes
        # A system account with no shell and no home of its own, in no group of deploy's.
        entry = root(machines, host, f"getent passwd {APP_USER}").strip().split(":")
        assert entry[5:] == ["/nonexistent", "/usr/sbin/nologin"], entry
        assert int(entry[2]) < 1000, entry

    second = setup_api.setup(inventory, "root")
    assert second.report.ok, explain(second.report)
    assert second.changes == {"m1": [], "m2": []}


# --------------------------------------------------------------------------- the release cycle as deploy


def test_deploy_upgrade_rollback_restart_revert_as_deploy(
    machines: MachineFleet, inventory_dir: Path, tarballs: dict[str, Path]
) -> None:
    inventory = inv(inventory_dir)
    assert inventory.config.ssh.user == "deploy"
    first = api.deploy(inventory, artifact(tarballs["0.1.0"]))
    assert first.report.ok, explain(first.report)
    pids = {}
    for host in ("m1", "m2"):
        assert served_version(machines, host) == "0.1.0"
        pids[host] = node_runs_as_hello_from_current(machines, host)

    second = api.deploy(inventory, artifact(tarballs["0.2.0"]))
    assert second.report.ok, explain(second.report)
    for host in ("m1", "m2"):
        assert served_version(machines, host) == "0.2.0"
        assert node_runs_as_hello_from_current(machines, host) != pids[host]

    back = api.rollback(inventory)
    assert back.report.ok, explain(back.report)
    assert [served_version(machines, h) for h in ("m1", "m2")] == ["0.1.0", "0.1.0"]
    before = {h: node_runs_as_hello_from_current(machines, h) for h in ("m1", "m2")}

    restarted = ops.lifecycle(inventory, "restart")
    assert restarted.report.ok, explain(restarted.report)
    for host in ("m1", "m2"):
        assert node_runs_as_hello_from_current(machines, host) != before[host]
        assert served_version(machines, host) == "0.1.0"

    on = current(machines, "m1")
    crash = api.deploy(inventory, artifact(tarballs["crash"]))
    assert not crash.report.ok
    assert {h.outcome for h in crash.report.hosts} == {"reverted"}, explain(crash.report)
    for host in ("m1", "m2"):
        assert served_version(machines, host) == "0.1.0"
        node_runs_as_hello_from_current(machines, host)
    assert current(machines, "m1") == on

    lines: list[str] = []
    ops.logs(inventory, "m1", lines=200, on_output=lambda _, text: lines.append(text))
    assert "hello" in "".join(lines).lower(), lines


def test_the_app_account_reads_its_secrets_only_through_the_unit_and_deploy_still_reaches_the_node(
    machines: MachineFleet, inventory_dir: Path
) -> None:
    """The node's account cannot read the env file or the cookie in shared/, nor write a release; the unit
    hands it its own copies. deploy's rpc (eval), status and the env file stay deploy's."""
    inventory = inv(inventory_dir)
    host = "m1"
    pid = node_runs_as_hello_from_current(machines, host)

    def as_app(command: str) -> int:
        quoted = command.replace("'", "'\\''")
        return machines.sh(host, f"su -s /bin/sh {APP_USER} -c '{quoted}'", check=False, timeout=30).returncode

    assert as_app(f"cat {D}/shared/node.env") != 0
    assert as_app(f"cat {D}/shared/.cookie") != 0
    assert as_app(f"touch {D}/current/lib/x {D}/shared/x {D}/releases/x") != 0
    assert as_app(f"ls {D}/current/bin/hello") == 0
    for path in ("shared/node.env", "shared/.cookie"):
        owner, mode = root(machines, host, f"stat -c '%U %a' {D}/{path}").split()
        assert owner == "deploy" and mode in ("600", "400"), (path, owner, mode)
    # What the node got: the unit's credentials, readable by hello alone, and a private HOME linking to them.
    creds = f"/run/credentials/{UNIT}"
    assert root(machines, host, f"stat -c '%U %a' {creds}/node.env {creds}/cookie").split() == [
        APP_USER,
        "400",
        APP_USER,
        "400",
    ]
    environ = root(machines, host, f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "HOME=/run/deployer-hello-e2e/home" in environ.splitlines(), environ
    assert "CREDENTIALS_DIRECTORY" not in environ and "HELLO_SECRET=" in environ
    assert root(machines, host, f"readlink /proc/{pid}/cwd").strip() == "/var/lib/deployer-hello-e2e"

    rows = commands.eval_expression(inventory, "IO.puts(System.pid())", Options(hosts=[host]))
    assert rows[0].ok, rows
    assert str(pid) in rows[0].stdout.split(), rows
    # A new value reaches the node through the unit: env push writes shared/node.env (deploy's), the restart
    # gives the node a fresh credential copy.
    data = yaml.safe_load((inventory_dir / "e2e.yml").read_text())
    data["env"]["clear"]["HELLO_GREETING"] = "pushed through the unit"
    pushed_dir = inventory_dir.parent / "inventory-pushed"
    pushed_dir.mkdir(exist_ok=True)
    (pushed_dir / "e2e.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    pushed = env_api.push(inv(pushed_dir), Options(hosts=[host]))
    assert pushed.report.ok, explain(pushed.report)
    pid = node_runs_as_hello_from_current(machines, host)
    environ = root(machines, host, f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "HELLO_GREETING=pushed through the unit" in environ.splitlines(), environ
    assert root(machines, host, f"stat -c '%U %a' {D}/shared/node.env").split() == ["deploy", "600"]
    back = env_api.push(inventory, Options(hosts=[host]))
    assert back.report.ok, explain(back.report)
    pid = node_runs_as_hello_from_current(machines, host)

    # status, as deploy, recognises hello's BEAM as the node (by its command line: another user's /proc/PID/exe
    # is not readable).
    row = ops.status_document(ops.status(inventory, Options(hosts=[host])))["hosts"][0]
    assert row["node_pids"] == [pid] and row["healthy"] is True, row


def test_stop_and_start_drive_the_unit(machines: MachineFleet, inventory_dir: Path) -> None:
    inventory = inv(inventory_dir)
    stopped = ops.lifecycle(inventory, "stop", Options(hosts=["m2"]))
    assert stopped.report.ok, explain(stopped.report)
    assert unit(machines, "m2")["ActiveState"] == "inactive"
    assert served_version(machines, "m2") is None
    started = ops.lifecycle(inventory, "start", Options(hosts=["m2"]))
    assert started.report.ok, explain(started.report)
    node_runs_as_hello_from_current(machines, "m2")
    assert served_version(machines, "m2") == "0.1.0"


def test_a_killed_node_is_restarted_by_systemd_and_status_counts_it(
    machines: MachineFleet, inventory_dir: Path
) -> None:
    pid = node_runs_as_hello_from_current(machines, "m1")
    restarts = int(unit(machines, "m1")["NRestarts"])
    root(machines, "m1", f"kill -KILL {pid}")
    deadline = time.monotonic() + 90
    while True:
        state = unit(machines, "m1")
        if state["ActiveState"] == "active" and state["MainPID"] not in ("0", str(pid)):
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    wait_served(machines, "m1", "0.1.0")
    rows = ops.status_document(ops.status(inv(inventory_dir), Options(hosts=["m1"])))["hosts"]
    assert rows[0]["unit"]["restarts"] == restarts + 1, rows
    assert rows[0]["unit"]["main_pid"] == int(unit(machines, "m1")["MainPID"])
    assert rows[0]["healthy"] is True


@pytest.mark.parametrize("how", ["reboot", "power_cut"])
def test_node_comes_back_on_current_after_reboot_without_deployer(
    machines: MachineFleet, inventory_dir: Path, how: str
) -> None:
    host = "m2"
    on = current(machines, host)
    boot = root(machines, host, "cat /proc/sys/kernel/random/boot_id")
    getattr(machines, how)(host)
    assert root(machines, host, "cat /proc/sys/kernel/random/boot_id") != boot
    wait_served(machines, host, "0.1.0")
    assert current(machines, host) == on
    node_runs_as_hello_from_current(machines, host)


@pytest.mark.parametrize("owner", ["deploy", APP_USER])
def test_a_pid_file_naming_a_live_stranger_is_never_signalled(
    machines: MachineFleet, inventory_dir: Path, owner: str
) -> None:
    inventory = inv(inventory_dir)
    # A process of deploy's, or of the node's own account, that is not the node (its own session, stdio
    # closed: nothing waits on it).
    stranger = root(
        machines,
        "m1",
        f"setsid -f su -s /bin/sh {owner} -c 'exec sleep 1000' </dev/null >/dev/null 2>&1; sleep 0.5; "
        f"pgrep -n -u {owner} -x sleep",
    )
    pid = int(stranger.strip())
    root(machines, "m1", f"echo '{pid} 1' > {D}/shared/node.pid && chown deploy: {D}/shared/node.pid")
    for operation in ("restart", "stop", "start"):
        result = ops.lifecycle(inventory, operation, Options(hosts=["m1"]))
        assert result.report.ok, explain(result.report)
        assert root(machines, "m1", f"kill -0 {pid} && echo alive").strip() == "alive", operation
    row = ops.status_document(ops.status(inventory, Options(hosts=["m1"])))["hosts"][0]
    assert pid not in row["node_pids"] and row["node_pids"], row
    root(machines, "m1", f"kill {pid}", check=False)
    node_runs_as_hello_from_current(machines, "m1")


def test_a_missing_sudo_right_names_the_sudoers_line(machines: MachineFleet, inventory_dir: Path) -> None:
    inventory = inv(inventory_dir)
    root(machines, "m2", f"mv {DROPIN} /root/dropin.saved")
    try:
        result = ops.lifecycle(inventory, "restart", Options(hosts=["m2"]))
        assert not result.report.ok
        error = result.report.hosts[0].error or ""
        assert f"/usr/bin/systemctl restart {UNIT}" in error, explain(result.report)
        assert "deploy ALL=(root) NOPASSWD: /usr/bin/install -m 0644" in error, error
        assert "visudo" in error, error
        # Nothing was stopped: the node still serves.
        assert served_version(machines, "m2") == "0.1.0"
    finally:
        root(machines, "m2", f"mv /root/dropin.saved {DROPIN}")


@pytest.mark.parametrize("delay", [0.0, 3.0])
def test_power_cut_during_activation_then_status_then_deploy_converges(
    machines: MachineFleet, inventory_dir: Path, tarballs: dict[str, Path], delay: float
) -> None:
    inventory = inv(inventory_dir)
    host = "m2"
    events = Recorder()

    def cut() -> None:
        def later() -> None:
            time.sleep(delay)
            machines.power_cut(host)

        threading.Thread(target=later, daemon=True).start()

    events.on(host, "activate", "start", cut)
    boot = root(machines, host, "cat /proc/sys/kernel/random/boot_id")
    interrupted = api.deploy(inventory, artifact(tarballs["0.2.0"]), Options(events=events))
    # Wait until the machine is back (the power cut thread boots it again).
    deadline = time.monotonic() + 240
    while True:
        try:
            root(machines, host, "systemctl is-system-running --wait >/dev/null 2>&1; true")
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(2)
    assert root(machines, host, "cat /proc/sys/kernel/random/boot_id") != boot, "the power was not cut"
    assert not interrupted.report.ok or served_version(machines, host) is not None
    # status tells the truth: the release current names, and healthy exactly when the node answers.
    deadline = time.monotonic() + 120
    while True:
        row = ops.status_document(ops.status(inventory, Options(hosts=[host])))["hosts"][0]
        serving = served_version(machines, host)
        on = current(machines, host)
        assert row["current"] == on.removeprefix("releases/")
        if row["healthy"] == (serving is not None):
            break
        assert time.monotonic() < deadline, (row, serving)
        time.sleep(1)
    api.unlock(inventory, Options(hosts=[host]), force=True)
    again = api.deploy(inventory, artifact(tarballs["0.1.0"]))
    assert again.report.ok, explain(again.report)
    for name in ("m1", "m2"):
        assert served_version(machines, name) == "0.1.0"
        node_runs_as_hello_from_current(machines, name)


def test_a_release_without_erts_runs_on_the_system_erts(
    machines: MachineFleet, inventory_dir: Path, tarballs: dict[str, Path]
) -> None:
    inventory = inv(inventory_dir)
    result = api.deploy(inventory, artifact(tarballs["system-erts"]), Options(hosts=["m1"]))
    assert result.report.ok, explain(result.report)
    pid = node_runs_as_hello_from_current(machines, "m1")
    exe = root(machines, "m1", f"readlink /proc/{pid}/exe").strip()
    assert exe.startswith("/usr/lib/erlang/erts-"), exe
    assert served_version(machines, "m1") == "0.1.0"
    rows = ops.status_document(ops.status(inventory, Options(hosts=["m1"])))["hosts"]
    assert rows[0]["healthy"] is True and rows[0]["node_pids"] == [pid], rows
