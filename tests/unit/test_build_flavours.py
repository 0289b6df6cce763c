"""Release script flavours: rebar3 (relx) and Distillery mappings, relx's fresh-VM migration, bounded start,
rpc results read from the output, and the relx run-time paths."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from deployer.core.paths import RemoteLayout
from deployer.core.plan import node_env
from deployer.remote import release as rc
from deployer.remote.flavours import CLEAN_BOOT_EVAL, flavour
from deployer.remote.fragments import LAUNCHER, cookie_mode
from deployer.remote.shell import env_file_text

from .helpers import BASE, inventory

LAYOUT = RemoteLayout("/srv/hello", "hello")
RID = "20261124010203-0.1.0"
LAUNCH = ["env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", LAUNCHER, "launch"]
HEALTH = rc.HealthCheck(http=None, rpc="true = is_pid(whereis(hello_sup))", deadline=45, interval=0.5)


def sh(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env, timeout=30, check=False)


# --- mappings --------------------------------------------------------------------------------------------


def test_mix_is_unchanged() -> None:
    mix = flavour("mix")
    assert mix.eval("Hello.Release.migrate()") == ("eval", "Hello.Release.migrate()")
    assert mix.rpc("IO.puts(:ok)") == ("rpc", "IO.puts(:ok)")
    assert (mix.daemon, mix.stop, mix.remote, mix.alive) == (("daemon",), ("stop",), ("remote",), ("pid",))
    assert cookie_mode(mix) == "home"


def test_rebar3_mapping() -> None:
    rebar = flavour("rebar3")
    assert (rebar.daemon, rebar.stop, rebar.remote, rebar.alive) == (
        ("daemon",),
        ("stop",),
        ("remote_console",),
        ("ping",),
    )
    # relx has no fresh-VM verb: its eval and rpc need the running node.
    assert rebar.eval("hello_erl_release:migrate()") is None
    # Expressions go to relx's eval (erl_call -e), which wants a full stop.
    assert rebar.rpc("hello_erl_release:applied()") == ("eval", "hello_erl_release:applied().")
    assert rebar.rpc("ok.") == ("eval", "ok.")
    assert rebar.cookie_var == "RELX_COOKIE" and rebar.cookie_from_home and rebar.script_cookie
    assert cookie_mode(rebar) == "home+script"
    assert dict(rebar.runtime_env) == {
        "RELX_REPLACE_OS_VARS": "true",
        "RELX_OUT_FILE_PATH": "${shared}/tmp/relx",
        "RUNNER_LOG_DIR": "${shared}/tmp/log",
        "PIPE_DIR": "${shared}/tmp/pipe/",
    }


@pytest.mark.parametrize(
    ("expression", "argv"),
    [
        ("MyApp.Release.migrate()", ("command", "Elixir.MyApp.Release", "migrate")),
        ("MyApp.Release.migrate", ("command", "Elixir.MyApp.Release", "migrate")),
        (":my_app_release.migrate()", ("command", "my_app_release", "migrate")),
        ("my_app_release:migrate().", ("command", "my_app_release", "migrate")),
        ("MyApp.Release.migrate(:all)", ("eval", "MyApp.Release.migrate(:all)")),
        ("MyApp.Release.seed(); :ok", ("eval", "MyApp.Release.seed(); :ok")),
    ],
)
def test_distillery_runs_a_plain_call_with_command(expression: str, argv: tuple[str, ...]) -> None:
    assert flavour("distillery").eval(expression) == argv


def test_distillery_mapping() -> None:
    dist = flavour("distillery")
    assert (dist.daemon, dist.stop, dist.remote, dist.alive) == (("start",), ("stop",), ("remote_console",), ("ping",))
    assert dist.rpc("MyApp.ready?()") == ("rpc", "MyApp.ready?()")
    assert dict(dist.runtime_env) == {"REPLACE_OS_VARS": "true"}
    assert dist.cookie_var == "COOKIE" and not dist.cookie_from_home
    assert cookie_mode(dist) == "env"


def test_relx_paths_are_expanded_into_the_env_file(tmp_path: Path) -> None:
    data = {**BASE, "app": {"name": "hello", "flavour": "rebar3"}}
    inv = inventory(tmp_path, data)
    env = node_env(inv, inv.hosts[0])
    assert env["RELX_OUT_FILE_PATH"] == "/srv/hello/shared/tmp/relx"
    assert env["RUNNER_LOG_DIR"] == "/srv/hello/shared/tmp/log"  # where node_log_tail looks
    assert env["PIPE_DIR"] == "/srv/hello/shared/tmp/pipe/"
    assert env["RELEASE_NODE"] == "hello@127.0.0.1"  # for -name ${RELEASE_NODE} in vm.args.src


# --- migrations in a fresh VM (relx) ---------------------------------------------------------------------


def test_rebar3_migration_boots_the_release_clean() -> None:
    text = rc.migrate(LAYOUT, flavour("rebar3"), release_id=RID, expression="m:migrate()", timeout=99).render()
    assert (
        f'launch 99 "$rid" home+script /bin/sh -c {shlex.quote(CLEAN_BOOT_EVAL)} clean-boot-eval '
        f"/srv/hello/releases/{RID} 'm:migrate()'\nstatus=$?\n"
    ) in text
    assert "bin/hello" not in text


def fake_release(root: Path, *, sys_config: str | None, src: bool) -> None:
    """A relx release layout whose erl prints its argv and the config it was given, then exits $ERL_EXIT."""
    (root / "releases" / "0.1.0").mkdir(parents=True)
    (root / "releases" / "start_erl.data").write_text("13.1.5 0.1.0\n")
    (root / "releases" / "0.1.0" / "no_dot_erlang.boot").write_bytes(b"boot")
    if sys_config is not None:
        name = "sys.config.src" if src else "sys.config"
        (root / "releases" / "0.1.0" / name).write_text(sys_config)
    erl = root / "erts-13.1.5" / "bin" / "erl"
    erl.parent.mkdir(parents=True)
    erl.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do printf "arg=%s\\n" "$a"; done\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -config ]; then echo "mode=$(stat -c %a "$2")"; cat "$2"; fi; shift; done\n'
        'echo "dump=$ERL_CRASH_DUMP_SECONDS"\n'
        'exit "${ERL_EXIT:-0}"\n'
    )
    erl.chmod(0o755)


def run_clean_boot(root: Path, tmp: Path, expression: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", CLEAN_BOOT_EVAL, "clean-boot-eval", str(root), expression],
        capture_output=True,
        text=True,
        env={**os.environ, "RELX_OUT_FILE_PATH": str(tmp), **env},
        timeout=30,
        check=False,
    )


def test_clean_boot_eval_argv_and_substituted_config(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    fake_release(root, sys_config='[{hello, [{port, ${PORT}}, {name, "${NAME:-dflt}"}]}].\n', src=True)
    done = run_clean_boot(root, tmp_path / "out", "m:migrate()", PORT="4000")
    assert done.returncode == 0, done.stderr
    args = [line[4:] for line in done.stdout.splitlines() if line.startswith("arg=")]
    config = args[args.index("-config") + 1]
    assert args == [
        "-boot", f"{root}/releases/0.1.0/no_dot_erlang", "-boot_var", "SYSTEM_LIB_DIR", f"{root}/lib",
        "-noshell", "-noinput", "-config", config, "-eval", "m:migrate()", "-eval", "halt(0)",
    ]  # fmt: skip
    assert config.startswith(f"{tmp_path}/out/eval-")
    assert '[{hello, [{port, 4000}, {name, "dflt"}]}].' in done.stdout
    assert "mode=600" in done.stdout and "dump=0" in done.stdout
    assert not Path(config).exists()  # the rendered copy (maybe with secrets) is removed


def test_clean_boot_eval_uses_a_plain_sys_config_as_is_and_passes_failure_on(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    fake_release(root, sys_config="[].\n", src=False)
    done = run_clean_boot(root, tmp_path / "out", "m:f()", ERL_EXIT="1", RELX_REPLACE_OS_VARS="")
    assert done.returncode == 1
    assert f"arg={root}/releases/0.1.0/sys.config" in done.stdout


def test_clean_boot_eval_without_a_boot_script(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    fake_release(root, sys_config=None, src=False)
    (root / "releases" / "0.1.0" / "no_dot_erlang.boot").unlink()
    done = run_clean_boot(root, tmp_path / "out", "m:f()")
    assert done.returncode == 1 and "no start_clean boot script" in done.stderr


# --- start and health (relx) -----------------------------------------------------------------------------


def activate(name: str) -> str:
    return rc.activate(
        LAYOUT, flavour(name), release_id=RID, health=HEALTH, stop_timeout=20, tmp_suffix="x", success_record="{}"
    ).render()


def test_relx_daemon_wait_is_bounded_by_the_health_deadline() -> None:
    text = activate("rebar3")
    assert (
        'launch 45 "$rid" home+script /srv/hello/current/bin/hello daemon || '
        '{ s=$?; [ "$s" -eq 124 ] || exit "$s"; '
        'echo "the release script still waited for the node after "45"s" >&2; }\n'
    ) in text
    assert "launch '' \"$rid\" home /srv/hello/current/bin/hello daemon\n" in activate("mix")
    # The host's own deadline leaves room for the bounded wait, the health gate's deadline and the stability
    # period; the client waits a minute longer, so it never gives up on a script that is still running.
    script = rc.activate(
        LAYOUT, flavour("rebar3"), release_id=RID, health=HEALTH, stop_timeout=20, tmp_suffix="x", success_record="{}"
    )
    remote = 20 + 15 + 2 * 45 + 5 + 60
    assert f'deployer-run "$r" {remote} </dev/null' in script.render()
    assert script.timeout == remote + 60


def test_relx_rpc_health_reads_the_printed_result() -> None:
    text = activate("rebar3")
    assert (
        'out=$(launch "$SECS" "$rid" home+script /srv/hello/current/bin/hello eval '
        "'true = is_pid(whereis(hello_sup)).' 2>\"$d/shared/tmp/health.err\") || {"
    ) in text
    assert "case \"$out\" in '{error,'*|'{badrpc,'*) " in text
    assert "home /srv/hello/current/bin/hello rpc 'true = is_pid(whereis(hello_sup))' 2>" in activate("mix")


def test_relx_rpc_check_fails_on_printed_errors(tmp_path: Path) -> None:
    # The check as rendered, run against a fake release script that exits 0 but prints relx's error tuple.
    text = activate("rebar3")
    start = text.index('  if [ -n "$ok" ]; then\n    out=$(')
    check = text[start : text.index("\n  fi\n", start) + len("\n  fi\n")]
    d = tmp_path / "srv"
    (d / "shared" / "tmp").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for printed, healthy in (('{error, "*** eval: boom"}', False), ("true", True)):
        fake = bin_dir / "hello"
        fake.write_text(f"#!/bin/sh\nprintf '%s\\n' '{printed}'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        script = (
            f"d='{d}'\nrid=r1\nok=1\nSECS=5\nlaunch() {{ shift 3; \"$@\"; }}\n"
            + check.replace("/srv/hello/current/bin/hello", str(fake))
            + 'echo "ok=$ok"\n'
        )
        done = sh(script)
        assert done.returncode == 0, done.stderr
        assert ("ok=1" in done.stdout) == healthy, done.stdout


def test_the_launcher_makes_the_relx_output_dir_private_and_gives_relx_the_cookie(tmp_path: Path) -> None:
    d = tmp_path / "srv"
    (d / "shared" / "env").mkdir(parents=True)
    env = env_file_text({"RELX_OUT_FILE_PATH": f"{d}/shared/tmp/relx"})
    (d / "shared" / "env" / "r1.env").write_text(env.render(reveal=True))
    (d / "shared" / ".cookie").write_text("COOKIE123")
    done = subprocess.run(
        [*LAUNCH, str(d), "r1", "home+script", "/bin/sh", "-c", 'echo "$RELX_COOKIE"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "COOKIE123"
    assert stat.S_IMODE((d / "shared" / "tmp" / "relx").stat().st_mode) == 0o700
