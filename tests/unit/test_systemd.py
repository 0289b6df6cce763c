"""``node.service: systemd``: the unit, the sudoers line, the runner and the scripts that drive the unit.

Exact renderings for what ends up in files on a host (unit, sudoers line), and the scripts run by a real
``sh`` against fakes of ``systemctl``, ``sudo``, ``id`` and ``journalctl`` on the PATH, as a login that is
not root: which commands go through ``sudo -n``, and what a refused one says.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout
from deployer.core.plan import layout_for, plan_lifecycle, service_for
from deployer.errors import InventoryError
from deployer.operations.setup import as_admin, deploy_user, plan_setup
from deployer.operations.status import _unit_document
from deployer.remote import ops as oc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import HealthCheck, deploy_vars, node_pids, script
from deployer.remote.shell import Script, env_file_text
from deployer.remote.systemd import (
    EXIT_SUDO,
    Service,
    parse_unit_state,
    setup_changes,
    setup_host,
    unit_name,
)
from tests.unit.helpers import BASE, inventory

MIX = flavour("mix")
LAYOUT = RemoteLayout("/srv/hello", "hello")
SERVICE = Service(LAYOUT, MIX, "deployer-hello-prod.service", stop_timeout=30, limit_nofile=65536)


def test_unit_name_and_the_unit_file() -> None:
    assert unit_name("hello", "prod") == "deployer-hello-prod.service"
    assert SERVICE.unit_text("deploy") == (
        "# Written by deployer: changes here are replaced by the next deploy (see node.* in the inventory).\n"
        "[Unit]\n"
        "Description=deployer: hello (prod)\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "User=deploy\n"
        "LoadCredential=cookie:/srv/hello/shared/.cookie\n"
        "LoadCredential=node.env:/srv/hello/shared/node.env\n"
        "RuntimeDirectory=deployer-hello-prod\n"
        "RuntimeDirectoryMode=0700\n"
        "StateDirectory=deployer-hello-prod\n"
        "StateDirectoryMode=0700\n"
        "ExecStart=/bin/sh /srv/hello/shared/systemd/deployer-hello-prod.run start\n"
        "ExecStop=/bin/sh /srv/hello/shared/systemd/deployer-hello-prod.run stop $MAINPID\n"
        "Restart=on-failure\n"
        "RestartSec=1\n"
        "TimeoutStopSec=30\n"
        "LimitNOFILE=65536\n"
        "SyslogIdentifier=hello\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def test_the_sudoers_line_allows_exactly_the_units_commands() -> None:
    assert SERVICE.sudoers_line("deploy") == (
        "deploy ALL=(root) NOPASSWD: "
        "/usr/bin/install -m 0644 /srv/hello/shared/systemd/deployer-hello-prod.service "
        "/etc/systemd/system/deployer-hello-prod.service, "
        "/usr/bin/systemctl daemon-reload, "
        "/usr/bin/systemctl enable deployer-hello-prod.service, "
        "/usr/bin/systemctl start deployer-hello-prod.service, "
        "/usr/bin/systemctl stop deployer-hello-prod.service, "
        "/usr/bin/systemctl restart deployer-hello-prod.service, "
        "/usr/bin/systemctl reset-failed deployer-hello-prod.service"
    )
    assert SERVICE.dropin == "/etc/sudoers.d/deployer-hello-prod"  # no dot: sudo reads it


def test_the_state_and_journal_fragments_render_exactly() -> None:
    state = script("s", SERVICE.state()).render()
    assert (
        "systemctl show -p ActiveState -p SubState -p MainPID -p NRestarts -p UnitFileState "
        "deployer-hello-prod.service 2>/dev/null | sed 's/^/unit_/' || true\n"
    ) in state
    assert (
        "exec journalctl -u deployer-hello-prod.service -n 50 --no-pager -o short-iso -f\n"
        in script("j", SERVICE.journal(lines=50, follow=True)).render()
    )


# --- the runner: the unit's ExecStart/ExecStop ----------------------------------------------------------------

FAKE_RELEASE_BIN = """#!/bin/sh
printf 'argv=%s\\n' "$*"
printf 'home=%s\\n' "$HOME"
printf 'greeting=%s\\n' "$GREETING"
printf 'pwd=%s\\n' "$(pwd)"
printf 'tmp=%s\\n' "${RELEASE_TMP:-}"
printf 'unit_dirs=%s\\n' "${CREDENTIALS_DIRECTORY:-}${RUNTIME_DIRECTORY:-}${STATE_DIRECTORY:-}"
"""


def _deployed(tmp_path: Path) -> tuple[Path, Service]:
    d = tmp_path / "srv" / "hello"
    (d / "releases" / "r1" / "bin").mkdir(parents=True)
    (d / "releases" / "r1" / "bin" / "hello").write_text(FAKE_RELEASE_BIN)
    (d / "releases" / "r1" / "bin" / "hello").chmod(0o755)
    (d / "current").symlink_to("releases/r1")
    (d / "shared" / "env").mkdir(parents=True)
    (d / "shared" / "env" / "r1.env").write_text(env_file_text({"GREETING": "hi there"}).render(reveal=True))
    (d / "shared" / ".cookie").write_text("COOKIE")
    service = Service(RemoteLayout(str(d), "hello"), MIX, "deployer-hello-t.service", stop_timeout=5)
    return d, service


def _start_through_the_runner(
    tmp_path: Path, service: Service, unit_env: dict[str, str] | None = None
) -> dict[str, str]:
    """Run the runner's ``start`` (with the unit's ``unit_env`` added to PATH, as systemd would); the fake
    release's ``name=value`` lines."""
    runner = tmp_path / "runner"
    runner.write_text(service.runner_text())
    env = {"PATH": os.environ["PATH"], **unit_env} if unit_env is not None else None
    out = subprocess.run(["/bin/sh", str(runner), "start"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_the_runner_starts_the_current_release_in_the_foreground_through_the_launcher(tmp_path: Path) -> None:
    d, service = _deployed(tmp_path)
    lines = _start_through_the_runner(tmp_path, service)
    # mix's foreground verb; the env file read as data by the launcher; HOME and cwd are shared's.
    assert lines == {
        "argv": "start",
        "home": f"{d}/shared/home",
        "greeting": "hi there",
        "pwd": f"{d}/shared",
        "tmp": "",
        "unit_dirs": "",
    }


def test_under_the_unit_the_node_gets_the_credentials_and_private_directories_not_shared(tmp_path: Path) -> None:
    """As systemd runs it (User= the app's account): the env file and cookie are the unit's credential copies,
    HOME and RELEASE_TMP are in the runtime directory, the cwd is the state directory, and the launcher drops
    the directories' names before the node runs."""
    d, service = _deployed(tmp_path)
    (d / "shared" / "env" / "r1.env").write_text(env_file_text({"GREETING": "from shared"}).render(reveal=True))
    creds, run_dir, state = tmp_path / "creds", tmp_path / "run", tmp_path / "state"
    for directory in (creds, run_dir, state):
        directory.mkdir()
    values = {"GREETING": "from the credential", "RELEASE_TMP": f"{d}/shared/tmp"}
    (creds / "node.env").write_text(env_file_text(values).render(reveal=True))
    (creds / "cookie").write_text("CREDCOOKIE")
    unit_dirs = {"CREDENTIALS_DIRECTORY": str(creds), "RUNTIME_DIRECTORY": str(run_dir), "STATE_DIRECTORY": str(state)}
    lines = _start_through_the_runner(tmp_path, service, unit_dirs)
    assert lines == {
        "argv": "start",
        "home": f"{run_dir}/home",
        "greeting": "from the credential",
        "pwd": str(state),
        "tmp": f"{run_dir}/tmp",
        "unit_dirs": "",
    }
    assert os.readlink(run_dir / "home" / ".erlang.cookie") == f"{creds}/cookie"
    assert (run_dir / "tmp").is_dir() and oct((run_dir / "home").stat().st_mode & 0o777) == "0o700"
    assert not (d / "shared" / "home").exists()


def test_the_runner_stop_runs_the_releases_stop_only_while_the_main_process_lives(tmp_path: Path) -> None:
    _, service = _deployed(tmp_path)
    runner = tmp_path / "runner"
    runner.write_text(service.runner_text())
    alive = subprocess.run(["/bin/sh", str(runner), "stop", str(os.getpid())], capture_output=True, text=True)
    assert alive.returncode == 0 and "argv=stop" in alive.stdout, alive.stderr
    gone = subprocess.run(["/bin/sh", str(runner), "stop", "0"], capture_output=True, text=True)
    assert gone.returncode == 0 and gone.stdout == ""
    nothing = subprocess.run(["/bin/sh", str(runner), "stop"], capture_output=True, text=True)
    assert nothing.returncode == 0 and nothing.stdout == ""


def test_the_runner_says_when_nothing_is_deployed(tmp_path: Path) -> None:
    d, service = _deployed(tmp_path)
    (d / "current").unlink()
    runner = tmp_path / "runner"
    runner.write_text(service.runner_text())
    out = subprocess.run(["/bin/sh", str(runner), "start"], capture_output=True, text=True)
    assert out.returncode == 1 and f"nothing is deployed in {d} (no current)" in out.stderr


# --- the scripts against fake systemctl / sudo, as a login that is not root ------------------------------------

FAKE_SYSTEMCTL = r"""#!/bin/sh
s=$FAKE_STATE
echo "systemctl $*" >> "$s/log"
active() { [ -f "$s/pid" ] && kill -0 "$(cat "$s/pid")" 2>/dev/null; }
case $1 in
  is-active) active ;;
  is-failed) exit 1 ;;
  is-enabled) cat "$s/enabled" 2>/dev/null || echo disabled ;;
  enable) echo enabled > "$s/enabled" ;;
  daemon-reload|reset-failed) ;;
  start|restart)
    if active; then kill "$(cat "$s/pid")"; fi
    setsid sleep 1000 </dev/null >/dev/null 2>&1 &
    echo $! > "$s/pid" ;;
  stop) if active; then kill "$(cat "$s/pid")"; fi; rm -f "$s/pid" ;;
  show)
    if active; then pid=$(cat "$s/pid"); st=active; else pid=0; st=inactive; fi
    case "$*" in
      *--value*) echo "$pid" ;;
      *) printf 'ActiveState=%s\nMainPID=%s\nNRestarts=2\n' "$st" "$pid" ;;
    esac ;;
esac
"""
# sudo -n -l CMD: allowed when CMD is a line of $FAKE_STATE/allowed; sudo -n CMD: log it and run the fake.
FAKE_SUDO = r"""#!/bin/sh
s=$FAKE_STATE
[ "$1" = -n ] || exit 9
shift
if [ "$1" = -l ]; then shift; grep -qxF "$*" "$s/allowed"; exit; fi
grep -qxF "$*" "$s/allowed" || { echo "sudo: a password is required" >&2; exit 1; }
echo "sudo $*" >> "$s/log"
case $1 in /usr/bin/systemctl) shift; exec systemctl "$@" ;; esac
"""


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, str]]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    for name, body in (
        ("systemctl", FAKE_SYSTEMCTL),
        ("sudo", FAKE_SUDO),
        ("id", '#!/bin/sh\ncase $1 in -u) echo 1000 ;; -un) echo deploy ;; *) exec /usr/bin/id "$@" ;; esac\n'),
        ("journalctl", '#!/bin/sh\necho "journal line: node crashed"\n'),
    ):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATE": str(state)}
    yield env
    pid = state / "pid"
    if pid.exists():
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid.read_text()), signal.SIGKILL)


def _run(body: Script, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-s"], input=body.render(), capture_output=True, text=True, env=env, timeout=60)


def _allow(env: dict[str, str], service: Service, *, but: str | None = None) -> None:
    commands = [c for c in service.root_commands() if c != but]
    Path(env["FAKE_STATE"], "allowed").write_text("\n".join(commands) + "\n")


def _log(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_STATE"], "log")
    return path.read_text().splitlines() if path.exists() else []


def test_restart_installs_the_unit_then_restarts_it_through_sudo(tmp_path: Path, fakes: dict[str, str]) -> None:
    d, service = _deployed(tmp_path)
    _allow(fakes, service)
    health = HealthCheck(http=None, rpc=None, deadline=5, interval=0.2, stable_for=0)
    out = _run(oc.restart(service.layout, MIX, health=health, stop_timeout=5, service=service), fakes)
    assert out.returncode == 0, out.stderr
    assert "unit_installed=1" in out.stdout and "unit_enabled=1" in out.stdout
    pid = Path(fakes["FAKE_STATE"], "pid").read_text().strip()
    assert f"started={pid}" in out.stdout and f"node_pid={pid}" in out.stdout
    sudo = [line for line in _log(fakes) if line.startswith("sudo ")]
    assert sudo == [
        f"sudo /usr/bin/install -m 0644 {service.staged} {service.installed}",
        "sudo /usr/bin/systemctl daemon-reload",
        f"sudo /usr/bin/systemctl enable {service.unit}",
        f"sudo /usr/bin/systemctl restart {service.unit}",
    ]
    assert (d / "shared" / "systemd" / service.unit).read_text() == service.unit_text("deploy")
    assert (d / "shared" / "systemd" / f"{service.stem}.run").read_text() == service.runner_text()


def test_a_refused_sudo_names_the_command_and_the_sudoers_line_and_changes_nothing(
    tmp_path: Path, fakes: dict[str, str]
) -> None:
    _, service = _deployed(tmp_path)
    refused = f"/usr/bin/systemctl restart {service.unit}"
    _allow(fakes, service, but=refused)
    health = HealthCheck(http=None, rpc=None, deadline=5, interval=0.2, stable_for=0)
    out = _run(oc.restart(service.layout, MIX, health=health, stop_timeout=5, service=service), fakes)
    assert out.returncode == EXIT_SUDO
    assert f'deploy may not run "{refused}" as root (sudo -n refused it)' in out.stderr
    assert f"visudo -f {service.dropin}" in out.stderr
    assert service.sudoers_line("deploy") + "\n" in out.stderr
    assert not any("restart" in line for line in _log(fakes))


def test_stop_stops_an_active_unit_and_says_none_otherwise(tmp_path: Path, fakes: dict[str, str]) -> None:
    _, service = _deployed(tmp_path)
    _allow(fakes, service)
    started = _run(script("start", deploy_vars(service.layout), service.start()), fakes)
    assert started.returncode == 0, started.stderr
    pid = Path(fakes["FAKE_STATE"], "pid").read_text().strip()
    first = _run(oc.stop(service.layout, stop_timeout=5, service=service), fakes)
    assert first.returncode == 0 and f"stopped={pid}" in first.stdout, first.stderr
    second = _run(oc.stop(service.layout, stop_timeout=5, service=service), fakes)
    assert second.returncode == 0 and "stopped=none" in second.stdout
    assert [line for line in _log(fakes) if line.startswith("sudo /usr/bin/systemctl stop")] == [
        f"sudo /usr/bin/systemctl stop {service.unit}"
    ]


def test_start_adopts_an_active_unit(tmp_path: Path, fakes: dict[str, str]) -> None:
    _, service = _deployed(tmp_path)
    _allow(fakes, service)
    first = _run(script("start", deploy_vars(service.layout), service.start()), fakes)
    pid = Path(fakes["FAKE_STATE"], "pid").read_text().strip()
    again = _run(script("start", deploy_vars(service.layout), service.start()), fakes)
    assert first.returncode == again.returncode == 0, again.stderr
    assert f"already_running={pid}" in again.stdout
    assert Path(fakes["FAKE_STATE"], "pid").read_text().strip() == pid


# --- the plan and the reports -------------------------------------------------------------------------------------


def _systemd_inventory(tmp_path: Path, **node: object) -> Inventory:
    data = copy.deepcopy(BASE)
    data["node"] = {"service": "systemd", **node}
    return inventory(tmp_path, data)


def test_daemon_is_the_default_and_systemd_plans_drive_the_unit(tmp_path: Path) -> None:
    daemon = inventory(tmp_path / "a")
    assert daemon.config.node.service == "daemon" and service_for(daemon) is None
    systemd = _systemd_inventory(tmp_path / "b", limit_nofile=4096, stop_timeout=12)
    service = service_for(systemd)
    assert service is not None and service.unit == "deployer-hello-test.service"
    assert "LimitNOFILE=4096\n" in service.unit_text("x") and "TimeoutStopSec=12\n" in service.unit_text("x")
    plan = plan_lifecycle(systemd, "restart", {})
    assert plan.hosts == ()
    step = oc.restart(service.layout, MIX, health=HealthCheck(None, None, 5, 1), stop_timeout=12, service=service)
    rendered = step.render()
    assert 'as_root /usr/bin/systemctl restart "$unit"' in rendered and "stop_node" not in rendered


def test_setup_logs_in_as_the_admin_and_prepares_for_the_deploy_user(tmp_path: Path) -> None:
    systemd = _systemd_inventory(tmp_path)
    admin = as_admin(systemd, "root")
    assert admin.config.ssh.user == "root" and all(h.user is None for h in admin.hosts)
    assert deploy_user(systemd, systemd.hosts[0]) == "deploy"
    from deployer.core.facts import parse_probe

    plan = plan_setup(admin, {"web1": parse_probe("")}, {"web1": "deploy"})
    assert [h.host for h in plan.hosts] == ["web1"] and plan.kind == "setup" and not plan.health_gated
    rendered = plan.hosts[0].steps[0].script.render()
    assert "u=deploy\n" in rendered and "svc_user=deploy\n" in rendered
    assert 'visudo -cf "$t"' in rendered and "t=$(mktemp /etc/sudoers.d/.deployer-hello-test.XXXXXX)" in rendered


def test_setup_of_a_daemon_host_only_prepares_deploy_to(tmp_path: Path) -> None:
    rendered = setup_host(LAYOUT, "deploy", None).render()
    assert "sudoers" not in rendered and "systemctl" not in rendered
    assert 'install -d -o "$u" -g "$g" -m 0755 "$p"' in rendered


def test_setup_changes_and_unit_state_parsing() -> None:
    out = "changed=created /srv/hello (owner deploy)\nunit_installed=1\nunit_enabled=1\nchanged=wrote /etc/x\n"
    assert setup_changes(out) == [
        "created /srv/hello (owner deploy)",
        "installed the unit",
        "enabled the unit (starts on boot)",
        "wrote /etc/x",
    ]
    assert setup_changes("lock_acquired=1\n") == []
    state = parse_unit_state("unit_ActiveState=active\nunit_MainPID=42\nunit_NRestarts=3\nunit_Bogus=1\nhealth=ok\n")
    assert state == {"ActiveState": "active", "MainPID": "42", "NRestarts": "3"}
    assert _unit_document(state) == {"active": "active", "sub": None, "main_pid": 42, "restarts": 3, "enabled": None}
    assert _unit_document(None) is None


def test_a_refused_enable_is_reported_too(tmp_path: Path, fakes: dict[str, str]) -> None:
    _, service = _deployed(tmp_path)
    refused = f"/usr/bin/systemctl enable {service.unit}"
    _allow(fakes, service, but=refused)
    out = _run(script("start", deploy_vars(service.layout), service.start()), fakes)
    assert out.returncode == EXIT_SUDO
    assert f'deploy may not run "{refused}" as root' in out.stderr
    assert not any(line.startswith("systemctl start") for line in _log(fakes))


# --- the node's own account (node.user) ---------------------------------------------------------------------------


def test_the_node_runs_as_the_apps_account_by_default_and_scripts_know_it(tmp_path: Path) -> None:
    inv = _systemd_inventory(tmp_path)
    assert inv.config.node_user == "hello"
    service = service_for(inv, user="deploy")
    assert service is not None and service.node_user == "hello"
    prelude = service.prelude().parts
    rendered = Script("t", prelude).render()
    assert "svc_user=deploy\nsvc_node_user=hello\n" in rendered
    # Every script names the account, so is_node can tell its BEAMs (see the test below).
    assert Script("t", deploy_vars(layout_for(inv)).parts).render().endswith("node_user=hello\n")
    chosen = _systemd_inventory(tmp_path / "x", user="deploy")
    assert chosen.config.node_user == "deploy"
    daemon = inventory(tmp_path / "d")
    assert daemon.config.node_user is None and layout_for(daemon).node_user is None
    assert "node_user" not in Script("t", deploy_vars(layout_for(daemon)).parts).render()


@pytest.mark.parametrize(
    ("node", "app", "expected"),
    [
        ({"user": "hello"}, "hello", "node.user: needs node.service: systemd"),
        ({"service": "systemd", "user": "root"}, "hello", "node.user: the node must not run as root"),
        ({"service": "systemd"}, "a" * 40, "node.user: the app's name"),
        ({"service": "systemd", "user": "Bad User"}, "hello", "node.user: 'Bad User' is not a valid user name"),
    ],
)
def test_node_user_is_refused_where_it_cannot_work(
    tmp_path: Path, node: dict[str, object], app: str, expected: str
) -> None:
    data = copy.deepcopy(BASE)
    data["node"] = node
    data["app"] = {**data["app"], "name": app}
    with pytest.raises(InventoryError) as info:
        inventory(tmp_path, data)
    assert expected in str(info.value), str(info.value)


def test_setup_creates_the_nodes_account_only_when_missing(tmp_path: Path) -> None:
    service = service_for(_systemd_inventory(tmp_path), user="deploy")
    assert service is not None
    text = setup_host(service.layout, "deploy", service).render()
    assert "n=hello\n" in text
    assert 'useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$n"' in (
        text
    )
    assert text.index('if ! id -u "$n"') < text.index("step unit")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root and setpriv")
def test_is_node_knows_the_apps_accounts_beam_by_its_command_line(tmp_path: Path) -> None:
    """Another user's /proc/PID/exe is unreadable: a BEAM of deploy_to run by node.user is recognised by its
    argv[0]; the same account's other processes, and BEAMs of other accounts, are not the node."""
    base = Path(tempfile.mkdtemp(prefix="deployer-isnode-", dir="/tmp"))
    try:
        base.chmod(0o755)
        d = base / "srv"
        beam = d / "releases" / "r1" / "erts-1" / "bin" / "beam.smp"
        beam.parent.mkdir(parents=True)
        shutil.copy("/bin/sleep", beam)
        for parent in [d, *beam.parents]:
            if str(parent).startswith(str(d)):
                parent.chmod(0o755)
        beam.chmod(0o755)

        def spawn(user: str, argv: list[str]) -> subprocess.Popen[bytes]:
            gid = pwd.getpwnam(user).pw_gid
            return subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *argv])

        node = spawn("nobody", [str(beam), "60"])
        other = spawn("nobody", ["/bin/sleep", "60"])
        try:
            time.sleep(0.3)
            found = {}
            for who in ("nobody", "daemon", None):
                layout = RemoteLayout(str(d), "hello", who)
                out = subprocess.run(
                    ["sh", "-s"],
                    input=script("t", deploy_vars(layout), node_pids()).render(),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                found[who] = [int(x.split("=")[1]) for x in out.stdout.split() if x.startswith("node_pid=")]
            assert found == {"nobody": [node.pid], "daemon": [], None: []}, (found, other.pid)
        finally:
            for process in (node, other):
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
