"""End to end on a real PostgreSQL: the example app keeps its data and migrations in a database host.

The fleet's three hosts run ``examples/hello_pg`` (Debian's pure-Erlang driver ``p1_pgsql`` inside the
release) against PostgreSQL 15 on the fleet's database host (:mod:`tests.harness.database`), with
``DATABASE_URL`` delivered as a secret. Each test gets its own database on that server, so "each
migration ran exactly once" is counted in the database itself: ``schema_migrations`` and the
``migration_effects`` rows every migration writes inside its own transaction.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.core.inventory import Inventory
from deployer.core.outcome import Report
from deployer.operations import env as env_api
from deployer.operations import node as node_api
from deployer.operations import release as api
from tests.harness.database import Database, DatabaseUnavailable, pg_bindir
from tests.harness.examples import build_hello_pg
from tests.harness.fleet import Fleet

from .support import App, Recorder, explain, make_app, remove_app

pytestmark = pytest.mark.fleet

M1, M2, M3 = 20240101000001, 20240101000002, 20240101000003
_names = itertools.count(1)

# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builds() -> dict[str, Path]:
    return {
        "v1": build_hello_pg("0.1.0", migrations=2),
        "v2": build_hello_pg("0.2.0", migrations=3),
        "bad": build_hello_pg("0.2.0", "bad_migration", migrations=3),
    }


@pytest.fixture(scope="module")
def database(session_fleet: Fleet) -> Iterator[Database]:
    """One PostgreSQL server on the shared fleet's database host; each test makes its own database."""
    try:
        pg_bindir()
    except DatabaseUnavailable as exc:
        pytest.skip(str(exc))
    with Database(session_fleet) as db:
        yield db


@dataclass
class PgApp:
    """One deployment of hello_pg with its own database on the shared server."""

    app: App
    db: Database
    dbname: str
    url: str

    def inventory(self, url: str | None = None) -> Inventory:
        return self.app.inventory(DATABASE_URL=url or self.url)

    def deploy(self, tarball: Path, url: str | None = None, **options: Any) -> Report:
        artifact = inspect_tarball(tarball, "hello_pg")
        return api.deploy(self.inventory(url), artifact, api.Options(**options)).report

    def sql(self, query: str) -> list[tuple[str | None, ...]]:
        return self.db.query(query, database=self.dbname)

    def migrations(self) -> list[int]:
        """Versions in schema_migrations (none if the table does not exist)."""
        if not self.db.query("SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'", database=self.dbname):
            return []
        return [int(str(v)) for (v,) in self.sql("SELECT version FROM schema_migrations ORDER BY version")]

    def effects(self) -> dict[int, int]:
        """How many times each migration's body ran and committed (rows in migration_effects)."""
        if not self.sql("SELECT 1 FROM pg_tables WHERE tablename = 'migration_effects'"):
            return {}
        rows = self.sql("SELECT version, count(*) FROM migration_effects GROUP BY version ORDER BY version")
        return {int(str(v)): int(str(n)) for v, n in rows}

    def columns(self, table: str) -> list[str]:
        rows = self.sql(
            f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY ordinal_position"
        )
        return [str(c) for (c,) in rows]

    def http(self, host: str, method: str, path: str, body: str | None = None) -> tuple[int, dict[str, Any]]:
        """An HTTP request to the app from inside ``host``: (status, JSON body)."""
        data = f" --data-binary {json.dumps(body)}" if body is not None else ""
        out = self.app.sh(
            host,
            f"curl -sS --max-time 10 -X {method}{data} -w '\\n%{{http_code}}' http://127.0.0.1:{self.app.port}{path}",
            check=False,
        )
        text, _, code = out.rstrip("\n").rpartition("\n")
        return int(code or 0), (json.loads(text) if text.strip().startswith("{") else {})

    def health(self, host: str) -> tuple[int, dict[str, Any]]:
        return self.http(host, "GET", "/health")

    def currents(self) -> dict[str, str]:
        return {h.name: self.app.current(h.name) for h in self.app.fleet.hosts}


def new_pg(fleet: Fleet, database: Database, directory: Path, *, health_deadline: float = 40) -> PgApp:
    """A fresh deployment of hello_pg on ``fleet`` with a database of its own on ``database``."""
    name = f"pg{next(_names)}"
    dbname = f"{name}_{fleet.runid}"
    url = database.create_database(dbname)
    app = make_app(fleet, directory, name, keep_releases=3)
    app.data["app"] = {"name": "hello_pg", "flavour": "mix"}
    app.data["build"] = {
        "path": str(Path(__file__).resolve().parents[2] / "examples" / "hello_pg"),
        "command": "MIX_ENV=prod mix release --overwrite",
        "tarball": "_build/*/prod/hello_pg-*.tar.gz",
    }
    app.data["env"] = {
        # HELLO_DATA_DIR only for support.remove_app's clean-up; hello_pg keeps nothing on disk.
        "clear": {"PORT": str(app.port), "HELLO_DATA_DIR": app.data["env"]["clear"]["HELLO_DATA_DIR"]},
        "secret": ["DATABASE_URL"],
    }
    app.data["migrate"] = {"eval": "HelloPg.Release.migrate()"}
    app.data["health"] = {"http": f"http://127.0.0.1:{app.port}/health", "deadline": health_deadline}
    app.rewrite()
    return PgApp(app=app, db=database, dbname=dbname, url=url)


def dispose(pg: PgApp) -> None:
    """Remove the deployment; leave the shared server as the next test expects it: up and reachable."""
    pg.db.restore_link()
    if not pg.db.running:
        pg.db.start()
    remove_app(pg.app)


@pytest.fixture
def pg(session_fleet: Fleet, database: Database, tmp_path: Path) -> Iterator[PgApp]:
    deployment = new_pg(session_fleet, database, tmp_path)
    try:
        yield deployment
    finally:
        dispose(deployment)


def released(pg: PgApp, report: Report) -> str:
    assert report.ok, explain(report)
    assert report.release is not None
    return report.release


def all_text(report: Report) -> str:
    """Everything the report tells the operator: error, per-host errors, warnings."""
    return json.dumps(report.to_json())


def history_of(pg: PgApp) -> dict[str, list[tuple[str, str, str]]]:
    """``invoke history`` as data: (release, event, outcome) per host, oldest first."""
    rows = api.status(pg.inventory())
    result = {}
    for row in rows:
        assert row.reachable and row.facts is not None, row.error
        result[row.host] = [(r.release, r.event, r.outcome) for r in row.facts.history.revisions]
    return result


def status_of(pg: PgApp) -> dict[str, Any]:
    """``invoke status --json`` as data."""
    return node_api.status_document(node_api.status(pg.inventory()))


# --- the database host itself -------------------------------------------------------------------------------


def test_database_host_is_reachable_from_every_host_with_scram_only(pg: PgApp, session_fleet: Fleet) -> None:
    db = pg.db
    assert db.scalar("SHOW password_encryption") == "scram-sha-256"
    stored = db.scalar(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{db.user}'", database="postgres")
    assert stored is not None and stored.startswith("SCRAM-SHA-256$")
    for host in session_fleet.hosts:
        # Without a password (-w: never prompt) the server refuses: no trust rule lets the fleet in.
        out = session_fleet.exec(
            host, f"psql -X -w -At -h {db.address} -U {db.user} -d {pg.dbname} -c 'SELECT 1'", check=False
        )
        assert out.returncode != 0 and "no password supplied" in out.stderr, out.stderr
    ok = session_fleet.exec("h2", f"psql -X -At '{pg.url}' -c 'SELECT inet_client_addr()'", check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == session_fleet.host("h2").address
    wrong = session_fleet.exec(
        "h2", f"psql -X -At '{db.url_with(password='wrong', name=pg.dbname)}' -c 'SELECT 1'", check=False
    )
    assert wrong.returncode != 0 and 'password authentication failed for user "app"' in wrong.stderr
    db.stop()
    try:
        down = session_fleet.exec("h3", f"psql -X -At '{pg.url}' -c 'SELECT 1'", check=False)
        assert down.returncode != 0 and "Connection refused" in down.stderr, down.stderr
    finally:
        db.start()
    again = session_fleet.exec("h3", f"psql -X -At '{pg.url}' -c 'SELECT 1'", check=False)
    assert again.returncode == 0 and again.stdout.strip() == "1", again.stderr
    db.cut_link()
    try:
        cut = session_fleet.exec("h1", f"PGCONNECT_TIMEOUT=2 psql -X -At '{pg.url}' -c 'SELECT 1'", check=False)
        assert cut.returncode != 0 and "timeout expired" in cut.stderr, cut.stderr
    finally:
        db.restore_link()
    back = session_fleet.exec("h1", f"psql -X -At '{pg.url}' -c 'SELECT 1'", check=False)
    assert back.returncode == 0 and back.stdout.strip() == "1", back.stderr


# --- the deploy cycle on a real database ----------------------------------------------------------------------


def test_deploy_upgrade_and_redeploy_run_each_migration_exactly_once(pg: PgApp, builds: dict[str, Path]) -> None:
    hosts = [h.name for h in pg.app.fleet.hosts]

    # --- first deploy: migrations 1 and 2 ran once in total, every host serves 0.1.0 from the database --------
    v1 = released(pg, pg.deploy(builds["v1"]))
    assert pg.migrations() == [M1, M2]
    assert pg.effects() == {M1: 1, M2: 1}
    assert pg.sql("SELECT version, app_version FROM migration_effects ORDER BY version") == [
        (str(M1), "0.1.0"),
        (str(M2), "0.1.0"),
    ]
    for host in hosts:
        assert pg.app.current(host) == f"releases/{v1}"
        code, health = pg.health(host)
        assert code == 200, health
        assert health["version"] == "0.1.0" and health["database"] == "ok"
        assert health["migrations"] == [M1, M2]
    # The release carries the driver; the secret reached the node, not the release directory.
    driver = pg.app.sh("h1", f"ls -d {pg.app.deploy_to}/current/lib/p1_pgsql-*").strip()
    assert driver, "the p1_pgsql driver is not in the deployed release"
    leaked = pg.app.sh("h1", f"grep -rlF {pg.db.password} {pg.app.deploy_to}/releases || true").strip()
    assert leaked == "", f"the database password is in release files: {leaked}"

    # --- data written through one host is read through another ---------------------------------------------------
    code, body = pg.http("h2", "PUT", "/items/greeting", "written by 0.1.0")
    assert code == 200, body
    assert pg.http("h3", "GET", "/items/greeting") == (
        200,
        {"key": "greeting", "value": "written by 0.1.0", "written_by": "0.1.0"},
    )

    # --- upgrade: only migration 3 runs, once; the data survives -------------------------------------------------
    upgrade = pg.deploy(builds["v2"])
    v2 = released(pg, upgrade)
    assert upgrade.migrated_on == "h1"
    assert pg.migrations() == [M1, M2, M3]
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}
    assert pg.sql(f"SELECT app_version FROM migration_effects WHERE version = {M3}") == [("0.2.0",)]
    assert "note" in pg.columns("items")
    for host in hosts:
        assert pg.app.current(host) == f"releases/{v2}"
        code, health = pg.health(host)
        assert code == 200 and health["version"] == "0.2.0" and health["migrations"] == [M1, M2, M3], health
    assert pg.http("h1", "GET", "/items/greeting")[1]["value"] == "written by 0.1.0"

    # --- deploying the same release again and `migrate` alone apply nothing ----------------------------------------
    released(pg, pg.deploy(builds["v2"]))
    migrated = api.migrate(pg.inventory()).report
    assert migrated.ok, explain(migrated)
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}
    assert len(pg.migrations()) == 3

    # --- rollback: 0.1.0 runs again on the migrated schema, against the same data ------------------------------------
    # (The redeploy made a new release of 0.2.0: roll back explicitly to the 0.1.0 one.)
    back = api.rollback(pg.inventory(), to=v1).report
    assert back.ok, explain(back)
    for host in hosts:
        assert pg.app.current(host) == f"releases/{v1}"
        code, health = pg.health(host)
        assert code == 200 and health["version"] == "0.1.0", health
    assert pg.http("h2", "GET", "/items/greeting")[1]["value"] == "written by 0.1.0"
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}

    status = status_of(pg)
    assert status["mixed"] is False and status["healthy"] is True
    assert {h["version"] for h in status["hosts"]} == {"0.1.0"}


def test_a_rotated_password_reaches_the_nodes_by_env_push_and_rollback_keeps_it(
    pg: PgApp, builds: dict[str, Path]
) -> None:
    """Issue 15: the environment was frozen per release, so a rollback restored the old password and failed,
    and the old values stayed in old env files. Now it lives with the environment."""
    hosts = [h.name for h in pg.app.fleet.hosts]
    v1 = released(pg, pg.deploy(builds["v1"]))
    released(pg, pg.deploy(builds["v2"]))
    old_password = pg.db.password
    new_password = pg.db.set_password()
    try:
        rotated = pg.db.url_with(name=pg.dbname)
        # The nodes still hold the old password: each unit of work opens a connection, so they fail now.
        assert pg.health("h1")[0] == 503

        # A plain restart runs with the file as it is: still the old password (no push, no new values).
        restarted = node_api.lifecycle(pg.inventory(), "restart", api.Options(hosts=["h3"]))
        assert not restarted.report.ok

        pushed = env_api.push(pg.inventory(url=rotated), api.Options(strategy={"kind": "rolling", "batch_size": 1}))
        assert pushed.report.ok, explain(pushed.report)
        assert pushed.report.operation == "env push"
        assert new_password not in all_text(pushed.report)
        for host in hosts:
            code, health = pg.health(host)
            assert code == 200 and health["version"] == "0.2.0" and health["database"] == "ok", (host, health)
            # No file on the host keeps the old password (the per-release env files are gone).
            found = pg.app.sh(host, f"grep -rlF -e {old_password} {pg.app.deploy_to} || true").strip()
            assert found == "", f"{host}: the old password is still in {found}"
            mode = pg.app.sh(host, f"stat -c %a {pg.app.deploy_to}/shared/node.env").strip()
            assert mode == "600"

        # Pushing the same values again restarts nothing.
        nodes = {h["host"]: h.get("node_pids") for h in status_of(pg)["hosts"]}
        again = env_api.push(pg.inventory(url=rotated))
        assert again.report.ok, explain(again.report)
        assert {h["host"]: h.get("node_pids") for h in status_of(pg)["hosts"]} == nodes

        # Rollback: 0.1.0's code with today's password.
        back = api.rollback(pg.inventory(url=rotated), to=v1).report
        assert back.ok, explain(back)
        for host in hosts:
            code, health = pg.health(host)
            assert code == 200 and health["version"] == "0.1.0" and health["database"] == "ok", (host, health)
    finally:
        pg.db.set_password(old_password)


def test_concurrent_migrate_runs_each_migration_once(pg: PgApp, builds: dict[str, Path], tmp_path: Path) -> None:
    """Three `bin/hello_pg eval "HelloPg.Release.migrate()"` at once: the advisory lock serialises them."""
    release = tmp_path / "release"
    release.mkdir()
    with tarfile.open(builds["v2"], "r:gz") as tar:
        tar.extractall(release, filter="tar")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "DATABASE_URL": pg.url}
    results: list[subprocess.CompletedProcess[str]] = []
    lock = threading.Lock()
    start = threading.Barrier(3)

    def run() -> None:
        start.wait()
        done = subprocess.run(
            [str(release / "bin" / "hello_pg"), "eval", "IO.inspect(HelloPg.Release.migrate())"],
            env={**env, "RELEASE_TMP": str(tmp_path / f"tmp{threading.get_ident()}")},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        with lock:
            results.append(done)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert pg.migrations() == [M1, M2, M3]
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}
    # Exactly one run applied all three; the others waited on the lock and found nothing pending.
    applied = sorted(r.stdout.strip().splitlines()[-1] for r in results)
    assert applied == sorted(["[]", "[]", f"[{M1}, {M2}, {M3}]"]), applied


# --- failures: nothing switches, the report names the real cause -------------------------------------------


@dataclass
class Failure:
    """What one failed deploy of 0.2.0 over a fleet serving 0.1.0 left behind, observed from outside."""

    pg: PgApp
    v1: str
    report: Report
    before: dict[str, list[tuple[str, str, str]]]
    """history per host before the failed deploy"""
    currents: dict[str, str]
    migrations: list[int]
    effects: dict[int, int]
    columns: list[str]
    history: dict[str, list[tuple[str, str, str]]]
    status: dict[str, Any]
    health: dict[str, tuple[int, dict[str, Any]]]

    def new_records(self) -> dict[str, list[tuple[str, str, str]]]:
        return {h: rows[len(self.before[h]) :] for h, rows in self.history.items()}


def fail_deploy(pg: PgApp, v1_tarball: Path, attempt: Any) -> Failure:
    """Deploy 0.1.0, then run ``attempt(pg) -> Report`` (a deploy of 0.2.0 that must fail) and observe."""
    v1 = released(pg, pg.deploy(v1_tarball))
    before = history_of(pg)
    report = attempt(pg)
    if not pg.db.running:
        pg.db.start()
    return Failure(
        pg=pg,
        v1=v1,
        report=report,
        before=before,
        currents=pg.currents(),
        migrations=pg.migrations(),
        effects=pg.effects(),
        columns=pg.columns("items"),
        history=history_of(pg),
        status=status_of(pg),
        health={h.name: pg.health(h.name) for h in pg.app.fleet.hosts},
    )


def assert_nothing_switched(failure: Failure) -> None:
    """No host switched: reports, symlinks, nodes, history and status all say 0.1.0 on v1."""
    report = failure.report
    assert not report.ok
    assert "no host switched" in (report.error or ""), explain(report)
    assert all(h.after == h.before == failure.v1 for h in report.hosts), explain(report)
    assert failure.currents == {h: f"releases/{failure.v1}" for h in failure.currents}
    for host, (code, health) in failure.health.items():
        assert code == 200 and health["version"] == "0.1.0", (host, health)
    assert failure.status["mixed"] is False
    assert {h["current"] for h in failure.status["hosts"]} == {failure.v1}, failure.status
    assert {h["version"] for h in failure.status["hosts"]} == {"0.1.0"}, failure.status
    assert failure.status["healthy"] is True, failure.status
    # No record claims the failed release ran, anywhere.
    for host, records in failure.history.items():
        assert not [r for r in records if r[0] == report.release and r[2] == "success"], (host, records)
    # The schema is what 0.1.0 left: migration 3 neither recorded nor half-applied.
    assert failure.migrations == [M1, M2]
    assert failure.effects == {M1: 1, M2: 1}
    assert "note" not in failure.columns


@pytest.fixture(scope="module")
def database_down(
    session_fleet: Fleet, database: Database, builds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Failure, Report]]:
    """The database is stopped before the deploy of 0.2.0 (so before its migration); then it comes back
    and the same deploy is run again."""
    pg = new_pg(session_fleet, database, tmp_path_factory.mktemp("down"))

    def attempt(pg: PgApp) -> Report:
        pg.db.stop()
        try:
            return pg.deploy(builds["v2"])
        finally:
            pg.db.start()

    try:
        failure = fail_deploy(pg, builds["v1"], attempt)
        again = pg.deploy(builds["v2"])
        yield failure, again
    finally:
        dispose(pg)


def test_database_down_before_migration_switches_nothing(database_down: tuple[Failure, Report]) -> None:
    failure, _ = database_down
    assert_nothing_switched(failure)
    assert "migration failed on h1" in (failure.report.error or "")
    by_host = {h.host: h for h in failure.report.hosts}
    assert by_host["h1"].step == "migrate"


def test_database_down_report_names_connection_refused(database_down: tuple[Failure, Report]) -> None:
    failure, _ = database_down
    text = failure.report.error or ""
    assert "econnrefused" in text or "connection refused" in text, explain(failure.report)
    assert failure.pg.db.address in text  # which database: the address the node could not reach


def test_database_back_next_deploy_converges(database_down: tuple[Failure, Report]) -> None:
    failure, again = database_down
    pg = failure.pg
    v2 = released(pg, again)
    assert pg.currents() == {h: f"releases/{v2}" for h in pg.currents()}
    assert pg.migrations() == [M1, M2, M3]
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}
    for host in pg.currents():
        code, health = pg.health(host)
        assert code == 200 and health["version"] == "0.2.0", health


@pytest.fixture(scope="module")
def database_unreachable(
    session_fleet: Fleet, database: Database, builds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Failure]:
    """The database host is cut off before the deploy of 0.2.0: connections time out, nothing refuses them."""
    pg = new_pg(session_fleet, database, tmp_path_factory.mktemp("cut"))

    def attempt(pg: PgApp) -> Report:
        pg.db.cut_link()
        try:
            return pg.deploy(builds["v2"])
        finally:
            pg.db.restore_link()

    try:
        yield fail_deploy(pg, builds["v1"], attempt)
    finally:
        dispose(pg)


def test_database_unreachable_before_migration_switches_nothing(database_unreachable: Failure) -> None:
    assert_nothing_switched(database_unreachable)
    assert "migration failed on h1" in (database_unreachable.report.error or "")


def test_database_unreachable_report_names_the_timeout(database_unreachable: Failure) -> None:
    text = database_unreachable.report.error or ""
    assert "timeout" in text and database_unreachable.pg.db.address in text, explain(database_unreachable.report)


@pytest.fixture(scope="module")
def bad_password(
    session_fleet: Fleet, database: Database, builds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Failure, str]]:
    """0.2.0 is deployed with a DATABASE_URL whose password is wrong."""
    pg = new_pg(session_fleet, database, tmp_path_factory.mktemp("badpw"))
    wrong = "Wr0ng-" + database.password[::-1]
    try:
        yield (
            fail_deploy(
                pg, builds["v1"], lambda pg: pg.deploy(builds["v2"], url=pg.db.url_with(password=wrong, name=pg.dbname))
            ),
            wrong,
        )
    finally:
        dispose(pg)


def test_bad_password_switches_nothing_and_shows_no_password(bad_password: tuple[Failure, str]) -> None:
    failure, wrong = bad_password
    assert_nothing_switched(failure)
    text = all_text(failure.report)
    assert wrong not in text and failure.pg.db.password not in text, "a database password is in the report"


def test_bad_password_report_names_the_authentication_failure(bad_password: tuple[Failure, str]) -> None:
    failure, wrong = bad_password
    text = failure.report.error or ""
    assert "28P01" in text or "invalid_password" in text, explain(failure.report)
    assert 'password authentication failed for user "app"' in text
    assert wrong not in text


@pytest.fixture(scope="module")
def raising_migration(
    session_fleet: Fleet, database: Database, builds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Failure]:
    """0.2.0's migration 3 does its work (a column, an effect row) and then raises."""
    pg = new_pg(session_fleet, database, tmp_path_factory.mktemp("raise"))
    try:
        yield fail_deploy(pg, builds["v1"], lambda pg: pg.deploy(builds["bad"]))
    finally:
        dispose(pg)


def test_raising_migration_is_rolled_back_and_nothing_switches(raising_migration: Failure) -> None:
    assert_nothing_switched(raising_migration)
    # The transaction was rolled back: a later good release still finds migration 3 pending.
    pg = raising_migration.pg
    assert pg.sql(f"SELECT count(*) FROM migration_effects WHERE version = {M3}") == [("0",)]


def test_raising_migration_report_shows_the_cause(raising_migration: Failure) -> None:
    text = raising_migration.report.error or ""
    assert "migration 20240101000003 add_items_note raised on purpose" in text, explain(raising_migration.report)


# --- the database goes away after the migration, during activation --------------------------------------------


@dataclass
class Outage:
    """A deploy of 0.2.0 whose database stops right after the migration, observed while it is still down."""

    pg: PgApp
    v1: str
    report: Report
    before: dict[str, list[tuple[str, str, str]]]
    currents: dict[str, str]
    history: dict[str, list[tuple[str, str, str]]]
    status: dict[str, Any]
    health: dict[str, tuple[int, dict[str, Any]]]
    again: Report
    """the same deploy once the database is back"""

    def new_records(self) -> dict[str, list[tuple[str, str, str]]]:
        return {h: rows[len(self.before[h]) :] for h, rows in self.history.items()}


@pytest.fixture(scope="module")
def outage(
    session_fleet: Fleet, database: Database, builds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outage]:
    # A short health deadline: with the database gone no node will become healthy.
    pg = new_pg(session_fleet, database, tmp_path_factory.mktemp("outage"), health_deadline=12)
    try:
        v1 = released(pg, pg.deploy(builds["v1"]))
        before = history_of(pg)
        events = Recorder()
        events.on("h1", "migrate", "done", pg.db.stop)
        try:
            report = pg.deploy(builds["v2"], events=events, strategy={"kind": "rolling", "batch_size": 1})
            assert not pg.db.running, "the fault was not injected (no migrate step on h1?)"
            currents = pg.currents()
            history = history_of(pg)
            status = status_of(pg)
            health = {h.name: pg.health(h.name) for h in pg.app.fleet.hosts}
        finally:
            pg.db.start()
        again = pg.deploy(builds["v2"])
        yield Outage(pg, v1, report, before, currents, history, status, health, again)
    finally:
        dispose(pg)


def test_database_down_during_activation_fails_and_records_no_success(outage: Outage) -> None:
    report = outage.report
    assert not report.ok
    assert report.migrated_on == "h1"
    # The migration succeeded (and says so); the release never ran healthy, so no deploy record says success.
    for host, records in outage.new_records().items():
        ran = [r for r in records if r[0] == report.release and r[1] != "migrate" and r[2] == "success"]
        assert not ran, (host, records)
    for host, (code, health) in outage.health.items():
        assert code == 503 and "econnrefused" in health["database"], (host, health)
    assert outage.status["healthy"] is False
    # The nodes logged database errors for every failed health check: never the password.
    pg = outage.pg
    for host in outage.currents:
        found = pg.app.sh(
            host,
            f"grep -rlF -e {pg.db.password} {pg.app.deploy_to}/releases {pg.app.deploy_to}/shared/tmp || true",
        ).strip()
        assert found == "", f"{host}: the database password is in {found}"
    # The rollout stopped at the first batch: h2 and h3 were never switched.
    for host in ("h2", "h3"):
        assert outage.currents[host] == f"releases/{outage.v1}"
        assert outage.new_records()[host] == []


def test_database_down_during_activation_report_history_and_status_agree(outage: Outage) -> None:
    report = outage.report
    status_current = {h["host"]: h["current"] for h in outage.status["hosts"]}
    for result in report.hosts:
        on_disk = outage.currents[result.host].removeprefix("releases/")
        assert result.after == on_disk == status_current[result.host], (explain(report), outage.status)
    assert report.mixed == outage.status["mixed"], explain(report)
    # A revert whose node never became healthy is not a success either (the migration record is).
    for host, records in outage.new_records().items():
        assert [r for r in records if r[1] != "migrate" and r[2] == "success"] == [], (host, records)


def test_database_back_after_outage_next_deploy_converges(outage: Outage) -> None:
    pg = outage.pg
    v2 = released(pg, outage.again)
    assert pg.currents() == {h: f"releases/{v2}" for h in pg.currents()}
    # Migration 3 ran in the failed deploy (before the outage) and is not run again.
    assert pg.migrations() == [M1, M2, M3]
    assert pg.effects() == {M1: 1, M2: 1, M3: 1}
    for host in pg.currents():
        code, health = pg.health(host)
        assert code == 200 and health["version"] == "0.2.0", health
