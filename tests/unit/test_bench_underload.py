"""The shared parts of the benchmarks under load: rows, results file, README table between markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.underload import load_columns, publish
from deployer.core.outcome import HostResult, Report
from deployer.engine.run import Result
from tests.harness.loadbalancer import LoadResult

BEFORE = LoadResult(requests=200, p50_ms=1.5, p99_ms=9.0, seconds=8.0)
DURING = LoadResult(requests=900, socket_errors=2, non_2xx=3, p50_ms=2.0, p99_ms=120.0, seconds=30.0)


def _result(*outcomes: str, error: str | None = None) -> Result:
    hosts = [
        HostResult(host=f"h{i}", outcome=o, error=None if o == "success" else "boom") for i, o in enumerate(outcomes, 1)
    ]  # type: ignore[arg-type]
    return Result(Report(operation="deploy", env="bench", release=None, version=None, hosts=hosts, error=error))


def test_a_row_counts_failed_requests_and_names_failed_hosts_only() -> None:
    row = load_columns(BEFORE, DURING, 31.26, _result("success", "reverted"))
    assert row["failed"] == 5 and row["requests"] == 900 and row["rate_rps"] == 30.0
    assert row["wall_s"] == 31.3 and (row["p99_before_ms"], row["p99_during_ms"]) == (9.0, 120.0)
    assert row["ok"] is False and row["error"] == "h2: reverted boom"
    assert "error" not in load_columns(BEFORE, DURING, 1.0, _result("success"))


def _table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    return f"{meta['hosts']} hosts: " + ", ".join(str(r["failed"]) for r in rows)


def test_publish_writes_the_results_and_replaces_only_the_marked_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    markers = ("<!-- x:start -->", "<!-- x:end -->")
    rows = [{"failed": 0}, {"failed": 4}]
    publish("x", {"hosts": 3}, rows, _table, markers=markers, heading="X", readme=readme, results=tmp_path / "r")
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == {"meta": {"hosts": 3}, "rows": rows}
    first = readme.read_text()
    assert first == "# Benchmarks\n\nintro\n\n## X\n\n<!-- x:start -->\n3 hosts: 0, 4\n<!-- x:end -->\n"
    readme.write_text(first + "\nafter\n")
    publish(
        "x", {"hosts": 5}, [{"failed": 1}], _table, markers=markers, heading="X", readme=readme, results=tmp_path / "r"
    )
    assert readme.read_text() == first.replace("3 hosts: 0, 4", "5 hosts: 1") + "\nafter\n"
    publish("x", {"hosts": 9}, [], _table, markers=markers, heading="X", readme=None, results=tmp_path / "r")
    assert "9 hosts" not in readme.read_text()
