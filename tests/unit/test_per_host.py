"""Issue 15: per-host environment values and secrets, resolved per host; conflicts with what deployer sets
(or with the environment's values of the other kind) are errors with the key path, never silent replacements."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.inventory import Inventory, load_inventory
from deployer.core.plan import node_env
from deployer.errors import InventoryError
from deployer.operations import release as api
from deployer.remote.shell import Secret
from deployer.testing import FakeFleet

from .helpers import BASE, release_tarball, write_inventory

ENVIRON = {
    "HELLO_SECRET": "hello-secret",
    "DATABASE_URL": "postgres://primary/db",
    "DATABASE_URL_EU": "postgres://eu-replica/db",
    "API_KEY_WEB3": "web3-key",
}


def with_hosts(**per_host: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["env"]["secret"] = {"HELLO_SECRET": "HELLO_SECRET", "DATABASE_URL": "DATABASE_URL"}
    for host in data["hosts"]:
        host.update(per_host.get(host["name"], {}))
    return data


def load(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None, **kwargs: Any) -> Inventory:
    write_inventory(tmp_path / "inventory", data)
    return load_inventory("test", tmp_path / "inventory", environ=ENVIRON if environ is None else environ, **kwargs)


def error(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, data, environ)
    return str(info.value)


PER_HOST = with_hosts(
    web2={"env": {"HELLO_REGION": "eu"}, "secret": {"DATABASE_URL": "DATABASE_URL_EU"}},
    web3={"secret": ["API_KEY_WEB3"]},
)


def revealed(env: dict[str, str | Secret]) -> dict[str, str]:
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in env.items()}


def test_secrets_are_resolved_per_host(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    values = {h: {k: v.get_secret_value() for k, v in inv.secrets_for(h).items()} for h in ("web1", "web2", "web3")}
    assert values["web1"] == {"HELLO_SECRET": "hello-secret", "DATABASE_URL": "postgres://primary/db"}
    assert values["web2"] == {"HELLO_SECRET": "hello-secret", "DATABASE_URL": "postgres://eu-replica/db"}
    assert values["web3"] == {
        "HELLO_SECRET": "hello-secret",
        "DATABASE_URL": "postgres://primary/db",
        "API_KEY_WEB3": "web3-key",
    }
    # Output is masked for every value, the hosts' own included.
    assert inv.secret_values() == {"hello-secret", "postgres://primary/db", "postgres://eu-replica/db", "web3-key"}


def test_node_env_carries_each_hosts_values(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    web1, web2, web3 = (revealed(node_env(inv, host)) for host in inv.hosts)
    assert web2["DATABASE_URL"] == "postgres://eu-replica/db" and web2["HELLO_REGION"] == "eu"
    assert web1["DATABASE_URL"] == "postgres://primary/db" and "HELLO_REGION" not in web1
    assert web3["API_KEY_WEB3"] == "web3-key" and "API_KEY_WEB3" not in web1
    assert isinstance(node_env(inv, inv.hosts[1])["DATABASE_URL"], Secret)


def test_the_plan_writes_each_host_its_own_env_file(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    artifact: Artifact = inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")
    fleet = FakeFleet(probe_output={h: "now=1\narch=x86_64\n" for h in ("web1", "web2", "web3")})
    result = api.deploy(inv, artifact, api.Options(connector=fleet.connect, dry_run=True))
    assert result.plan is not None
    web1 = result.plan.host("web1").prepare
    web2 = result.plan.host("web2").prepare
    assert web1 is not None and web2 is not None
    assert "postgres://eu-replica/db" in web2.render(reveal=True)
    assert "postgres://eu-replica/db" not in web1.render(reveal=True)
    assert "postgres://primary/db" in web1.render(reveal=True)
    for script in (web1, web2):
        assert "DATABASE_URL=********" in script.render() and "postgres://" not in script.render()


def test_a_missing_per_host_secret_is_named_with_its_key(tmp_path: Path) -> None:
    environ = {k: v for k, v in ENVIRON.items() if k != "DATABASE_URL_EU"}
    assert error(tmp_path, PER_HOST, environ) == (
        f"{tmp_path}/inventory/test.yml: hosts.1.secret.DATABASE_URL: DATABASE_URL_EU is not set in the environment"
        "\n  -> export the variable or add it to the secrets file (never to the inventory)"
    )


def test_unresolved_per_host_secrets_for_read_only_tasks(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST, environ={}, resolve_secrets=False)
    assert set(inv.secrets_for("web2")) == {"HELLO_SECRET", "DATABASE_URL"}
    assert set(inv.secrets_for("web3")) == {"HELLO_SECRET", "DATABASE_URL", "API_KEY_WEB3"}


@pytest.mark.parametrize(
    ("per_host", "expected"),
    [
        (
            {"web2": {"env": {"RELEASE_NODE": "hello@10.0.0.2"}}},
            "hosts.1.env.RELEASE_NODE: RELEASE_NODE is managed by deployer and cannot be set in the inventory "
            "(it is node.name)",
        ),
        ({"web2": {"secret": {"RELEASE_COOKIE": "MY_COOKIE"}}}, "hosts.1.secret.RELEASE_COOKIE: RELEASE_COOKIE is"),
        ({"web3": {"env": {"RELEASE_DISTRIBUTION": "sname"}}}, "hosts.2.env.RELEASE_DISTRIBUTION: RELEASE_DIS"),
        ({"web1": {"env": {"DEPLOYER_SHARED_DIR": "/x"}}}, "hosts.0.env.DEPLOYER_SHARED_DIR: DEPLOYER_SHARED_DIR is"),
        ({"web1": {"secret": ["LD_PRELOAD"]}}, "hosts.0.secret.LD_PRELOAD: LD_PRELOAD is reserved"),
        (
            {"web1": {"env": {"ERL_EPMD_ADDRESS": "0.0.0.0"}}},
            "hosts.0.env.ERL_EPMD_ADDRESS: ERL_EPMD_ADDRESS is set by deployer from node.loopback_only",
        ),
        (
            {"web2": {"env": {"DATABASE_URL": "postgres://in-the-inventory"}}},
            "hosts.1.env.DATABASE_URL: DATABASE_URL is a secret (env.secret.DATABASE_URL); give this host its own "
            "in hosts.1.secret",
        ),
        (
            {"web2": {"secret": {"HELLO_PORT": "PORT_WEB2"}}},
            "hosts.1.secret.HELLO_PORT: HELLO_PORT is a plain value (env.clear.HELLO_PORT)",
        ),
        (
            {"web2": {"env": {"API_KEY": "x"}, "secret": {"API_KEY": "API_KEY_WEB3"}}},
            "hosts.1.secret.API_KEY: API_KEY set both in env and in secret",
        ),
        ({"web2": {"secret": "DATABASE_URL"}}, "hosts.1.secret: must be a mapping of node variable"),
        ({"web2": {"secret": [["x"]]}}, "hosts.1.secret: must be a mapping of node variable"),
    ],
)
def test_conflicts_are_errors_with_the_key_path(
    tmp_path: Path, per_host: dict[str, dict[str, Any]], expected: str
) -> None:
    message = error(tmp_path, with_hosts(**per_host))
    assert message.startswith(f"{tmp_path}/inventory/test.yml: {expected}"), message


def test_a_host_value_replaces_the_environments_value_of_its_kind(tmp_path: Path) -> None:
    inv = load(tmp_path, with_hosts(web1={"env": {"HELLO_PORT": "4001"}}))
    assert revealed(node_env(inv, inv.hosts[0]))["HELLO_PORT"] == "4001"
    assert revealed(node_env(inv, inv.hosts[1]))["HELLO_PORT"] == "4000"
