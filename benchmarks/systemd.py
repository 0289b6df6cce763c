"""The systemd scenario: restarting nodes on booted machines, deployer against raw OpenSSH, in one run.

    python -m benchmarks.systemd [--hosts 2] [--repeats 5]

Boots N Debian machines (systemd as PID 1; :mod:`tests.harness.machines`), prepares them with
``deployer setup`` (as root), deploys the example release once as ``deploy`` with ``node.service:
systemd``, then alternates, ``repeats`` times each:

* **deployer**: ``deployer restart`` (lock + probe, ``sudo -n systemctl restart`` of the unit, health gate on
  the unit's main process, unlock), all hosts in parallel;
* **baseline**: per host in parallel, one OpenSSH session as ``deploy`` running ``sudo -n systemctl
  restart`` of the same unit, then polling the same health URL every 0.1 s until it answers.

Both sides wait for the same thing (the node answering its health check; ``health.stable_for`` is 0 and
the gate polls every 0.1 s, like the baseline). Also times what the machines add: the boot of the fleet,
``setup``, the first deploy, and a reboot until the node answers again without deployer. Writes
``benchmarks/results/systemd.json``. It prints numbers; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmarks/systemd.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks.harness import machine
from deployer.core.artifact import inspect_tarball
from deployer.core.inventory import load_inventory
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.operations import setup as setup_api
from tests.harness.examples import build_hello
from tests.harness.fleet_tasks import COMMON_ROOT, local_inventory, prepare_fleet_files, remove_fleet_files
from tests.harness.machines import MachineFleet

RESULTS = Path(__file__).resolve().parent / "results" / "systemd.json"
UNIT = "deployer-hello-bench.service"
PORT = 4000


def baseline_restart(fleet: MachineFleet) -> None:
    """What an operator's script would do: ssh, sudo systemctl restart, wait for the health answer."""
    command = (
        f"sudo -n /usr/bin/systemctl restart {UNIT} && "
        f"for i in $(seq 1 1200); do curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:{PORT}/health "
        "&& exit 0; sleep 0.1; done; exit 1"
    )

    def one(name: str) -> None:
        result = subprocess.run(
            [*fleet.ssh_argv(name), command], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise RuntimeError(f"baseline on {name}: exit {result.returncode}: {result.stderr.strip()}")

    with ThreadPoolExecutor(len(fleet.hosts)) as pool:
        list(pool.map(one, [h.name for h in fleet.hosts]))


def answers(fleet: MachineFleet, host: str) -> bool:
    url = f"http://127.0.0.1:{PORT}/health"
    return fleet.sh(host, f"curl -fsS -o /dev/null --max-time 2 {url}", check=False, timeout=30).returncode == 0


def timed(work: Any) -> float:
    started = time.monotonic()
    work()
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    tarball = build_hello("0.1.0", migrations=2)
    out: dict[str, Any] = {"hosts": args.hosts, "repeats": args.repeats, "machine": machine()}
    started = time.monotonic()
    with MachineFleet(args.hosts, shared_dir=COMMON_ROOT / "{runid}") as fleet, tempfile.TemporaryDirectory() as tmp:
        out["boot_s"] = time.monotonic() - started
        prepare_fleet_files(fleet)
        try:
            data = local_inventory(fleet, port=PORT)
            data["node"] = {"service": "systemd", "stop_timeout": 20}
            data["health"].update({"stable_for": 0, "interval": 0.1})
            Path(tmp, "bench.yml").write_text(yaml.safe_dump(data, sort_keys=False))
            inventory = load_inventory("bench", Path(tmp))
            out["setup_s"] = timed(lambda: setup_api.setup(inventory, "root"))
            report = api.deploy(inventory, inspect_tarball(tarball, "hello")).report
            if not report.ok:
                raise RuntimeError(f"first deploy failed: {report.error}")
            out["first_deploy_s"] = report.duration
            ours: list[float] = []
            theirs: list[float] = []
            for index in range(args.repeats):
                ours.append(timed(lambda: _restart(inventory)))
                theirs.append(timed(lambda: baseline_restart(fleet)))
                print(f"repeat {index + 1}: deployer {ours[-1]:.2f}s, baseline {theirs[-1]:.2f}s", flush=True)
            out["restart"] = {
                "deployer_s": ours,
                "baseline_s": theirs,
                "deployer_median_s": statistics.median(ours),
                "baseline_median_s": statistics.median(theirs),
                "ratio": statistics.median(ours) / statistics.median(theirs),
            }
            host = fleet.hosts[0].name
            began = time.monotonic()
            fleet.reboot(host)
            out["reboot_until_sshd_s"] = time.monotonic() - began
            while not answers(fleet, host):
                time.sleep(0.2)
            out["reboot_until_node_answers_s"] = time.monotonic() - began
        finally:
            remove_fleet_files(fleet)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))
    return 0


def _restart(inventory: Any) -> None:
    report = ops.lifecycle(inventory, "restart").report
    if not report.ok:
        raise RuntimeError(f"deployer restart failed: {report.error}")


if __name__ == "__main__":
    raise SystemExit(main())
