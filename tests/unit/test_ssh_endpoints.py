"""Endpoints from the inventory and, when asked, the operator's OpenSSH config; gateways shared per run."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deployer.core.inventory import load_inventory
from deployer.errors import ConnectError, DeployerError
from deployer.ssh import transport as transport_module
from deployer.ssh.endpoints import endpoint, parse_hop
from deployer.ssh.transport import Endpoint, Gateways

from .helpers import BASE, write_inventory


def load(tmp_path: Path, ssh: dict[str, Any], hosts: list[dict[str, Any]] | None = None) -> Any:
    data = copy.deepcopy(BASE)
    data["ssh"] = ssh
    if hosts is not None:
        data["hosts"] = hosts
    write_inventory(tmp_path / "inventory", data)
    return load_inventory("test", tmp_path / "inventory", environ={"HELLO_SECRET": "x"})


CONFIG = """\
Host bastion
    HostName 192.0.2.10
    User jump
    Port 2201
    IdentityFile ~/keys/jump
    IdentitiesOnly yes

Host inner
    HostName [fd00::5]
    User hop

Host web*
    User admin
    IdentityFile /keys/web
    ProxyJump bastion,inner

Host web2
    HostName 10.9.9.2
    Port 2222
    HostKeyAlias web2.prod

Host direct
    HostName 10.9.9.9
    ProxyJump none
"""


def test_openssh_config_applies_to_hosts_and_every_hop(tmp_path: Path) -> None:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "ssh_config").write_text(CONFIG)
    inv = load(
        tmp_path,
        {"user": "deploy", "config": "ssh_config"},
        [
            {"name": "w1", "address": "web1", "roles": ["app", "migrator"]},
            {"name": "w2", "address": "web2", "user": "root"},
            {"name": "d", "address": "direct"},
        ],
    )
    w1, w2, d = (endpoint(inv, h) for h in inv.config.hosts)
    assert (w1.address, w1.port, w1.user, w1.identity_files, w1.identities_only) == (
        "web1",
        22,
        "admin",
        ("/keys/web",),
        False,
    )
    inner = w1.gateway
    assert inner is not None and (inner.address, inner.user, inner.port) == ("fd00::5", "hop", 22)
    bastion = inner.gateway
    assert bastion is not None and bastion.gateway is None
    assert (bastion.address, bastion.port, bastion.user, bastion.identities_only) == ("192.0.2.10", 2201, "jump", True)
    assert bastion.identity_files[0].endswith("/keys/jump") and "~" not in bastion.identity_files[0]
    # The host's own user wins over the config; HostName, Port and HostKeyAlias apply.
    assert (w2.address, w2.port, w2.user, w2.known_hosts_name) == ("10.9.9.2", 2222, "root", "web2.prod")
    assert w1.gateway == w2.gateway  # equal endpoints: one shared connection
    assert d.gateway is None and d.address == "10.9.9.9"


def test_inventory_gateway_wins_and_takes_ipv6(tmp_path: Path) -> None:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "ssh_config").write_text(CONFIG)
    inv = load(
        tmp_path,
        {"user": "deploy", "config": "ssh_config", "gateway": "ops@[fd00::1]:2022"},
        [
            {"name": "w1", "address": "web1", "roles": ["app", "migrator"]},
            {"name": "v6", "address": "[fd00::7]", "port": 2222},
        ],
    )
    w1, v6 = (endpoint(inv, h) for h in inv.config.hosts)
    assert w1.gateway is not None and (w1.gateway.address, w1.gateway.port, w1.gateway.user) == ("fd00::1", 2022, "ops")
    assert v6.address == "fd00::7" and v6.known_hosts_name == "[fd00::7]:2222"


def test_without_config_nothing_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host 10.0.0.1\n  HostName 10.7.7.7\n")
    monkeypatch.setenv("HOME", str(home))
    inv = load(tmp_path, {"user": "deploy"})
    assert endpoint(inv, inv.config.hosts[0]).address == "10.0.0.1"
    inv = load(tmp_path, {"user": "deploy", "config": True})
    assert endpoint(inv, inv.config.hosts[0]).address == "10.7.7.7"


def test_missing_named_config_is_an_inventory_error(tmp_path: Path) -> None:
    inv = load(tmp_path, {"user": "deploy", "config": "nope"})
    with pytest.raises(DeployerError, match=r"ssh\.config: cannot read .*nope"):
        endpoint(inv, inv.config.hosts[0])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bastion", (None, "bastion", None)),
        ("ops@bastion:2022", ("ops", "bastion", 2022)),
        ("[fd00::1]", (None, "fd00::1", None)),
        ("ops@[fd00::1]:22", ("ops", "fd00::1", 22)),
    ],
)
def test_hops(spec: str, expected: tuple[str | None, str, int | None]) -> None:
    assert parse_hop(spec, "x") == expected


@pytest.mark.parametrize("spec", ["fd00::1", "a b", "host:99999", "[fd00::1"])
def test_bad_hops(spec: str) -> None:
    with pytest.raises(DeployerError):
        parse_hop(spec, "ssh.gateway")


class _FakeGatewayTransport:
    opened = 0

    def __init__(self, endpoint: Endpoint, *, gateways: Gateways | None = None) -> None:
        time.sleep(0.05)  # a login takes a while: every host asks meanwhile
        if endpoint.address == "bad":
            raise ConnectError(endpoint.name, "refused")
        type(self).opened += 1
        self.closed = False

    def is_alive(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def test_one_login_per_gateway_however_many_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "SSHTransport", _FakeGatewayTransport)
    gateways = Gateways()
    bastion = Endpoint("gateway bastion", "192.0.2.10", 22, "jump")
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(gateways.acquire(bastion))) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 32 and len({id(g) for g in got}) == 1 and gateways.logins == 1
    for _ in range(31):
        gateways.release(bastion)
    assert not got[0].closed  # type: ignore[attr-defined]
    gateways.release(bastion)
    assert got[0].closed  # type: ignore[attr-defined]
    # A failed login is not retried by every waiting host.
    bad = Endpoint("gateway bad", "bad", 22, "jump")
    errors: list[BaseException] = []

    def try_bad() -> None:
        try:
            gateways.acquire(bad)
        except ConnectError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=try_bad) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8 and len({id(e) for e in errors}) == 1
