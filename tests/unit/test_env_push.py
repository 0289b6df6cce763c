"""``deployer env push`` through the one engine (a fake fleet): plan, masking, per-host values, the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.cli.program import _argv
from deployer.core.envplan import ENV_PUSH
from deployer.operations import env as env_api
from deployer.operations import release as api
from deployer.testing import FakeFleet, ok

from .test_per_host import PER_HOST, load

RID = "20260101000000-0.1.0"
PROBE = f"now=1\ncurrent=releases/{RID}\nrelease={RID}\nnode_pid=4242\n"


def fleet(**probes: str) -> FakeFleet:
    return FakeFleet(probe_output={h: probes.get(h, PROBE) for h in ("web1", "web2", "web3")})


def test_the_dry_run_shows_each_hosts_file_with_its_secrets_masked(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    fake = fleet()
    result = env_api.push(inv, api.Options(connector=fake.connect, dry_run=True))
    plan = result.plan
    assert plan is not None and plan.kind == ENV_PUSH and plan.health_gated
    assert result.report.dry_run and [c for c in fake.calls if c[1] == "env-push"] == []
    web1, web2 = plan.host("web1"), plan.host("web2")
    assert web2.before == web2.target == RID and web2.revert is not None
    masked = web2.activate.render()
    assert "DATABASE_URL=********" in masked and "postgres://" not in masked and "HELLO_REGION=eu" in masked
    assert "postgres://eu-replica/db" in web2.activate.render(reveal=True)
    assert "postgres://eu-replica/db" not in web1.activate.render(reveal=True)
    assert f"e={inv.config.deploy_to}/shared/node.env\n" in masked


def test_a_push_writes_every_host_and_notes_the_unchanged_ones(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    fake = fleet()
    fake.responses[("web3", "env-push")] = ok("env=unchanged\n")
    result = env_api.push(inv, api.Options(connector=fake.connect))
    report = result.report
    assert report.ok, report.error
    assert report.operation == ENV_PUSH
    assert sorted(h for h, name, _ in fake.calls if name == "env-push") == ["web1", "web2", "web3"]
    assert {h.host: h.outcome for h in report.hosts} == {"web1": "success", "web2": "success", "web3": "success"}
    # The secrets went to the hosts, never into what was logged of the scripts.
    assert all("postgres://" not in text for _, _, text in fake.calls)


def test_no_restart_only_writes_and_needs_no_release(tmp_path: Path) -> None:
    inv = load(tmp_path, PER_HOST)
    fake = fleet(web3="now=1\n")  # nothing deployed on web3
    refused = env_api.push(inv, api.Options(connector=fake.connect, dry_run=True))
    assert refused.report.error is not None
    assert "cannot restart with the new environment: nothing is deployed on web3" in refused.report.error
    result = env_api.push(inv, api.Options(connector=fake.connect, dry_run=True), restart=False)
    assert result.plan is not None and not result.plan.health_gated
    for host in result.plan.hosts:
        assert host.revert is None
        assert "step stop" not in host.activate.render() and "step health" not in host.activate.render()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["env", "push", "--env", "prod"], ["env-push", "--env", "prod"]),
        (["env-push", "--dry-run"], ["env-push", "--dry-run"]),
        (["deploy", "--env", "env"], ["deploy", "--env", "env"]),
    ],
)
def test_env_push_is_spelled_as_kamal_spells_it(argv: list[str], expected: list[str]) -> None:
    assert _argv(argv) == expected
