"""Helpers for end-to-end tests: an inventory for the example app on a fleet, and probes inside hosts."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployer.core.inventory import Inventory, load_inventory
from deployer.core.outcome import Report
from tests.harness.fleet import Fleet
from tests.harness.fleet_tasks import common_dir, local_inventory, prepare_fleet_files

_ports = itertools.count(4100)

#: The ``deployer`` program as an operator runs it (the console script's entry point, from this checkout).
DEPLOYER = [sys.executable, "-m", "deployer.cli.program"]


def cli_argv(app: App, task: str, *args: str) -> list[str]:
    """argv of ``deployer <task> --env e2e --inventory-dir <app's> <args>``."""
    return [*DEPLOYER, task, "--env", "e2e", "--inventory-dir", str(app.inventory_dir), *args]


def cli(
    app: App,
    task: str,
    *args: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``deployer <task>`` against ``app``'s inventory to completion (``env`` is added to ours)."""
    return subprocess.run(
        cli_argv(app, task, *args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def cli_popen(app: App, task: str, *args: str) -> subprocess.Popen[str]:
    """Start ``deployer <task>`` against ``app``'s inventory, stdout and stderr merged, for a test to interfere."""
    return subprocess.Popen(cli_argv(app, task, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass
class App:
    """One deployment of the example app on a fleet: its own deploy_to, port, node name and inventory."""

    fleet: Fleet
    name: str
    port: int
    inventory_dir: Path
    data: dict[str, Any]

    @property
    def deploy_to(self) -> str:
        return str(self.data["deploy_to"])

    @property
    def db_dir(self) -> Path:
        return Path(self.data["env"]["clear"]["HELLO_DATA_DIR"])

    def inventory(self, **environ: str) -> Inventory:
        return load_inventory("e2e", self.inventory_dir, environ=environ or None)

    def rewrite(self, **changes: Any) -> None:
        self.data.update(changes)
        (self.inventory_dir / "e2e.yml").write_text(yaml.safe_dump(self.data, sort_keys=False))

    def sh(self, host: str, command: str, check: bool = True) -> str:
        return self.fleet.exec(host, command, check=check, timeout=60).stdout

    def health(self, host: str) -> dict[str, Any] | None:
        out = self.fleet.exec(host, f"curl -fsS --max-time 5 http://127.0.0.1:{self.port}/health", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def versions(self) -> dict[str, str | None]:
        result = {}
        for host in self.fleet.hosts:
            health = self.health(host.name)
            result[host.name] = health["version"] if health else None
        return result

    def current(self, host: str) -> str:
        return self.sh(host, f"readlink {self.deploy_to}/current").strip()

    def releases(self, host: str) -> list[str]:
        return self.sh(host, f"ls {self.deploy_to}/releases").split()

    def migrations_log(self) -> list[str]:
        log = self.db_dir / "migrations.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop_nodes(self) -> None:
        for host in self.fleet.hosts:
            self.fleet.exec(
                host.name,
                f"for p in $(ls -ld /proc/[0-9]*/exe 2>/dev/null | grep -F '{self.deploy_to}/releases/' "
                "| sed 's|.*/proc/\\([0-9]*\\)/exe.*|\\1|'); do kill -KILL $p; done; true",
                check=False,
            )


def explain(report: Report) -> str:
    """A report as assertion text: the error, then each host's outcome, step and error, then warnings."""
    lines = [f"{report.operation}: {report.error}"]
    lines += [f"  {h.host}: {h.outcome} step={h.step} error={h.error}" for h in report.hosts]
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def make_app(fleet: Fleet, tmp_path: Path, name: str, **overrides: Any) -> App:
    """Write an inventory for a fresh deployment of the example on ``fleet``."""
    prepare_fleet_files(fleet)
    port = next(_ports)
    data = local_inventory(fleet, project=str(Path(__file__).resolve().parents[2] / "examples" / "hello"), port=port)
    data["deploy_to"] = f"{fleet.deploy_root}/{name}"
    data["node"] = {"name": f"{name}@127.0.0.1", "stop_timeout": 20}
    data["env"]["clear"]["HELLO_DATA_DIR"] = str(common_dir(fleet.runid) / name)
    data["health"]["deadline"] = 30
    data.update(overrides)
    directory = tmp_path / "inventory"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "e2e.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return App(fleet=fleet, name=name, port=port, inventory_dir=directory, data=data)


def remove_app(app: App) -> None:
    app.stop_nodes()
    shutil.rmtree(app.db_dir, ignore_errors=True)


def padded_tarball(source: Path, dest: Path, megabytes: int) -> Path:
    """A copy of the release ``source`` with an incompressible data file inside, for slow uploads."""
    import os
    import tarfile

    if dest.exists():
        return dest
    partial = dest.with_suffix(".partial")
    with tarfile.open(source, "r:gz") as src, tarfile.open(partial, "w:gz", compresslevel=1) as out:
        for member in src:
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        blob = dest.parent / "blob.bin"
        blob.write_bytes(os.urandom(megabytes * 2**20))
        out.add(blob, arcname="lib/padding/priv/blob.bin")
        blob.unlink()
    partial.rename(dest)
    return dest


class Recorder:
    """Events that remember every step and can run a hook when a given step starts (fault injection)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, str]] = []
        self.hooks: dict[tuple[str, str], Any] = {}

    def on(self, host: str, step: str, status: str, hook: Any) -> None:
        self.hooks[(host, f"{step}:{status}")] = hook

    def phase(self, name: str, detail: str = "") -> None:
        self.steps.append(("*", "phase", name))

    def step(self, host: str, step: str, status: str, detail: str = "") -> None:
        self.steps.append((host, step, status))
        hook = self.hooks.pop((host, f"{step}:{status}"), None)
        if hook is not None:
            hook()

    def progress(self, host: str, sent: int, total: int) -> None:
        pass

    def output(self, host: str, stream: str, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        self.steps.append(("*", "warning", text))
