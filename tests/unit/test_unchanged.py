"""A re-deploy of what a host already runs, healthy, with the same env file, leaves that host alone."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.facts import parse_probe
from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout
from deployer.core.plan import env_digest, node_env, plan_deploy, unchanged_on
from deployer.operations import release as api
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import body_text
from deployer.remote.shell import Script, env_file_text
from deployer.ssh.transport import CommandResult
from deployer.testing import FakeFleet, ok

from .helpers import inventory, release_tarball

R1 = "20261101000000-0.1.0"
NONCE = "n0nce"


def _setup(tmp_path: Path) -> tuple[Inventory, Artifact]:
    inv = inventory(tmp_path)
    artifact = inspect_tarball(release_tarball(tmp_path / "hello-0.1.0.tar.gz"), "hello")
    return inv, artifact


def _probe(
    inv: Inventory,
    artifact: Artifact,
    host: str,
    *,
    health: str = "ok",
    sha: str | None = None,
    env: str | None = None,
    pids: str = "4242",
) -> str:
    record = json.dumps({"release": R1, "event": "deploy", "outcome": "success", "sha256": sha or artifact.sha256})
    config = next(h for h in inv.hosts if h.name == host)
    digest = env if env is not None else env_digest(inv, config, NONCE)
    lines = [
        "now=1",
        "exists=1",
        "writable=1",
        f"current=releases/{R1}",
        f"release={R1}",
        f"artifact={artifact.sha256}",
        "cookie=1",
        f"rev=2026-11-01T00:00:00Z\t{record}",
        f"node_pid={pids}",
        f"health={health}",
        f"env_sha256={digest}",
    ]
    return "".join(f"{line}\n" for line in lines if not line.endswith("="))


def test_the_digest_is_of_the_nonce_and_the_env_file_deployer_writes(tmp_path: Path) -> None:
    inv, _ = _setup(tmp_path)
    web1 = inv.hosts[0]
    text = env_file_text(node_env(inv, web1)).render(reveal=True)
    assert "s3cr3t-value" in text  # the digest covers the secrets too: a changed secret means a restart
    assert env_digest(inv, web1, NONCE) == hashlib.sha256(NONCE.encode() + text.encode()).hexdigest()
    assert env_digest(inv, web1, "other") != env_digest(inv, web1, NONCE)


def test_a_host_running_this_artifact_healthy_with_the_same_env_is_unchanged(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    facts = {h.name: parse_probe(_probe(inv, artifact, h.name)) for h in inv.hosts}
    plan = plan_deploy(inv, artifact, facts, who="t", cookie=None, env_nonce=NONCE)
    assert all(p.unchanged and p.target == R1 and p.steps == () and not p.upload for p in plan.hosts)
    assert all(p.prepare is None for p in plan.hosts)
    assert plan.migrate is None and plan.migrator is None  # nothing new anywhere: no migration
    assert plan.release_id == R1 and plan.upload_scripts == {}


@pytest.mark.parametrize(
    "change",
    ["other artifact", "failing", "down", "no node", "env differs", "env unknown"],
)
def test_any_difference_means_a_real_deploy(tmp_path: Path, change: str) -> None:
    inv, artifact = _setup(tmp_path)
    kwargs: dict[str, str] = {
        "other artifact": {"sha": "b" * 64},
        "failing": {"health": "failing"},
        "down": {"health": "down"},
        "no node": {"pids": ""},
        "env differs": {"env": "c" * 64},
        "env unknown": {"env": ""},
    }[change]
    facts = {"web1": parse_probe(_probe(inv, artifact, "web1", **kwargs))}
    facts.update({h.name: parse_probe(_probe(inv, artifact, h.name)) for h in inv.hosts[1:]})
    plan = plan_deploy(inv, artifact, facts, who="t", cookie=None, env_nonce=NONCE)
    web1 = plan.host("web1")
    assert not web1.unchanged and web1.target != R1 and web1.prepare is not None and web1.steps
    assert all(plan.host(h.name).unchanged for h in inv.hosts[1:])
    assert plan.migrate is not None and plan.migrator == "web1"  # the new release is migrated as always


def test_restart_or_no_running_facts_deploy_every_host(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    facts = {h.name: parse_probe(_probe(inv, artifact, h.name)) for h in inv.hosts}
    forced = plan_deploy(inv, artifact, facts, who="t", cookie=None, env_nonce=NONCE, restart=True)
    assert not any(p.unchanged for p in forced.hosts) and all(p.steps for p in forced.hosts)
    unprobed = plan_deploy(inv, artifact, facts, who="t", cookie=None)
    assert not any(p.unchanged for p in unprobed.hosts)


def test_unchanged_needs_the_release_on_disk(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    fact = parse_probe(_probe(inv, artifact, "web1").replace(f"release={R1}\n", ""))
    assert not unchanged_on(fact, artifact, env_digest(inv, inv.hosts[0], NONCE))


def test_running_state_renders_exactly() -> None:
    layout = RemoteLayout("/srv/hello", "hello")
    health = rc.HealthCheck("http://127.0.0.1:4000/health", None, deadline=5, interval=0.5)
    body = body_text(rc.running_state(layout, flavour("mix"), health, "n0nce"))
    assert body.endswith(
        'if [ -n "$cur" ]; then\n'
        "e=/srv/hello/shared/node.env\n"
        '  if [ -r "$e" ]; then\n'
        "    if command -v openssl >/dev/null 2>&1; then h=$( { printf '%s' n0nce; cat \"$e\"; } "
        "| openssl dgst -sha256 -r) || h=\n"
        "    else h=$( { printf '%s' n0nce; cat \"$e\"; } | sha256sum) || h=; fi\n"
        '    echo "env_sha256=${h%% *}"\n'
        "  fi\n"
        "fi\n"
    )
    assert "  secs 500\n" in body and 'curl -fsS -o /dev/null --max-time "$SECS" http://127.0.0.1:4000/health' in body


def test_the_env_path_comes_from_the_layout() -> None:
    assert body_text(rc.env_file_path(RemoteLayout("/srv/hello", "hello"))) == "e=/srv/hello/shared/node.env\n"
    assert body_text(rc.env_file_path(RemoteLayout("/srv/a b", "hello"))) == "e='/srv/a b/shared/node.env'\n"


def test_the_probe_parses_running_state() -> None:
    facts = parse_probe("health=ok\nenv_sha256=" + "a" * 64 + "\n")
    assert facts.health == "ok" and facts.env_sha256 == "a" * 64
    assert parse_probe("env_sha256=\n").env_sha256 is None


def test_an_unchanged_migrator_does_not_migrate_again(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    facts = {h.name: parse_probe(_probe(inv, artifact, h.name)) for h in inv.hosts}
    facts["web3"] = parse_probe(_probe(inv, artifact, "web3", health="down"))
    plan = plan_deploy(inv, artifact, facts, who="t", cookie=None, env_nonce=NONCE)
    assert plan.host("web1").unchanged and plan.host("web2").unchanged and not plan.host("web3").unchanged
    # web1 runs this artifact: its migrations ran before it was switched to it.
    assert plan.migrate is None and plan.migrator is None
    assert plan.host("web3").prepare is not None and plan.release_id != R1


def _fake_probe(inv: Inventory, artifact: Artifact, host: str, **kwargs: str) -> Callable[[Script], CommandResult]:
    """The probe of a host running ``artifact``, answering with the digest of the nonce this run sent."""

    def respond(script: Script) -> CommandResult:
        match = re.search(r"printf '%s' (\w+); cat", script.render())
        assert match is not None, "the probe carries the running-state check"
        config = next(h for h in inv.hosts if h.name == host)
        digest = env_digest(inv, config, match.group(1))
        return ok(_probe(inv, artifact, host, env=kwargs.pop("env", digest), **kwargs) + "lock_acquired=1\n")

    return respond


def test_the_executor_leaves_unchanged_hosts_alone(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    fleet = FakeFleet()
    for host in ("web1", "web2", "web3"):
        fleet.responses[(host, "lock+probe")] = _fake_probe(inv, artifact, host)
    report = api.deploy(inv, artifact, api.Options(connector=fleet.connect)).report
    assert report.ok, report.error
    assert [h.outcome for h in report.hosts] == ["unchanged"] * 3
    assert all(h.before == h.after == R1 and h.healthy for h in report.hosts)
    assert report.release == R1 and report.migrated_on is None
    assert fleet.names("web1") == ["lock+probe", "unlock"]  # nothing else ran on any host
    assert fleet.names("web3") == ["lock+probe", "unlock"]


def test_restart_deploys_every_host_and_skips_the_running_state_check(tmp_path: Path) -> None:
    inv, artifact = _setup(tmp_path)
    fleet = FakeFleet()
    for host in ("web1", "web2", "web3"):
        fleet.responses[(host, "lock+probe")] = lambda script, h=host: ok(  # type: ignore[misc]
            _probe(inv, artifact, h) + "lock_acquired=1\n"
        )
    report = api.deploy(inv, artifact, api.Options(connector=fleet.connect, restart=True)).report
    assert report.ok, report.error
    assert [h.outcome for h in report.hosts] == ["success"] * 3
    assert fleet.names("web2") == ["lock+probe", "prepare", "activate", "unlock"]
    probe = next(s for h, n, s in fleet.calls if n == "lock+probe")
    assert "env_sha256" not in probe
