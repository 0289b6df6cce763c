"""Secure defaults that need no network: the cookie never in argv, private env files, extraction into a new
directory only, strict inventory patterns, secrets only on stdin.

The shell scripts are not only compared as text: the parts that matter are run with the local ``sh``
against a scratch ``deploy_to``, which is what the hosts run.
"""

from __future__ import annotations

import copy
import hashlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from deployer.core.artifact import inspect_tarball
from deployer.core.facts import parse_probe
from deployer.core.inventory import load_inventory
from deployer.core.paths import RemoteLayout
from deployer.core.plan import generate_cookie, node_env, plan_deploy
from deployer.errors import InventoryError
from deployer.remote import release as rc
from deployer.remote.fragments import LAUNCHER
from deployer.remote.shell import MASK, Secret, encode_env_value, env_file_text

from .helpers import BASE, inventory, release_tarball, write_inventory

COOKIE = "COOKIEVALUE0123456789ABCDEFGHIJKLMNOPQR"
SECRET = "s3ntinel-$(touch /tmp/pwned)-'\"`;\n-x"


def sh(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-s"],
        input=script,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env=env or {"PATH": os.environ["PATH"]},
    )


# --- the Erlang cookie never reaches argv: see tests/unit/test_launcher.py (the launcher run locally) ----------


def test_cookie_is_strong_and_only_written_under_umask_077() -> None:
    cookies = {generate_cookie().get_secret_value() for _ in range(50)}
    assert len(cookies) == 50 and all(len(c) == 40 and c.isalnum() for c in cookies)
    script = rc.prepare(
        RemoteLayout("/srv/hello", "hello"),
        release_id="20260101000000-0.1.0",
        sha256="a" * 64,
        env_file=env_file_text({}),
        cookie=Secret("erlang cookie", SecretStr(COOKIE)),
    )
    text = script.render()
    assert COOKIE not in text and COOKIE not in script.remote_command()
    assert "(umask 077; printf '%s' ******** > \"$d/shared/.cookie.tmp\")\n" in text
    assert 'chmod 0400 "$d/shared/.cookie.tmp"\n' in text
    # Only written when missing: the environment keeps one cookie across hosts and releases.
    assert 'if [ ! -s "$d/shared/.cookie" ]; then\n' in text


def launch(d: Path, release_id: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with the release's environment, as the node gets it (deployer's launcher)."""
    argv = ["env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", LAUNCHER, "launch", str(d), release_id, "home"]
    return subprocess.run([*argv, "/bin/sh", "-c", command], capture_output=True, text=True, timeout=20, check=False)


# --- prepare: a new directory, private env file, no baked cookie --------------------------------------------------


def prepare_script(d: Path, sha: str, release_id: str = "20260101000000-0.1.0") -> str:
    env = env_file_text(
        {"HELLO_GREETING": "hi; $(touch /tmp/pwned)", "HELLO_SECRET": Secret("HELLO_SECRET", SecretStr(SECRET))}
    )
    return rc.prepare(
        RemoteLayout(str(d), "hello"),
        release_id=release_id,
        sha256=sha,
        env_file=env,
        cookie=Secret("erlang cookie", SecretStr(COOKIE)),
    ).render(reveal=True)


def test_prepare_extracts_only_into_a_directory_that_did_not_exist(tmp_path: Path) -> None:
    text = rc.prepare(
        RemoteLayout("/srv/hello", "hello"), release_id="r1", sha256="a" * 64, env_file=env_file_text({}), cookie=None
    ).render()
    check = text.index('[ ! -e "$r" ] || fail "$r already exists; refusing to extract over it"\n')
    assert (
        check
        < text.index('mkdir "$p"\n')
        < text.index('(umask 022; tar -xzf "$a" -C "$p" --no-same-owner --no-same-permissions)\n')
    )
    assert 'mkdir -p "$p"' not in text  # mkdir fails if the partial directory exists
    assert text.index('rm -f "$p/releases/COOKIE"\n') < text.index('mv "$p" "$r"\n')


def _release_with_cookie(tmp_path: Path) -> tuple[Path, str]:
    import tarfile

    path = tmp_path / "hello-0.1.0.tar.gz"
    cookie = tarfile.TarInfo("releases/COOKIE")
    cookie.size = 1
    release_tarball(path, extra=[cookie])
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_run_locally(tmp_path: Path) -> None:
    d = tmp_path / "srv" / "hello"
    (d / "artifacts").mkdir(parents=True)
    tarball, sha = _release_with_cookie(tmp_path)
    inspect_tarball(tarball, "hello")  # a valid release
    (d / "artifacts" / f"{sha}.tar.gz").write_bytes(tarball.read_bytes())
    done = sh(prepare_script(d, sha))
    assert done.returncode == 0, done.stderr
    release = d / "releases" / "20260101000000-0.1.0"
    assert (release / "bin" / "hello").is_file()
    assert not (release / "releases" / "COOKIE").exists()  # the tarball's cookie is ignored
    # The new values are staged for this release (its migration reads them) until its activation.
    env_file = d / "shared" / "node.env.20260101000000-0.1.0.staged"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert not (d / "shared" / "node.env").exists() and not (d / "shared" / "env").exists()
    cookie = d / "shared" / ".cookie"
    assert stat.S_IMODE(cookie.stat().st_mode) == 0o400 and cookie.read_text() == COOKIE
    # The values arrive byte for byte through the launcher, and nothing in them ran.
    shown = launch(d, "20260101000000-0.1.0", 'printf "%s\\0%s" "$HELLO_GREETING" "$HELLO_SECRET"')
    assert shown.stdout == f"hi; $(touch /tmp/pwned)\0{SECRET}"
    assert not Path("/tmp/pwned").exists()

    # A second prepare of the same release id refuses to extract over it and leaves it as it was.
    marker = release / "marker"
    marker.write_text("untouched")
    again = sh(prepare_script(d, sha))
    assert again.returncode != 0 and "already exists; refusing to extract over it" in again.stderr
    assert marker.read_text() == "untouched"


# --- inventory values that reach a path, a command line or a name -----------------------------------------------


def load_error(tmp_path: Path, data: dict[str, Any], env: str = "test") -> str:
    write_inventory(tmp_path / "inventory", data, env=env if env.isidentifier() else "test")
    with pytest.raises(InventoryError) as info:
        load_inventory(env, tmp_path / "inventory", environ={"HELLO_SECRET": "x"})
    return str(info.value)


def with_host(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["hosts"][0].update(fields)
    return data


HOSTILE = ["$(touch /tmp/pwned)", "`id`", "a;b", "a b", "-oProxyCommand=sh", "a\nb", "'q'", ""]


@pytest.mark.parametrize("value", [*HOSTILE, "host/evil", "-host"])
def test_bad_addresses(tmp_path: Path, value: str) -> None:
    assert "hosts.0.address: " in load_error(tmp_path, with_host(address=value))


@pytest.mark.parametrize("value", ["10.0.0.1", "web1.example.com", "::1", "[2001:db8::1]"])
def test_good_addresses(tmp_path: Path, value: str) -> None:
    write_inventory(tmp_path / "inventory", with_host(address=value))
    load_inventory("test", tmp_path / "inventory", environ={"HELLO_SECRET": "x"})


@pytest.mark.parametrize("value", [*HOSTILE, "Root", "-l", "x" * 40])
def test_bad_users(tmp_path: Path, value: str) -> None:
    assert "hosts.0.user: " in load_error(tmp_path, with_host(user=value))
    data = copy.deepcopy(BASE)
    data["ssh"] = {"user": value}
    assert "ssh.user: " in load_error(tmp_path, data)


@pytest.mark.parametrize("value", [*HOSTILE, "A", "-app"])
def test_bad_roles(tmp_path: Path, value: str) -> None:
    assert "hosts.0.roles.0: " in load_error(tmp_path, with_host(roles=[value]))


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A;B", "$(id)", ""])
def test_bad_env_variable_names(tmp_path: Path, name: str) -> None:
    data = copy.deepcopy(BASE)
    data["env"] = {"clear": {name: "x"}}
    assert "env.clear." in load_error(tmp_path, data)
    data["env"] = {"secret": {"GOOD": name}}
    assert "env.secret.GOOD" in load_error(tmp_path, data)
    assert "hosts.0.env." in load_error(tmp_path, with_host(env={name: "x"}))


@pytest.mark.parametrize("env", ["../etc/passwd", "prod;id", "$(id)", "-x", "a b", ""])
def test_bad_environment_names(tmp_path: Path, env: str) -> None:
    (tmp_path / "inventory").mkdir()
    with pytest.raises(InventoryError, match="environment name"):
        load_inventory(env, tmp_path / "inventory")


@pytest.mark.parametrize(
    "value",
    [
        "-oProxyCommand=sh",
        "bastion;id",
        "a@b@c",
        "bastion:",
        "bastion:99999",
        "bastion:0",
        "user name@b",
        "::1",  # IPv6 goes in brackets
        "[::1]:0",
        "",
    ],
)
def test_bad_gateways(tmp_path: Path, value: str) -> None:
    data = copy.deepcopy(BASE)
    data["ssh"] = {"gateway": value}
    assert "ssh.gateway: " in load_error(tmp_path, data)


@pytest.mark.parametrize(
    "value", ["bastion", "ops@bastion.example.com", "bastion:2222", "ops@10.0.0.9:22", "[::1]:22", "ops@[fd00::1]"]
)
def test_good_gateways(tmp_path: Path, value: str) -> None:
    data = copy.deepcopy(BASE)
    data["ssh"] = {"gateway": value}
    write_inventory(tmp_path / "inventory", data)
    assert load_inventory("test", tmp_path / "inventory", environ={"HELLO_SECRET": "x"}).config.ssh.gateway == value


@pytest.mark.parametrize("value", ["-name", "a b", "hello@$(id)", "hello@", "@host", "he;llo"])
def test_bad_node_names(tmp_path: Path, value: str) -> None:
    data = copy.deepcopy(BASE)
    data["node"] = {"name": value}
    assert "node.name: " in load_error(tmp_path, data)


def test_secrets_are_never_in_the_inventory_values(tmp_path: Path) -> None:
    inv = inventory(tmp_path, secret=SECRET)
    assert SECRET not in repr(inv) and SECRET not in repr(inv.secrets)


# --- secrets travel on stdin only, masked everywhere else ---------------------------------------------------------


FRESH_PROBE = "now=1\narch=x86_64\nwritable=1\ndisk_free_kb=99999999\n"


def test_every_planned_script_keeps_secrets_off_argv_and_out_of_renderings(tmp_path: Path) -> None:
    inv = inventory(tmp_path, secret=SECRET)
    artifact = inspect_tarball(release_tarball(tmp_path / "hello-0.1.0.tar.gz"), "hello")
    facts = {h.name: parse_probe(FRESH_PROBE) for h in inv.hosts}
    plan = plan_deploy(inv, artifact, facts, who="me@here", cookie=SecretStr(COOKIE))
    scripts = [*plan.upload_scripts.values(), *([plan.migrate] if plan.migrate else [])]
    for host_plan in plan.hosts:
        scripts += [s for s in (host_plan.prepare, host_plan.activate, host_plan.revert, host_plan.abort) if s]
    # The env file carries it, and only scripts sent on stdin carry secrets.
    carriers = [s for s in scripts if s.secrets]
    assert carriers and all(s.stdin for s in carriers)
    assert any(encode_env_value(SECRET) == secret.reveal() for s in carriers for secret in s.secrets)
    for script in scripts:
        for text in (script.remote_command(), script.render()):
            assert SECRET not in text and COOKIE not in text, script.name
        if not script.stdin:
            assert not script.secrets
    prepare = plan.hosts[0].prepare
    assert prepare is not None and MASK in prepare.render()
    env = node_env(inv, inv.hosts[0])
    assert isinstance(env["HELLO_SECRET"], Secret)
    assert env["ERL_EPMD_ADDRESS"] == "127.0.0.1"
    assert "inet_dist_use_interface {127,0,0,1}" in str(env["ERL_AFLAGS"])


def test_release_cookie_file_in_tarball_is_allowed_but_ignored(tmp_path: Path) -> None:
    path, _ = _release_with_cookie(tmp_path)
    assert inspect_tarball(path, "hello").version == "0.1.0"


# --- the secrets file: private, and outside the repository --------------------------------------------------------


def _with_secrets_file(tmp_path: Path, secrets: Path) -> Path:
    data = copy.deepcopy(BASE)
    data["env"] = {"secret": ["HELLO_SECRET"], "secrets_file": str(secrets)}
    return write_inventory(tmp_path / "repo" / "inventory", data)


def test_secrets_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "outside" / "prod.env"
    secrets.parent.mkdir()
    secrets.write_text("HELLO_SECRET=x\n")
    secrets.chmod(0o644)
    directory = _with_secrets_file(tmp_path, secrets).parent
    with pytest.raises(InventoryError, match=r"readable by other users \(mode 0644\)") as info:
        load_inventory("test", directory, environ={})
    assert "chmod 600" in str(info.value)
    secrets.chmod(0o600)
    assert load_inventory("test", directory, environ={}).secrets["HELLO_SECRET"].get_secret_value() == "x"


def test_secrets_file_inside_the_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    secrets = tmp_path / "repo" / "secrets" / "prod.env"
    secrets.parent.mkdir()
    secrets.write_text("HELLO_SECRET=x\n")
    secrets.chmod(0o600)
    directory = _with_secrets_file(tmp_path, secrets).parent
    with pytest.raises(InventoryError, match="is inside the repository"):
        load_inventory("test", directory, environ={})
