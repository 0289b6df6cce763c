"""``invoke fleet.up`` / ``invoke fleet.down``: a local fleet of real sshd hosts to play with (needs root).

``fleet.up`` starts N OpenSSH servers, each in its own network, mount and pid
namespace, and writes ``inventory/<env>.yml`` (default ``local``) pointing at
them with strict host key checking, plus a secrets file outside the repository.
The hosts share one directory at the same path, standing in for the database
that real app servers would share, so the example's migrations are visible from
every host.

``fleet.up --machines`` boots real Debian machines instead (systemd as PID 1, journald,
sudo; see :mod:`tests.harness.machines`): the inventory logs in as the non-root user
``deploy``, which owns ``/srv/hello``.  ``fleet.reboot --host m1 [--power-cut]``
reboots one of them, or cuts its power, and waits until it is back.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import yaml
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

STATE_DIR = Path(".fleet")
COMMON_ROOT = Path("/var/tmp/deployer-fleet-db")


def state_file(env: str) -> Path:
    return STATE_DIR / f"{env}.json"


def common_dir(runid: str) -> Path:
    """The 'database' directory every host of fleet ``runid`` sees at the same path."""
    return COMMON_ROOT / runid


def local_inventory(fleet: Any, *, project: str = "examples/hello", port: int = 4000) -> dict[str, Any]:
    """An inventory for the example app on ``fleet`` (a :class:`tests.harness.fleet.Fleet`)."""
    hosts = []
    for index, host in enumerate(fleet.hosts):
        roles = ["app", "migrator"] if index == 0 else ["app"]
        hosts.append({"name": host.name, "address": host.address, "port": host.port, "roles": roles})
    return {
        "app": {"name": "hello", "flavour": "mix"},
        "deploy_to": f"{fleet.deploy_root}/hello",
        "keep_releases": 3,
        "build": {
            "path": project,
            "command": "MIX_ENV=prod mix release --overwrite",
            "tarball": "_build/*/prod/hello-*.tar.gz",
        },
        "ssh": {
            "user": fleet.user,
            "identity_file": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "use_user_known_hosts": False,
            "connect_timeout": 10,
        },
        "hosts": hosts,
        "env": {
            "clear": {
                "HELLO_PORT": str(port),
                "HELLO_DATA_DIR": str(common_dir(fleet.runid)),
                "HELLO_GREETING": "hello from the local fleet",
            },
            "secret": ["HELLO_SECRET"],
            "secrets_file": str(fleet.base_dir / "secrets.env"),
        },
        "migrate": {"eval": "Hello.Release.migrate()"},
        "health": {"http": f"http://127.0.0.1:{port}/health", "deadline": 60},
        "node": {"stop_timeout": 30},
    }


def pg_inventory(fleet: Any, *, port: int = 4000) -> dict[str, Any]:
    """An inventory for ``examples/hello_pg`` on ``fleet``: its data and migrations in the fleet's PostgreSQL
    (``DATABASE_URL`` a secret, in the secrets file :func:`prepare_fleet_files` writes)."""
    data = local_inventory(fleet, project="examples/hello_pg", port=port)
    data["app"] = {"name": "hello_pg", "flavour": "mix"}
    data["deploy_to"] = f"{fleet.deploy_root}/hello_pg"
    data["build"] = {**data["build"], "tarball": "_build/*/prod/hello_pg-*.tar.gz"}
    data["env"] = {
        "clear": {"PORT": str(port)},
        "secret": ["DATABASE_URL"],
        "secrets_file": str(fleet.base_dir / "secrets.env"),
    }
    data["migrate"] = {"eval": "HelloPg.Release.migrate()"}
    return data


def prepare_fleet_files(fleet: Any, database_url: str | None = None) -> None:
    """The shared 'database' directory and a secrets file outside the repository (0600)."""
    directory = common_dir(fleet.runid)
    directory.mkdir(parents=True, exist_ok=True)
    secrets_file = fleet.base_dir / "secrets.env"
    secrets_file.touch(mode=0o600)
    lines = f"HELLO_SECRET={secrets.token_urlsafe(24)}\n"
    if database_url is not None:
        lines += f"DATABASE_URL={database_url}\n"
    secrets_file.write_text(lines)


def remove_fleet_files(fleet: Any) -> None:
    shutil.rmtree(common_dir(fleet.runid), ignore_errors=True)


def _start_machines(hosts: int) -> Any:
    """Booted Debian machines (systemd, user ``deploy``) with ``deploy_to`` ready for ``deploy``."""
    from tests.harness.machines import MachineFleet, MachinesUnavailable

    try:
        fleet = MachineFleet(hosts, shared_dir=COMMON_ROOT / "{runid}").start()
    except MachinesUnavailable as exc:
        raise Exit(f"cannot start machines here: {exc}", 1) from None
    try:
        # What `deployer setup` would do on a fresh host: a deploy root the login user owns.
        for host in fleet.hosts:
            fleet.exec(host, ["install", "-d", "-o", fleet.user, "-g", fleet.user, f"{fleet.deploy_root}/hello"])
    except BaseException:
        fleet.stop()
        raise
    return fleet


@task(
    help={
        "hosts": "How many hosts (default 3).",
        "env": "Inventory to write (default local).",
        "inventory_dir": "Where inventories live (default inventory).",
        "machines": "Boot real Debian machines (systemd, journald, user deploy) instead of bare sshd hosts.",
        "service": "node.service of the inventory: daemon (default) or systemd (with --machines; then run "
        "`deployer setup --user root` once).",
        "database": "Also start a PostgreSQL host on the fleet's network; the inventory deploys examples/hello_pg "
        "with DATABASE_URL as a secret.",
    }
)
def up(
    c: Context,
    hosts: int = 3,
    env: str = "local",
    inventory_dir: str = "inventory",
    machines: bool = False,
    service: str = "daemon",
    database: bool = False,
) -> None:
    """Start N real OpenSSH hosts (or booted machines) in namespaces and write inventory/<env>.yml for them."""
    from tests.harness.fleet import Fleet, FleetUnavailable, reap_stale_fleets

    if service not in ("daemon", "systemd") or (service == "systemd" and not machines):
        raise Exit(f"--service {service}: daemon, or systemd with --machines", 2)
    if database and machines:
        raise Exit("--database runs next to the namespace fleet, not with --machines", 2)
    state = state_file(env)
    if state.exists():
        raise Exit(f"a fleet for '{env}' is already up ({state}); run `invoke fleet.down --env {env}` first", 1)
    reap_stale_fleets()
    fleet: Any
    if machines:
        fleet = _start_machines(hosts)
    else:
        try:
            fleet = Fleet(hosts).start()
        except FleetUnavailable as exc:
            raise Exit(f"cannot start a fleet here: {exc}", 1) from None
    db: Any = None
    try:
        if database:
            from tests.harness.database import Database, DatabaseUnavailable

            try:
                db = Database(fleet).create()
            except DatabaseUnavailable as exc:
                raise Exit(f"cannot start the database here: {exc} (scripts/install-test-deps.sh)", 1) from None
        prepare_fleet_files(fleet, db.url if db is not None else None)
        inventory = Path(inventory_dir) / f"{env}.yml"
        inventory.parent.mkdir(parents=True, exist_ok=True)
        data = pg_inventory(fleet) if db is not None else local_inventory(fleet)
        if service == "systemd":
            data["node"]["service"] = "systemd"
        inventory.write_text(
            f"# written by `invoke fleet.up` for fleet {fleet.runid}; removed by `invoke fleet.down`\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
        fleet.save(state)
        fleet.detach()
        if db is not None:
            # The database lives as long as the detached fleet: its first init owns both.
            db.detach(int((fleet.base_dir / "owner.pid").read_text().split()[0]))
    except BaseException:
        if db is not None:
            db.destroy()
        remove_fleet_files(fleet)
        fleet.stop()
        raise
    for host in fleet.hosts:
        print(f"  {host.name:<4} {host.address}:{host.port}")
    if db is not None:
        print(f"  db   {db.address}:{db.port} (PostgreSQL; DATABASE_URL in {fleet.base_dir / 'secrets.env'})")
    kind = "machines (systemd; ssh as deploy)" if machines else "hosts"
    print(f"fleet {fleet.runid} is up: {len(fleet.hosts)} {kind}; inventory written to {inventory}")


@task(help={"env": "Which fleet (default local)."})
def down(c: Context, env: str = "local", inventory_dir: str = "inventory") -> None:
    """Tear down the fleet started by fleet.up: processes, namespaces, links, files, its inventory."""
    import json

    from tests.harness.database import destroy_detached
    from tests.harness.fleet import Fleet
    from tests.harness.machines import MachineFleet

    state = state_file(env)
    if not state.exists():
        print(f"no fleet for '{env}' is up")
        return
    fleet: Any = MachineFleet.load(state) if "machines" in json.loads(state.read_text()) else Fleet.load(state)
    left = destroy_detached(fleet.runid)
    if left:
        print(f"the database of fleet {fleet.runid} left behind: {'; '.join(left)}")
    fleet.stop()
    remove_fleet_files(fleet)
    state.unlink()
    inventory = Path(inventory_dir) / f"{env}.yml"
    if inventory.exists() and inventory.read_text().startswith("# written by `invoke fleet.up`"):
        inventory.unlink()
    print(f"fleet {fleet.runid} is down")


@task(
    help={
        "env": "Which inventory (default local).",
        "path": "HTTP path to fetch (default /health).",
        "inventory_dir": "Where inventories live (default inventory).",
    }
)
def show(c: Context, env: str = "local", path: str = "/health", inventory_dir: str = "inventory") -> None:
    """Fetch the example app's HTTP endpoint from every host over the network, as a client would."""
    import urllib.error
    import urllib.request

    from deployer.core.inventory import load_inventory

    inventory = load_inventory(env, inventory_dir, resolve_secrets=False)
    clear = inventory.config.env.clear
    port = clear.get("HELLO_PORT") or clear.get("PORT", "4000")  # examples/hello or examples/hello_pg
    failed = False
    for host in inventory.hosts:
        url = f"http://{host.address}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # fleet addresses only
                body = response.read().decode().strip()
                print(f"  {host.name:<4} {url} -> {response.status} {body}")
        except (urllib.error.URLError, OSError) as exc:
            failed = True
            print(f"  {host.name:<4} {url} -> {exc}")
    if failed:
        raise Exit(code=1)


@task(
    help={
        "env": "Which fleet (default local); it must have been started with --machines.",
        "host": "Which machine (m1, m2, ...).",
        "power_cut": "Cut the power (every process dies at once) instead of `systemctl reboot`.",
    }
)
def reboot(c: Context, host: str, env: str = "local", power_cut: bool = False) -> None:
    """Reboot one machine of a `fleet.up --machines` fleet (or cut its power) and wait until it is back."""
    import json
    import time

    from tests.harness.machines import MachineError, MachineFleet

    state = state_file(env)
    if not state.exists() or "machines" not in json.loads(state.read_text()):
        raise Exit(f"no machine fleet for '{env}' is up; start one with `invoke fleet.up --machines --env {env}`", 1)
    fleet = MachineFleet.load(state)
    started = time.monotonic()
    try:
        if power_cut:
            fleet.power_cut(host)
        else:
            fleet.reboot(host)
    except (KeyError, MachineError) as exc:
        raise Exit(f"{host}: {exc}", 1) from None
    fleet.save(state)  # the machine's new processes, for fleet.down
    what = "power cut and boot" if power_cut else "reboot"
    print(f"{host}: {what} done in {time.monotonic() - started:.1f}s; systemd is running and sshd answers")
