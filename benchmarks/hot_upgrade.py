"""A hot code upgrade against a restart deploy of the same change, under steady HTTP load (issue 19).

    python -m benchmarks.hot_upgrade                 # 3 app hosts + 1 HAProxy host, ~5 minutes on 2 cores
    python -m benchmarks.hot_upgrade --hosts 5 --no-readme

One fleet of ``hosts + 1`` namespace hosts: the hot-upgrade example (``examples/hello_relup``) on the first
``hosts``, HAProxy on the last (health checks every 1 s, fall 2, rise 2), ``wrk`` driving steady load
through it (``tests.harness.loadbalancer``). The change is always 1.0.0 -> 1.1.0 (a new state format for
the counter server): the tarball with its relup, the same file for every operation. In one run, on the
same hosts, each measured operation starts from 1.0.0 on every host (put back, unmeasured, by a rollback):

* ``hot upgrade``: ``deployer upgrade`` (rolling, one host at a time);
* ``restart deploy``: ``deployer deploy`` of the same tarball (rolling, one host at a time), the balancer
  not told (HAProxy's health checks notice the restarting node);
* ``restart deploy, drained``: the same with ``load_balancer:`` configured (drained before the stop, made
  ready once healthy).

Reported: the operation's wall time, requests and failed requests (non-2xx + socket errors) during it, and
p50/p99 latency. The first operation uploads the tarball; the others find it on the hosts (upload skipped),
which favours the restart deploys slightly. Results: ``benchmarks/results/hot_upgrade.json`` and a table in
``benchmarks/README.md`` between the hot-upgrade markers. It asserts nothing about time.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.underload import README, arguments, balancer_section, load_columns, publish, under_load
from deployer import api
from deployer.core.artifact import Artifact, inspect_tarball
from deployer.core.inventory import load_inventory
from deployer.engine.run import Result
from deployer.operations import upgrade as hot
from tests.harness.examples import HELLO_RELUP_PROJECT_DIR, build_hello_relup
from tests.harness.fleet import Fleet
from tests.harness.fleet_tasks import common_dir, local_inventory, prepare_fleet_files
from tests.harness.loadbalancer import Balancer, missing_tools

HERE = Path(__file__).resolve().parent
START_MARK = "<!-- hot-upgrade:start -->"
END_MARK = "<!-- hot-upgrade:end -->"
PORT = 4500
APP = "hello_relup"


def _inventory(fleet: Fleet, app_hosts: int, directory: Path, balancer: Balancer | None) -> Path:
    data: dict[str, Any] = local_inventory(fleet, project=str(HELLO_RELUP_PROJECT_DIR), port=PORT)
    data["hosts"] = data["hosts"][:app_hosts]
    data["app"] = {"name": APP, "flavour": "rebar3"}
    data["build"] = {"path": str(HELLO_RELUP_PROJECT_DIR), "command": "rebar3 as prod tar"}
    data["deploy_to"] = f"{fleet.deploy_root}/hotbench"
    data["node"] = {"name": "hotbench@127.0.0.1", "stop_timeout": 20}
    data["env"]["clear"]["HELLO_DATA_DIR"] = str(common_dir(fleet.runid) / "hotbench")
    data["health"] = {"http": f"http://127.0.0.1:{PORT}/health", "deadline": 60}
    data.pop("migrate", None)  # the example has no database
    data["strategy"] = {"kind": "rolling", "batch_size": 1}
    if balancer is not None:
        data["load_balancer"] = balancer_section(fleet, balancer)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['hosts']} app hosts behind HAProxy (health checks every 1 s, fall 2, rise 2), `wrk` "
        f"{meta['connections']} connections x 1 request per {meta['delay_ms']} ms; change 1.0.0 -> 1.1.0 of "
        f"examples/hello_relup, rolling one host at a time; {meta['when']}. Failed = non-2xx + socket errors.",
        "",
        "| operation | wall (s) | requests | failed | non-2xx | socket err | p50 / p99 before (ms) "
        "| p50 / p99 during (ms) | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['operation']} | {r['wall_s']} | {r['requests']} | **{r['failed']}** | {r['non_2xx']} | "
            f"{r['socket_errors']} | {r['p50_before_ms']:.1f} / {r['p99_before_ms']:.1f} | "
            f"{r['p50_during_ms']:.1f} / {r['p99_during_ms']:.1f} | {'yes' if r['ok'] else 'NO'} |"
        )
    return "\n".join(lines)


def _versions(fleet: Fleet, hosts: int) -> list[str]:
    out = []
    for host in fleet.hosts[:hosts]:
        answer = fleet.exec(host.name, f"curl -fsS --max-time 5 http://127.0.0.1:{PORT}/health", check=False)
        out.append(json.loads(answer.stdout)["version"] if answer.returncode == 0 else "down")
    return out


def run(hosts: int, connections: int, delay_ms: int, settle: float, readme: bool) -> list[dict[str, Any]]:
    missing = missing_tools()
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (bash scripts/install-lb-deps.sh)")
    v1: Artifact = inspect_tarball(build_hello_relup("1.0.0"), APP)
    v2: Artifact = inspect_tarball(build_hello_relup("1.1.0", relup_from="1.0.0"), APP)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="deployer-hotbench-"))
    with Fleet(hosts + 1) as fleet:
        prepare_fleet_files(fleet)
        data_dir = common_dir(fleet.runid) / "hotbench"
        data_dir.mkdir(parents=True, exist_ok=True)
        lb_host = fleet.hosts[-1].name
        servers = {h.name: f"{h.address}:{PORT}" for h in fleet.hosts[:hosts]}
        with Balancer(fleet, lb_host, servers, port=8080) as balancer:
            plain = load_inventory("bench", _inventory(fleet, hosts, work / "plain", None))
            drained = load_inventory("bench", _inventory(fleet, hosts, work / "drain", balancer))
            first = api.deploy(plain, v1)
            if not first.report.ok:
                sys.exit(f"the first deploy failed: {first.report.error}")
            operations: list[tuple[str, Callable[[], Result]]] = [
                ("hot upgrade", lambda: hot.upgrade(plain, v2)),
                ("restart deploy", lambda: api.deploy(plain, v2)),
                ("restart deploy, drained", lambda: api.deploy(drained, v2)),
            ]
            for index, (name, operation) in enumerate(operations):
                if index:
                    # Back to 1.0.0 everywhere (in place after the hot upgrade, by restart otherwise).
                    back = api.rollback(drained, to="1.0.0")
                    if not back.report.ok or set(_versions(fleet, hosts)) != {"1.0.0"}:
                        sys.exit(f"could not put the hosts back on 1.0.0: {back.report.error}")
                result, wall, before, during = under_load(
                    balancer, operation, connections=connections, delay_ms=delay_ms, settle=settle
                )
                row = {"operation": name, **load_columns(before, during, wall, result)}
                row["versions_after"] = _versions(fleet, hosts)
                rows.append(row)
                print(json.dumps(row), flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    meta = {
        "hosts": hosts,
        "connections": connections,
        "delay_ms": delay_ms,
        "when": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    publish(
        "hot_upgrade",
        meta,
        rows,
        table,
        markers=(START_MARK, END_MARK),
        heading="Hot upgrade against restart deploys (`python -m benchmarks.hot_upgrade`)",
        readme=README if readme else None,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, 3, argv)
    run(args.hosts, args.connections, args.delay, args.settle, not args.no_readme)


if __name__ == "__main__":
    main()
