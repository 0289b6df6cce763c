"""End to end: ``--dry-run`` changes nothing on the hosts, and ``--json`` reports say exactly what happened.

Both drive the real CLI against real sshd hosts. The dry-run test compares, on every host, a recursive
listing (type, mode, size, mtime, link target) plus the sha256 of every file under deploy_to (the lock
directory included), the shared "database" directory, and the node's OS pid, before and after.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, cli, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("h1", "h2", "h3")
_names = itertools.count(1)


@pytest.fixture(scope="module")
def tarballs() -> dict[str, Path]:
    return {
        "0.1.0": build_hello("0.1.0", migrations=2),
        "0.2.0": build_hello("0.2.0", migrations=3),
        "unhealthy": build_hello("0.1.0", variant="unhealthy", migrations=2),
    }


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, f"rep{next(_names)}", keep_releases=3)
    yield deployment
    remove_app(deployment)


def snapshot(app: App) -> dict[str, str]:
    """Everything a run could change on each host: files (with checksums), the lock, the node."""
    state = {}
    d = app.deploy_to
    for host in HOSTS:
        listing = app.sh(
            host,
            f"cd {d} && find . -printf '%p %y %m %s %T@ %l\\n' | LC_ALL=C sort && "
            "find . -type f -exec sha256sum {} + | LC_ALL=C sort && "
            f"ls -la {d}/.lock 2>&1 || true",
        )
        pid = app.health(host)
        state[host] = listing + f"\nnode os_pid={pid['os_pid'] if pid else None}\n"
    db = app.db_dir
    state["db"] = "\n".join(sorted(f"{p.relative_to(db)} {p.stat().st_size}" for p in db.rglob("*") if p.is_file()))
    return state


def test_dry_runs_change_nothing(app: App, tarballs: dict[str, Path]) -> None:
    for version in ("0.1.0", "0.2.0"):
        done = api.deploy(app.inventory(), inspect_tarball(tarballs[version], "hello"))
        assert done.report.ok, done.report.error
    before = snapshot(app)
    assert "releases" in before["h1"] and "node os_pid=None" not in before["h1"]

    # A deploy of an artifact no host has (it would upload, extract, migrate and switch).
    deploy = cli(app, "deploy", "--tarball", str(tarballs["unhealthy"]), "--dry-run")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "Plan: deploy in e2e" in deploy.stderr and "nothing was changed on any host" in deploy.stderr
    assert "upload (tarball on stdin), prepare" in deploy.stderr  # the plan; the scripts only with --verbose
    for args in (("rollback",), ("migrate",), ("restart",), ("stop",), ("start",), ("deploy", "--tarball")):
        if args == ("deploy", "--tarball"):
            args = ("deploy", "--tarball", str(tarballs["0.1.0"]), "--strategy", "rolling", "--canary")
        done = cli(app, *args, "--dry-run")
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        assert "nothing was changed" in done.stderr, args
    # --json dry runs say so and change nothing either.
    as_json = cli(app, "deploy", "--tarball", str(tarballs["unhealthy"]), "--dry-run", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["dry_run"] is True

    after = snapshot(app)
    for key in before:
        assert after[key] == before[key], f"{key} changed during dry runs"


def host_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in report["hosts"]}


DEADLINE = 20


def test_json_reports_of_deploy_migrate_rollback(app: App, tarballs: dict[str, Path]) -> None:
    # Short enough that the unhealthy deploy below fails quickly, long enough for a VM to boot (and then stay
    # up for health.stable_for) on 2 cores shared with other BEAMs: 8 s was seen to miss under load.
    app.rewrite(health={**app.data["health"], "deadline": DEADLINE})

    # --- first deploy: from nothing to v1 ----------------------------------------------------------------
    first = cli(app, "deploy", "--tarball", str(tarballs["0.1.0"]), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)  # stdout is only the JSON document
    assert (report["operation"], report["env"], report["version"], report["ok"]) == ("deploy", "e2e", "0.1.0", True)
    assert (report["error"], report["mixed"], report["dry_run"], report["migrated_on"]) == (None, False, False, "h1")
    v1 = report["release"]
    assert v1.endswith("-0.1.0") and report["duration"] > 0
    rows = host_rows(report)
    assert list(rows) == list(HOSTS)
    for row in rows.values():
        assert (row["before"], row["target"], row["after"]) == (None, v1, v1)
        assert (row["outcome"], row["healthy"], row["error"], row["step"]) == ("success", True, None, None)
        assert {"lock+probe", "upload", "prepare", "activate"} <= set(row["timings"])
        assert all(isinstance(t, float) and t >= 0 for t in row["timings"].values())
        assert row["uploaded_bytes"] == tarballs["0.1.0"].stat().st_size and row["sessions"] >= 4
    assert "migrate" in rows["h1"]["timings"] and "migrate" not in rows["h2"]["timings"]
    # The secret is nowhere in the report.
    secret = (Path(app.data["env"]["secrets_file"]).read_text().split("=", 1)[1]).strip()
    assert secret not in first.stdout + first.stderr

    # --- second deploy: v1 -> v2 ------------------------------------------------------------------------
    second = json.loads(cli(app, "deploy", "--tarball", str(tarballs["0.2.0"]), "--json").stdout)
    v2 = second["release"]
    assert second["ok"] is True, json.dumps(second, indent=1)
    for row in host_rows(second).values():
        assert (row["before"], row["target"], row["after"], row["outcome"]) == (v1, v2, v2, "success")

    # --- migrate: once, on the migrator, with the current release ---------------------------------------
    migrated = cli(app, "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    report = json.loads(migrated.stdout)
    assert (report["operation"], report["release"], report["version"], report["migrated_on"]) == (
        "migrate",
        v2,
        "0.2.0",
        "h1",
    )
    (row,) = report["hosts"]
    assert (row["host"], row["target"], row["after"], row["outcome"], row["error"]) == ("h1", v2, v2, "success", None)
    assert "migrate" in row["timings"]

    # --- rollback: v2 -> v1 -----------------------------------------------------------------------------
    back = cli(app, "rollback", "--json")
    assert back.returncode == 0, back.stderr
    report = json.loads(back.stdout)
    assert (report["operation"], report["release"], report["ok"]) == ("rollback", v1, True)
    for row in host_rows(report).values():
        assert (row["before"], row["target"], row["after"], row["outcome"], row["healthy"]) == (
            v2,
            v1,
            v1,
            "success",
            True,
        )
        assert "activate" in row["timings"] and row["uploaded_bytes"] == 0

    # --- an unhealthy release: every host reverted to v1, with the reason ------------------------------
    bad = cli(app, "deploy", "--tarball", str(tarballs["unhealthy"]), "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    v3 = report["release"]
    for row in host_rows(report).values():
        assert (row["before"], row["target"], row["after"], row["outcome"]) == (v1, v3, v1, "reverted")
        assert row["step"] == "health" and f"did not become healthy within {DEADLINE}s" in row["error"]
        assert row["healthy"] is True  # back on v1, which is healthy
    assert app.versions() == {h: "0.1.0" for h in HOSTS}
