"""End to end: `mix new` project → `deployer init` → build → `deployer deploy` to real sshd hosts.

Everything a new user does, through the `deployer` command: the generated mix.exs release (with the
:tar step), release module (no Ecto: its migrate/0 says so and succeeds) and inventory are used as
written (the shared part in inventory/defaults.yml), except the hosts and SSH settings, which point at the
fleet (as `invoke fleet.up` would write them). The health check is the generated `rpc: "1 + 1"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import deployer
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
    data["health"] = {"deadline": 180}  # merged over defaults.yml's: each rpc try boots a VM, slow under load
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
        "wrote     inventory/defaults.yml",
        "wrote     inventory/staging.yml",
        "wrote     inventory/prod.yml",
        "wrote     lib/demo_app/release.ex",
        "updated   mix.exs",
    ):
        assert line in init.stderr, init.stderr
    assert "config/runtime.exs" in init.stderr and init.stdout == ""
    assert not (project / "tasks.py").exists()  # a Mix team does not need one (--tasks-py writes it)
    assert "steps: [:assemble, :tar]" in (project / "mix.exs").read_text()
    for env in ("staging", "prod"):
        load_inventory(env, project / "inventory", resolve_secrets=False)
    again = deployer_cmd(project, "init")
    assert again.returncode == 0 and "unchanged inventory/staging.yml" in again.stderr

    # --- a git checkout with an uncommitted change: the deploy records who deployed which commit --------
    git = ["git", "-C", str(project), "-c", "user.name=e2e", "-c", "user.email=e2e@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "adopt deployer"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (project / "README.md").write_text((project / "README.md").read_text() + "\nedited, not committed\n")

    # --- deploy the generated staging environment, pointed at the fleet --------------------------------
    deploy_to = f"{fleet.deploy_root}/init-{fleet.runid}"
    point_at_fleet(project / "inventory" / "staging.yml", fleet, deploy_to)
    try:
        deployed = deployer_cmd(project, "deploy", "--env", "staging", "--verbose", timeout=900)
        assert deployed.returncode == 0, deployed.stdout[-6000:] + deployed.stderr[-3000:]
        assert "no Ecto repos configured, nothing to migrate" in deployed.stderr  # the generated migrate/0 ran
        assert f"built from {head[:12]} (dirty)" in deployed.stderr
        assert "built in" in deployed.stderr  # the live build line's end (the output streamed with --verbose)
        history = deployer_cmd(project, "history", "--env", "staging", "--json", timeout=300)
        for host in json.loads(history.stdout)["hosts"]:
            last = host["revisions"][-1]
            assert (last["commit"], last["dirty"], last["deployer"]) == (head, True, deployer.__version__), last

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


@pytest.mark.skipif(shutil.which("rebar3") is None, reason="needs rebar3")
def test_init_a_rebar3_new_release_and_deploy_it_as_deployers_node(session_fleet: Fleet, tmp_path: Path) -> None:
    """relx's stock vm.args says `-sname relapp -setcookie relapp_cookie`: after init, the deployed node is
    named by deployer (`-name relapp@127.0.0.1`) and no cookie is in any argv on the hosts."""
    fleet = session_fleet
    created = subprocess.run(
        ["rebar3", "new", "release", "relapp"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert created.returncode == 0, created.stdout + created.stderr
    project = tmp_path / "relapp"
    stock = (project / "config" / "vm.args").read_text()
    assert "-setcookie" in stock and "-sname relapp" in stock  # what init must not let through

    init = deployer_cmd(project, "init")
    assert init.returncode == 0, init.stdout + init.stderr
    assert "wrote     config/vm.args.src" in init.stderr and "updated   rebar.config" in init.stderr
    assert '{vm_args_src, "config/vm.args.src"}' in (project / "rebar.config").read_text()
    src = [line for line in (project / "config" / "vm.args.src").read_text().splitlines() if not line.startswith("#")]
    assert "-name ${RELEASE_NODE}" in src and not any(line.startswith(("-setcookie", "-sname")) for line in src)

    deploy_to = f"{fleet.deploy_root}/initerl-{fleet.runid}"
    point_at_fleet(project / "inventory" / "staging.yml", fleet, deploy_to)
    try:
        deployed = deployer_cmd(project, "deploy", "--env", "staging", timeout=900)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-6000:]
        inventory = load_inventory("staging", project / "inventory", resolve_secrets=False)
        cookie_file = f"{deploy_to}/shared/.cookie"
        for row in api.status(inventory, api.Options()):
            assert row.reachable and row.facts is not None and row.facts.node_pids, row.error
            cookie = fleet.exec(row.host, f"cat {cookie_file}").stdout.strip()
            for pid in row.facts.node_pids:
                argv = fleet.exec(row.host, f"tr '\\0' ' ' < /proc/{pid}/cmdline").stdout
                assert "-name relapp@127.0.0.1" in argv, argv
                # relx's start script passes a bare `-setcookie` (no value: the VM reads $HOME/.erlang.cookie).
                assert re.search(r"-setcookie +[^-\s]", argv) is None, argv
                assert "relapp_cookie" not in argv and cookie not in argv, argv
    finally:
        stop_nodes(fleet, deploy_to)
