"""Real traffic through HAProxy during rolling deploys, restarts and rollbacks (issue 16).

    python -m benchmarks.traffic                 # 5 app hosts + 1 balancer host, ~10 minutes on 2 cores
    python -m benchmarks.traffic --hosts 5 --no-readme

One fleet of ``hosts + 1`` namespace hosts: the example (hello) on the first ``hosts``, HAProxy on the last
(health checks on, runtime API on its admin socket, reached by deployer over SSH). ``wrk`` drives steady
load (``connections`` connections, each waiting ``delay`` ms between requests) from the root namespace
to the balancer's address only, for a bounded time. For each setup, in the same run, on the same fleet:

* ``none``: no balancer integration (what deployer did before): rolling, one host at a time;
* ``drain``: ``load_balancer:`` configured: each host drained before its node stops, ready once healthy;
* ``drain-25%``: the same with ``batch_size: 25%``.

each of: a rolling deploy (0.1.0 -> 0.2.0), a restart, a rollback (back to 0.1.0). Reported: requests,
failed requests (non-2xx + socket errors), p50/p99 latency before (load alone, no operation) and during,
and the operation's wall time. Results: ``benchmarks/results/traffic.json`` and a table in
``benchmarks/README.md`` between the traffic markers. It asserts nothing about time.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from benchmarks.underload import README, arguments, balancer_section, load_columns, publish, under_load
from deployer import api
from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.inventory import Inventory, load_inventory
from deployer.engine.run import Result
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet
from tests.harness.fleet_tasks import common_dir, local_inventory, prepare_fleet_files
from tests.harness.loadbalancer import Balancer, missing_tools

HERE = Path(__file__).resolve().parent
START_MARK = "<!-- traffic:start -->"
END_MARK = "<!-- traffic:end -->"
PORT = 4400
SETUPS = ("none", "drain", "drain-25%")
OPERATIONS = ("deploy", "restart", "rollback")


def _inventory(fleet: Fleet, app_hosts: int, directory: Path, setup: str, balancer: Balancer) -> Path:
    data: dict[str, Any] = local_inventory(fleet, project=str(HERE.parent / "examples" / "hello"), port=PORT)
    data["hosts"] = data["hosts"][:app_hosts]
    data["deploy_to"] = f"{fleet.deploy_root}/traffic"
    data["node"] = {"name": "traffic@127.0.0.1", "stop_timeout": 20}
    data["env"]["clear"]["HELLO_DATA_DIR"] = str(common_dir(fleet.runid) / "traffic")
    data["health"]["deadline"] = 60
    data["strategy"] = {"kind": "rolling", "batch_size": "25%" if setup == "drain-25%" else 1}
    if setup != "none":
        data["load_balancer"] = balancer_section(fleet, balancer)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "traffic.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def _operation(operation: str, inventory: Inventory, upgrade_to: Artifact) -> Result:
    if operation == "deploy":
        return api.deploy(inventory, upgrade_to)
    if operation == "restart":
        return api.restart(inventory)
    return api.rollback(inventory)


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['hosts']} app hosts behind HAProxy {meta['haproxy']} (health checks every 1 s, fall 2, rise 2), "
        f"`wrk` {meta['connections']} connections x 1 request per {meta['delay_ms']} ms + latency; "
        f"{meta['when']}. Failed = non-2xx + socket errors; latency in ms.",
        "",
        "| setup | operation | wall (s) | requests | failed | non-2xx | socket err | p50 before | p99 before "
        "| p50 during | p99 during | ok |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['operation']} | {r['wall_s']} | {r['requests']} | **{r['failed']}** | "
            f"{r['non_2xx']} | {r['socket_errors']} | {r['p50_before_ms']:.1f} | {r['p99_before_ms']:.1f} | "
            f"{r['p50_during_ms']:.1f} | {r['p99_during_ms']:.1f} | {'yes' if r['ok'] else 'NO'} |"
        )
    return "\n".join(lines)


def run(hosts: int, connections: int, delay_ms: int, settle: float, readme: bool) -> list[dict[str, Any]]:
    missing = missing_tools()
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (bash scripts/install-lb-deps.sh)")
    releases = {v: inspect_tarball(build_hello(v), "hello") for v in ("0.1.0", "0.2.0")}
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="deployer-traffic-"))
    with Fleet(hosts + 1) as fleet:
        prepare_fleet_files(fleet)
        lb_host = fleet.hosts[-1].name
        servers = {h.name: f"{h.address}:{PORT}" for h in fleet.hosts[:hosts]}
        with Balancer(fleet, lb_host, servers, port=8080) as balancer:
            directory = _inventory(fleet, hosts, work, "none", balancer)
            first = api.deploy(load_inventory("traffic", directory), releases["0.1.0"])
            if not first.report.ok:
                sys.exit(f"the first deploy failed: {first.report.error}")
            haproxy = balancer.command("show info").split("Version: ", 1)[-1].split("\n", 1)[0]
            for setup in SETUPS:
                directory = _inventory(fleet, hosts, work, setup, balancer)
                for operation in OPERATIONS:
                    run_it = partial(_operation, operation, load_inventory("traffic", directory), releases["0.2.0"])
                    result, wall, before, during = under_load(
                        balancer, run_it, connections=connections, delay_ms=delay_ms, settle=settle
                    )
                    row = {"setup": setup, "operation": operation, **load_columns(before, during, wall, result)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    meta = {
        "hosts": hosts,
        "haproxy": haproxy,
        "connections": connections,
        "delay_ms": delay_ms,
        "when": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    publish(
        "traffic",
        meta,
        rows,
        table,
        markers=(START_MARK, END_MARK),
        heading="Real traffic through a load balancer (`python -m benchmarks.traffic`)",
        readme=README if readme else None,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, 5, argv)
    run(args.hosts, args.connections, args.delay, args.settle, not args.no_readme)


if __name__ == "__main__":
    main()
