"""End to end: `mix new` project → `deployer init` → build → `deployer deploy` to real sshd hosts.

Everything a new user does, through the `deployer` command: the generated mix.exs release (with the
:tar step), release module (no Ecto: its migrate/0 says so and succeeds) and inventory are used as
written, except the hosts and SSH settings, which point at the fleet (as `invoke fleet.up` would write
them). The health check is the generated `rpc: "1 + 1"`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.core.inventory import load_inventory
from deployer.operations import release as api
from tests.harness.fleet import Fleet

REPO = Path(__file__).resolve().parents[2]
APP = "demo_app"


def deployer_cmd(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "deployer.cli.program", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def point_at_fleet(path: Path, fleet: Fleet, deploy_to: str) -> dict[str, Any]:
    """Replace the generated placeholder hosts and SSH settings with the fleet's (cf. fleet_tasks.local_inventory)."""
    data = yaml.safe_load(path.read_text())
    data["hosts"] = [
        {"name": h.name, "address": h.address, "port": h.port, "roles": ["app", "migrator"] if i == 0 else ["app"]}
        for i, h in enumerate(fleet.hosts)
    ]
    data["ssh"] = {
        "user": fleet.user,
        "identity_file": str(fleet.client_key),
        "known_hosts": str(fleet.known_hosts),
        "use_user_known_hosts": False,
    }
    data["deploy_to"] = deploy_to
    data["node"] = {"stop_timeout": 20}
    data["health"]["deadline"] = 180  # each rpc try boots a VM: slow on a loaded machine
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def stop_nodes(fleet: Fleet, deploy_to: str) -> None:
    for host in fleet.hosts:
        fleet.exec(
            host.name,
            f"for p in $(ls -ld /proc/[0-9]*/exe 2>/dev/null | grep -F '{deploy_to}/releases/' "
            "| sed 's|.*/proc/\\([0-9]*\\)/exe.*|\\1|'); do kill -KILL $p; done; true",
            check=False,
        )


@pytest.mark.skipif(shutil.which("mix") is None, reason="needs Elixir (mix)")
def test_init_a_mix_new_project_and_deploy_it(session_fleet: Fleet, tmp_path: Path) -> None:
    fleet = session_fleet
    created = subprocess.run(
        ["mix", "new", APP, "--sup"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert created.returncode == 0, created.stdout + created.stderr
    project = tmp_path / APP

    # --- init: the files, the mix.exs release, a note on runtime configuration ------------------------
    init = deployer_cmd(project, "init")
    assert init.returncode == 0, init.stdout + init.stderr
    for line in (
        "wrote    tasks.py",
        "wrote    inventory/staging.yml",
        "wrote    inventory/prod.yml",
        "wrote    lib/demo_app/release.ex",
        "updated  mix.exs",
    ):
        assert line in init.stdout, init.stdout
    assert "config/runtime.exs" in init.stdout
    assert "steps: [:assemble, :tar]" in (project / "mix.exs").read_text()
    for env in ("staging", "prod"):
        load_inventory(env, project / "inventory", resolve_secrets=False)
    again = deployer_cmd(project, "init")
    assert again.returncode == 0 and "skipped  inventory/staging.yml (exists; --force overwrites it)" in again.stdout

    # --- deploy the generated staging environment, pointed at the fleet --------------------------------
    deploy_to = f"{fleet.deploy_root}/init-{fleet.runid}"
    point_at_fleet(project / "inventory" / "staging.yml", fleet, deploy_to)
    try:
        deployed = deployer_cmd(project, "deploy", "--env", "staging", "--verbose", timeout=900)
        assert deployed.returncode == 0, deployed.stdout[-6000:] + deployed.stderr[-3000:]
        assert "no Ecto repos configured, nothing to migrate" in deployed.stdout  # the generated migrate/0 ran

        # Every host runs the node of the new release: a live VM whose health check (rpc) passes.
        inventory = load_inventory("staging", project / "inventory", resolve_secrets=False)
        rows = api.status(inventory, api.Options())
        assert len(rows) == len(fleet.hosts)
        for row in rows:
            assert row.reachable and row.facts is not None, row.error
            assert row.facts.current_version == "0.1.0"
            assert row.facts.node_pids, f"{row.host}: no node running"
            for pid in row.facts.node_pids:
                alive = fleet.exec(row.host, f"test -d /proc/{pid} && echo alive || echo gone").stdout.strip()
                assert alive == "alive"
        status = deployer_cmd(project, "status", "--env", "staging", "--json", timeout=300)
        assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
        document = json.loads(status.stdout)
        assert {h["host"] for h in document["hosts"]} == {h.name for h in fleet.hosts}
    finally:
        stop_nodes(fleet, deploy_to)
