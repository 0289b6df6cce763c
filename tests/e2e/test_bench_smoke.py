"""The benchmark machinery (benchmarks/) on one host, one repeat: structure and counts, never times."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Scenario, run_scenario
from benchmarks.run import evaluate, table
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

# lock+probe, upload, prepare, activate, unlock; the migrator also runs the migration.
SESSIONS = 5


def test_benchmark_scenario_on_one_host(make_fleet: Callable[..., Fleet], tmp_path: Path) -> None:
    fleet = make_fleet(1)
    result = run_scenario(fleet, Scenario("smoke", 1, repeats=1), build_hello("0.1.0"), tmp_path, settle=False)

    first = result["first_deploy"]
    size = first["artifact_bytes"]
    assert first["deployer"]["bytes_uploaded"] == size  # the whole tarball, once
    assert first["baseline"]["bytes_uploaded"] == size
    assert first["deployer"]["migrated_on"] == "h1"
    assert first["deployer"]["sessions"] == {"h1": SESSIONS + 1}

    runs = result["runs"]
    assert len(runs["deployer"]) == len(runs["baseline"]) == 1
    upgrade = runs["deployer"][0]
    assert upgrade["bytes_uploaded"] == result["artifact_bytes"]  # a new variant: uploaded again
    assert upgrade["sessions"]["h1"] <= SESSIONS + 1
    assert set(upgrade["timings"]["h1"]) >= {"lock+probe", "upload", "prepare", "migrate", "activate", "unlock"}
    assert upgrade["peak_rss_kb"] > upgrade["rss_before_deploy_kb"] > 0
    assert upgrade["cpu"]["total"] > 0
    # The hosts' CPU by kind: the new node booted (BEAM), the upload and scripts ran (sshd, shells, tar).
    kinds = upgrade["host_cpu"]["by_kind"]
    assert kinds["beam"] > 0 and kinds["sshd"] > 0 and kinds["tar"] > 0
    assert upgrade["host_cpu"]["exited_processes"]["shell"] > 0
    assert upgrade["nodes_restarted"] == 1 and runs["baseline"][0]["host_cpu"]["by_kind"]["tar"] > 0

    again = result["redeploy"]
    assert again["bytes_uploaded"] == 0  # every host has that artifact
    assert again["sessions"]["h1"] <= SESSIONS  # no upload session
    assert "upload" not in again["timings"]["h1"]
    assert again["outcomes"] == {"unchanged": 1} and again["nodes_restarted"] == 0  # the running release

    summary = result["upgrade"]
    for key in ("deployer_seconds", "baseline_seconds", "ratio", "ratio_whole", "upload_ratio", "peak_rss_mb"):
        assert summary[key] > 0, key
    assert summary["bytes_uploaded_per_host"] == result["artifact_bytes"]

    checks = {c["target"]: c for c in evaluate([result])}
    assert checks["re-deploy: bytes uploaded"]["met"]
    data = {
        "finished": "now",
        "duration_s": 1.0,
        "machine": {
            k: "x" for k in ("cores", "cpu", "ram_gib", "kernel", "os", "openssh", "python", "paramiko", "cryptography")
        },
        "config": {"repeats": 1},
        "scenarios": [result],
        "targets": list(checks.values()),
    }
    assert "| smoke |" in table(data)
