"""Inventory validation: every error names the file, the key path and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from deployer.core.inventory import load_inventory, read_secrets_file
from deployer.errors import InventoryError

from .helpers import BASE, inventory, write_inventory


def load_error(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    write_inventory(tmp_path / "inventory", data)
    with pytest.raises(InventoryError) as info:
        load_inventory("test", tmp_path / "inventory", environ={"HELLO_SECRET": "x"} if environ is None else environ)
    return str(info.value)


def mutate(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def test_valid_inventory_loads_with_defaults(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    assert [h.name for h in inv.hosts] == ["web1", "web2", "web3"]
    assert inv.config.keep_releases == 5
    assert inv.config.ssh.forward_agent is False
    assert inv.migrator() is not None and inv.migrator().name == "web1"  # type: ignore[union-attr]
    assert inv.secrets["HELLO_SECRET"].get_secret_value() == "s3cr3t-value"
    assert inv.config.node_name == "hello@127.0.0.1"


def test_port_out_of_range_names_file_and_key(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][2]["port"] = 70000
    msg = load_error(tmp_path, data)
    assert msg == f"{tmp_path}/inventory/test.yml: hosts.2.port: must be between 1 and 65535"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][0]["adress"] = "x"
    assert "test.yml: hosts.0.adress: unknown key" in load_error(tmp_path, data)


def test_missing_required_key(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["deploy_to"]
    assert load_error(tmp_path, data).endswith("test.yml: deploy_to: is required")


def test_wrong_type(tmp_path: Path) -> None:
    data = mutate(keep_releases="many")
    assert "test.yml: keep_releases: must be a whole number, got 'many'" in load_error(tmp_path, data)


def test_duplicate_host_names(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][2]["name"] = "web1"
    assert "hosts.2.name: duplicate host name 'web1' (also hosts.0.name)" in load_error(tmp_path, data)


def test_empty_host_list(tmp_path: Path) -> None:
    assert "hosts: at least one host is required" in load_error(tmp_path, mutate(hosts=[]))


def test_role_with_no_hosts(tmp_path: Path) -> None:
    data = mutate(migrate={"eval": "X.migrate()", "role": "dbadmin"})
    assert "migrate.role: no host has the role 'dbadmin'" in load_error(tmp_path, data)


@pytest.mark.parametrize("value", ["srv/hello", "/", "/srv/../etc", "/srv/hello world", "/srv/$(id)"])
def test_bad_deploy_to(tmp_path: Path, value: str) -> None:
    msg = load_error(tmp_path, mutate(deploy_to=value))
    assert "test.yml: deploy_to: " in msg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/.", "'/.' must not be the root directory '/'"),
        ("//", "must not be the root directory '/'"),
        ("/./.", "must not be the root directory '/'"),
        ("/tmp", "'/tmp' is a system directory"),
        ("/tmp/", "'/tmp' is a system directory"),
        ("/var", "'/var' is a system directory"),
        ("/usr", "'/usr' is a system directory"),
        ("/etc", "'/etc' is a system directory"),
        ("/home", "'/home' is a system directory"),
        ("/root", "'/root' is a system directory"),
        ("/srv", "'/srv' is a system directory"),
        ("/usr/local", "'/usr/local' is a system directory"),
        ("/var/lib", "'/var/lib' is a system directory"),
        ("/tmp/hello", "'/tmp/hello' is inside /tmp"),
        ("/var/tmp/hello", "'/var/tmp/hello' is inside /var/tmp"),
        ("/dev/shm/hello", "'/dev/shm/hello' is inside /dev"),
        ("/etc/hello", "is inside /etc"),
        ("/usr/bin/hello", "is inside /usr/bin"),
        ("/./tmp", "'/tmp' is a system directory"),
        ("srv/hello", "must be an absolute path"),
        ("./hello", "must be an absolute path"),
        ("hello", "must be an absolute path"),
    ],
)
def test_deploy_to_refuses_roots_system_directories_and_relative_paths(
    tmp_path: Path, value: str, expected: str
) -> None:
    msg = load_error(tmp_path, mutate(deploy_to=value))
    assert msg.startswith(f"{tmp_path}/inventory/test.yml: deploy_to: "), msg
    assert expected in msg


@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("/srv/hello", "/srv/hello"),
        ("/srv/./hello/", "/srv/hello"),
        ("//opt//hello", "/opt/hello"),
        ("/home/deploy/hello", "/home/deploy/hello"),
        ("/usr/local/hello", "/usr/local/hello"),
    ],
)
def test_deploy_to_of_its_own_is_accepted(tmp_path: Path, value: str, normalised: str) -> None:
    assert inventory(tmp_path, mutate(deploy_to=value)).config.deploy_to == normalised


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"clear": {"PATH": "/opt/bin"}}, "env.clear.PATH: PATH is reserved"),
        ({"clear": {"IFS": ","}}, "env.clear.IFS: IFS is reserved"),
        ({"clear": {"HOME": "/x"}}, "env.clear.HOME: HOME is reserved"),
        ({"clear": {"SHELL": "/bin/zsh"}}, "env.clear.SHELL: SHELL is reserved"),
        ({"clear": {"PWD": "/"}}, "env.clear.PWD: PWD is reserved"),
        ({"clear": {"BASH_ENV": "/x"}}, "env.clear.BASH_ENV: BASH_ENV is reserved"),
        ({"clear": {"ENV": "/x"}}, "env.clear.ENV: ENV is reserved"),
        ({"clear": {"LD_PRELOAD": "/x.so"}}, "env.clear.LD_PRELOAD: LD_PRELOAD is reserved"),
        ({"secret": ["LD_LIBRARY_PATH"]}, "env.secret.LD_LIBRARY_PATH: LD_LIBRARY_PATH is reserved"),
        ({"clear": {"DEPLOYER_RELEASE_ID": "x"}}, "env.clear.DEPLOYER_RELEASE_ID: DEPLOYER_RELEASE_ID is reserved"),
        ({"clear": {"RELEASE_NODE": "x@y"}}, "env.clear.RELEASE_NODE: RELEASE_NODE is managed by deployer"),
        ({"secret": {"RELEASE_COOKIE": "C"}}, "env.secret.RELEASE_COOKIE: RELEASE_COOKIE is managed by deployer"),
        ({"clear": {"RELEASE_TMP": "/x"}}, "env.clear.RELEASE_TMP: RELEASE_TMP is managed"),
        ({"clear": {"RELEASE_DISTRIBUTION": "sname"}}, "env.clear.RELEASE_DISTRIBUTION: RELEASE_DISTRIBUTION is"),
        ({"clear": {"RELX_COOKIE": "x"}}, "env.clear.RELX_COOKIE: RELX_COOKIE is reserved"),
        ({"clear": {"CDPATH": "/"}}, "env.clear.CDPATH: CDPATH is reserved"),
        ({"clear": {"LD_PRELOAD": "/x.so"}}, "env.clear.LD_PRELOAD: LD_PRELOAD is reserved"),
        ({"clear": {"ERL_EPMD_ADDRESS": "0.0.0.0"}}, "env.clear.ERL_EPMD_ADDRESS: ERL_EPMD_ADDRESS is set by deployer"),
        ({"clear": {"1ABC": "x"}}, "env.clear.1ABC: '1ABC' is not a valid environment variable name (letters,"),
        ({"clear": {"A-B": "x"}}, "env.clear.A-B: 'A-B' is not a valid environment variable name"),
        ({"clear": {"A B": "x"}}, "env.clear.'A B': 'A B' is not a valid environment variable name"),
        ({"secret": ["OK", "NOT-OK"]}, "env.secret.NOT-OK: 'NOT-OK' is not a valid environment variable name"),
    ],
)
def test_reserved_and_invalid_env_names_are_refused_with_the_key(tmp_path: Path, env: dict[str, Any], key: str) -> None:
    msg = load_error(tmp_path, mutate(env=env), environ={"OK": "1", "LD_LIBRARY_PATH": "x", "RELEASE_COOKIE": "c"})
    assert f"test.yml: {key}" in msg, msg


def test_reserved_env_names_are_refused_per_host_too(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][1]["env"] = {"RELEASE_NODE": "hello@10.0.0.2"}
    msg = load_error(tmp_path, data)
    assert msg.endswith(
        "test.yml: hosts.1.env.RELEASE_NODE: RELEASE_NODE is managed by deployer and cannot be set in the inventory "
        "(it is node.name)"
    )
    data["hosts"][1]["env"] = {"PATH": "/x"}
    assert "test.yml: hosts.1.env.PATH: PATH is reserved" in load_error(tmp_path, data)


def test_flavour_variables_cannot_be_replaced(tmp_path: Path) -> None:
    data = mutate(app={"name": "hello", "flavour": "rebar3"}, env={"clear": {"RELX_OUT_FILE_PATH": "/tmp/x"}})
    msg = load_error(tmp_path, data)
    assert (
        "test.yml: env.clear.RELX_OUT_FILE_PATH: RELX_OUT_FILE_PATH is set by deployer from the rebar3 flavour" in msg
    )


def test_epmd_address_is_yours_without_loopback_only(tmp_path: Path) -> None:
    data = mutate(
        node={"loopback_only": False}, env={"clear": {"ERL_EPMD_ADDRESS": "10.0.0.1"}, "secret": ["HELLO_SECRET"]}
    )
    assert inventory(tmp_path, data).config.env.clear["ERL_EPMD_ADDRESS"] == "10.0.0.1"


def test_ordinary_env_names_are_accepted(tmp_path: Path) -> None:
    data = mutate(
        env={"clear": {"PHX_SERVER": "true", "LANG": "C.UTF-8", "ERL_AFLAGS": "+S 2"}, "secret": ["HELLO_SECRET"]}
    )
    assert set(inventory(tmp_path, data).config.env.clear) == {"PHX_SERVER", "LANG", "ERL_AFLAGS"}


@pytest.mark.parametrize("name", ["Hello", "hello-world", "$(touch /tmp/pwned)", "-rf", ""])
def test_bad_app_name(tmp_path: Path, name: str) -> None:
    assert "app.name: " in load_error(tmp_path, mutate(app={"name": name}))


@pytest.mark.parametrize("name", ["web;1", "-oProxyCommand=x", "web 1", "`id`"])
def test_bad_host_names(tmp_path: Path, name: str) -> None:
    data = copy.deepcopy(BASE)
    data["hosts"][1]["name"] = name
    assert "hosts.1.name: " in load_error(tmp_path, data)


def test_reserved_env_names_are_refused(tmp_path: Path) -> None:
    data = mutate(env={"clear": {"RELEASE_COOKIE": "abc"}})
    assert "RELEASE_COOKIE is managed by deployer" in load_error(tmp_path, data)


def test_missing_secret_names_where_it_looked(tmp_path: Path) -> None:
    msg = load_error(tmp_path, BASE, environ={})
    assert "env.secret.HELLO_SECRET: HELLO_SECRET is not set in the environment" in msg


def test_secret_from_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("# comment\nexport HELLO_SECRET='from file'\n")
    secrets.chmod(0o600)
    data = mutate(env={"secret": ["HELLO_SECRET"], "secrets_file": str(secrets)})
    write_inventory(tmp_path / "inventory", data)
    inv = load_inventory("test", tmp_path / "inventory", environ={})
    assert inv.secrets["HELLO_SECRET"].get_secret_value() == "from file"


def test_secrets_file_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("NOT A PAIR\n")
    with pytest.raises(InventoryError, match="line 1: expected KEY=VALUE"):
        read_secrets_file(bad)


def test_defaults_file_is_merged_under_the_environment(tmp_path: Path) -> None:
    directory = tmp_path / "inventory"
    write_inventory(directory, {"keep_releases": 3, "ssh": {"user": "ops", "port": 2222}}, env="defaults")
    write_inventory(directory, mutate(ssh={"user": "deploy"}))
    inv = load_inventory("test", directory, environ={"HELLO_SECRET": "x"})
    assert inv.config.keep_releases == 3
    assert inv.config.ssh.user == "deploy"
    assert inv.config.ssh.port == 2222


def test_missing_environment_lists_available(tmp_path: Path) -> None:
    write_inventory(tmp_path / "inventory", BASE, env="staging")
    with pytest.raises(InventoryError) as info:
        load_inventory("prod", tmp_path / "inventory")
    assert "prod.yml: no such inventory file" in str(info.value)
    assert "environments here: staging" in str(info.value)


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    directory = tmp_path / "inventory"
    directory.mkdir()
    (directory / "test.yml").write_text("app:\n  name: hello\n hosts: [\n")
    with pytest.raises(InventoryError, match=r"test.yml: line \d+, column \d+: not valid YAML"):
        load_inventory("test", directory)


def test_host_filter_matching_nothing_is_an_error(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    with pytest.raises(InventoryError, match="matches no host"):
        inv.select(roles=["db"])
    with pytest.raises(InventoryError, match="no host named web9"):
        inv.select(hosts=["web9"])
    assert [h.name for h in inv.select(roles=["migrator"])] == ["web1"]
    assert [h.name for h in inv.select(hosts=["web3", "web2"])] == ["web2", "web3"]


def test_strategy_counts_validated(tmp_path: Path) -> None:
    msg = load_error(tmp_path, mutate(strategy={"kind": "rolling", "batch_size": "lots"}))
    assert "test.yml: strategy.batch_size: 'lots' must be a count like 2 or a percentage like 25%" in msg
