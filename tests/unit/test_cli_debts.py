"""exec, eval and check read the inventory once, resolving the secrets in that one read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deployer.cli import common, run
from deployer.operations import commands
from deployer.operations import node as ops

from .helpers import BASE, deployer_cli, write_inventory


@pytest.fixture
def reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each read of the inventory, by whether it resolved the secrets; the operations replaced by recorders."""
    write_inventory(tmp_path / "inventory", BASE)
    monkeypatch.chdir(tmp_path)
    seen: list[bool] = []

    def counting(real: Any) -> Any:
        def load_inventory(*args: Any, resolve_secrets: bool = True, **kwargs: Any) -> Any:
            seen.append(resolve_secrets)
            return real(*args, resolve_secrets=resolve_secrets, **kwargs)

        return load_inventory

    monkeypatch.setattr(common, "load_inventory", counting(common.load_inventory))
    monkeypatch.setattr(run, "load_inventory", counting(run.load_inventory))
    monkeypatch.setattr(commands, "exec_command", lambda inventory, command, options: seen.append(inventory) or [])
    monkeypatch.setattr(commands, "eval_expression", lambda inventory, expr, options: seen.append(inventory) or [])
    monkeypatch.setattr(ops, "check", lambda inventory, options, artifact=None: [])
    return seen


def test_exec_and_eval_read_once_with_the_secrets_when_available(
    reads: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELLO_SECRET", "s3cr3t-value")
    assert deployer_cli("exec", "--env", "test", "--command", "true") == 0
    assert reads[0] is True and len(reads) == 2  # one read, then the operation
    assert "s3cr3t-value" in reads[1].secret_values()  # masked in what the hosts print
    reads.clear()
    assert deployer_cli("eval", "--env", "test", "--expression", "1") == 0
    assert reads[0] is True and len(reads) == 2


def test_exec_without_the_secret_still_runs(reads: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HELLO_SECRET", raising=False)
    assert deployer_cli("exec", "--env", "test", "--command", "true") == 0
    assert reads[:2] == [True, False]  # the secret could not be resolved: read without, nothing to mask


def test_check_reads_once_and_a_missing_secret_is_bad_input(
    reads: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HELLO_SECRET", "s3cr3t-value")
    assert deployer_cli("check", "--env", "test") == 0
    assert reads == [True]
    monkeypatch.delenv("HELLO_SECRET")
    reads.clear()
    assert deployer_cli("check", "--env", "test") == 2
    assert "HELLO_SECRET is not set" in capsys.readouterr().err and reads == [True]


def test_status_asks_a_balancer_that_is_an_inventory_host_over_its_status_connection(tmp_path: Path) -> None:
    from deployer.core.config import HostConfig
    from deployer.operations.release import Options
    from deployer.operations.status import status_with_balancer
    from deployer.testing import FakeFleet, FakeTransport, ok

    from .helpers import inventory

    data = {**BASE, "load_balancer": {"hosts": ["web3"], "backend": "app", "socket": "/run/haproxy/admin.sock"}}
    inv = inventory(tmp_path, data)
    fake = FakeFleet()
    fake.responses[("web3", "balancer states of app")] = ok(
        "server=app/web1 state=UP scur=0\nserver=app/web3 state=DRAIN scur=0\n"
    )
    connections: list[str] = []

    def connect(host: HostConfig) -> FakeTransport:
        connections.append(host.name)
        return fake.connect(host)

    rows, states = status_with_balancer(inv, Options(connector=connect))
    assert [r.host for r in rows] == ["web1", "web2", "web3"] and all(r.reachable for r in rows)
    assert states == {"web3": {"web1": "UP", "web2": "missing", "web3": "DRAIN"}}
    assert sorted(connections) == ["web1", "web2", "web3"]  # one connection per machine, none extra for web3
    assert fake.names("web3") == ["status", "balancer states of app"]
