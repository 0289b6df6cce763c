"""What the benchmarks that run operations under steady HTTP load share (``traffic``, ``hot_upgrade``).

One measurement: quiet hosts, load alone for a baseline, then load while the operation runs, and the
failed requests and latencies of both. The results go to ``benchmarks/results/<name>.json`` and, as a
table, between two markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from deployer.engine.run import Result
from tests.harness.fleet import Fleet
from tests.harness.loadbalancer import Balancer, Load, LoadResult

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

T = TypeVar("T")


def balancer_section(fleet: Fleet, balancer: Balancer) -> dict[str, Any]:
    """The inventory's ``load_balancer:``; the balancer host is not an app host and gets its own address."""
    lb_host = fleet.host(balancer.host)
    machine = {"name": lb_host.name, "address": lb_host.address, "port": lb_host.port}
    return {**balancer.inventory_section(drain_timeout=10), "hosts": [machine]}


def under_load(
    balancer: Balancer, operation: Callable[[], T], *, connections: int, delay_ms: int, settle: float
) -> tuple[T, float, LoadResult, LoadResult]:
    """Run ``operation`` under steady load through ``balancer``: its result, wall time, and the load
    before (alone, 8 s) and during."""
    time.sleep(settle)  # HAProxy's checks see every server UP again, the hosts are quiet
    before = Load(balancer.url, connections=connections, delay_ms=delay_ms).measure(8)
    load = Load(balancer.url, connections=connections, delay_ms=delay_ms, limit=900).start()
    started = time.monotonic()
    result = operation()
    wall = time.monotonic() - started
    time.sleep(1.0)  # requests in flight when the operation returned
    return result, wall, before, load.stop()


def load_columns(before: LoadResult, during: LoadResult, wall: float, result: Result) -> dict[str, Any]:
    """The columns every row has: wall time, requests, failures, latencies before and during."""
    report = result.report
    row: dict[str, Any] = {
        "ok": report.ok,
        "wall_s": round(wall, 1),
        "requests": during.requests,
        "failed": during.failed,
        "non_2xx": during.non_2xx,
        "socket_errors": during.socket_errors,
        "rate_rps": round(during.rate, 1),
        "p50_before_ms": before.p50_ms,
        "p99_before_ms": before.p99_ms,
        "p50_during_ms": during.p50_ms,
        "p99_during_ms": during.p99_ms,
    }
    if not report.ok:
        row["error"] = report.error or "; ".join(
            f"{h.host}: {h.outcome} {h.error}" for h in report.hosts if not h.succeeded
        )
    return row


def publish(
    name: str,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    table: Callable[[list[dict[str, Any]], dict[str, Any]], str],
    *,
    markers: tuple[str, str],
    heading: str,
    readme: Path | None = README,
    results: Path = HERE / "results",
) -> None:
    """Write ``<results>/<name>.json``, print the table, and put it between ``markers`` in ``readme``
    (appended under ``heading`` the first time); ``readme`` None leaves the README alone."""
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    block = table(rows, meta)
    print(block)
    if readme is None:
        return
    start, end = markers
    text = readme.read_text()
    if start not in text:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def arguments(description: str | None, default_hosts: int, argv: list[str] | None) -> argparse.Namespace:
    """The command line both benchmarks take."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--hosts", type=int, default=default_hosts, help=f"app hosts behind the balancer (default {default_hosts})"
    )
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (default 4)")
    parser.add_argument("--delay", type=int, default=40, help="ms each connection waits between requests")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each measurement")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    return parser.parse_args(argv)
