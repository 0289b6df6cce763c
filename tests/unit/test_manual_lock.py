"""``deployer lock --message`` / ``deployer unlock``: a manual lock on every host, shown to whoever is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployer.core.facts import LockInfo
from deployer.core.inventory import Inventory
from deployer.engine.locks import judge, lock_info
from deployer.errors import LockedError
from deployer.operations import release as api
from deployer.testing import FakeFleet

from .helpers import BASE, deployer_cli, inventory, release_tarball, write_inventory

MESSAGE = "database maintenance until 14:00"


def manual_lock_line(since: float, message: str = MESSAGE) -> str:
    info = {"who": "alice", "host": "laptop", "operation": "lock", "since": since, "message": message, "token": "t"}
    return "lock=" + json.dumps(info) + "\n"


@pytest.fixture
def inv(tmp_path: Path) -> Inventory:
    return inventory(tmp_path)


def test_a_manual_lock_records_the_message_and_no_pid() -> None:
    info = json.loads(lock_info("tok", "lock", None, MESSAGE))
    assert info["message"] == MESSAGE and "pid" not in info and info["operation"] == "lock"
    run_lock = json.loads(lock_info("tok", "deploy", "r1"))
    assert "message" not in run_lock and isinstance(run_lock["pid"], int)


def test_a_manual_lock_is_described_with_its_reason_and_lifted_by_unlock_without_force() -> None:
    parsed = LockInfo.parse(manual_lock_line(since=1000)[len("lock=") :])
    assert parsed.manual and parsed.message == MESSAGE
    text = parsed.describe(now=1000 + 125)
    assert text.startswith("alice@laptop") and repr(MESSAGE) in text and "since 2m05s ago" in text
    # Young or old, a manual lock is what `unlock` is for: never refused as "may still be in use".
    assert judge(parsed, now=1001).refusal(timeout=3600) is None
    assert not judge(parsed, now=1001).stale


def test_lock_takes_every_host_with_the_message_and_keeps_it(inv: Inventory) -> None:
    fake = FakeFleet()
    facts = api.lock(inv, MESSAGE, api.Options(connector=fake.connect))
    assert list(facts) == ["web1", "web2", "web3"]
    for host in ("web1", "web2", "web3"):
        assert fake.names(host) == ["lock+probe"]  # taken, and not released when the run ends
    scripts = [text for _, name, text in fake.calls if name == "lock+probe"]
    assert all(MESSAGE in text for text in scripts)


def test_lock_is_all_or_none_when_a_host_is_already_locked(inv: Inventory) -> None:
    fake = FakeFleet(probe_output={"web2": "now=2000\n" + manual_lock_line(since=1000, message="someone else")})
    with pytest.raises(LockedError, match="someone else"):
        api.lock(inv, MESSAGE, api.Options(connector=fake.connect))
    assert fake.names("web1") == ["lock+probe", "unlock"]  # ours released again
    assert "unlock" not in fake.names("web2")  # theirs kept


def test_a_deploy_refused_by_a_manual_lock_shows_message_holder_and_age(inv: Inventory, tmp_path: Path) -> None:
    from deployer.core.artifact import inspect_tarball

    artifact = inspect_tarball(release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0"), "hello")
    fake = FakeFleet(probe_output={"web1": "now=5000\n" + manual_lock_line(since=5000 - 3 * 3600)})
    report = api.deploy(inv, artifact, api.Options(connector=fake.connect)).report
    assert not report.ok and report.error is not None
    assert "alice@laptop" in report.error and MESSAGE in report.error and "since 3h00m ago" in report.error
    assert "locked by hand" in report.error and "`deployer unlock --env test`" in report.error
    assert [name for _, name, _ in fake.calls] == ["lock+probe"]  # refused on the first host: nothing else ran


def test_unlock_lifts_a_young_manual_lock(inv: Inventory) -> None:
    fake = FakeFleet(probe_output={h: "now=1001\n" + manual_lock_line(since=1000) for h in ("web1", "web2", "web3")})
    before = api.unlock(inv, api.Options(connector=fake.connect))
    assert all(info is not None and info.message == MESSAGE for info in before.values())
    assert all(fake.names(h) == ["probe", "unlock"] for h in ("web1", "web2", "web3"))


def test_lock_task_requires_a_message_before_any_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_inventory(tmp_path / "inventory", BASE)
    monkeypatch.chdir(tmp_path)
    called: list[Any] = []
    monkeypatch.setattr(api, "lock", lambda *a, **k: called.append(a) or {})
    assert deployer_cli("lock", "--env", "test") == 2
    assert "--message is required" in capsys.readouterr().err and called == []
    assert deployer_cli("lock", "--env", "test", "--message", MESSAGE) == 0
    assert called and called[0][1] == MESSAGE
    assert "`deployer unlock --env test` lifts it" in capsys.readouterr().err
