"""A real PostgreSQL server on a database host of a test fleet.

The server is Debian's PostgreSQL (``scripts/install-test-deps.sh`` installs it), run by
user ``postgres`` from a data directory made for this run, in a network namespace of its
own: a "database host" that the fleet's hosts reach over their private network, as app
servers reach a database server in production.

* **network**: namespace ``dp<runid>db`` joined to the root namespace by a veth pair with
  the /30 ``10.<octet>.254.0/30`` inside the fleet's /16 (fleet hosts use third octets
  1..250 only).  The server listens on ``10.<octet>.254.2``; every fleet host already routes
  the whole /16 through the root namespace, so it reaches the server without new routes.
* **auth**: ``password_encryption = scram-sha-256``; ``pg_hba.conf`` lets the fleet's /16 in
  with SCRAM only, and the superuser in through the run's own unix socket (peer auth) for
  :meth:`Database.query`.  One database and one login role with a random password.
* **faults**: :meth:`Database.stop` (connections refused), :meth:`Database.start`,
  :meth:`Database.cut_link` / :meth:`Database.restore_link` (connections time out),
  :meth:`Database.set_password` (rotation: the old URL fails authentication).

Typical use::

    with Fleet(3) as fleet, Database(fleet) as db:
        db.url                      # postgres://app:<password>@10.x.254.2:5432/app
        db.query("SELECT count(*) FROM schema_migrations")

Everything is recorded under ``/tmp/deployer-pg/<netns>`` with the owner's pid, so
a database whose test process was killed is removed by the next :class:`Database`
(:func:`reap_stale_databases`).  Passwords never appear in any command line: SQL that
carries one goes to ``psql`` on its standard input.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tests.harness import netns

__all__ = [
    "DB_REGISTRY",
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "pg_bindir",
    "reap_stale_databases",
]

#: Where every database of this machine's test runs records its state (one directory each).
DB_REGISTRY = Path("/tmp/deployer-pg")
#: Third octet of the database host's /30 inside the fleet's /16 (hosts use 1..250).
DB_SUBNET_OCTET = 254

# initdb and psql pick their locale from the environment: pin it.
_TOOL_ENV = {**netns.TOOL_ENV, "LC_ALL": "C"}
_INNER_IF = "eth0"
_SUPERUSER = "postgres"
_IDENT_RE = re.compile(r"[a-z_][a-z0-9_]{0,30}")


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL is not installed here (run scripts/install-test-deps.sh), or not root."""


class DatabaseError(netns.ToolError):
    """A database operation failed (the server did not start, a query failed, ...)."""


class _FleetLike(Protocol):
    """What a database needs from a :class:`tests.harness.fleet.Fleet`."""

    @property
    def runid(self) -> str: ...

    @property
    def network(self) -> Any: ...


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with ``initdb`` and ``pg_ctl``."""
    root = Path("/usr/lib/postgresql")
    candidates = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise DatabaseUnavailable(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; run scripts/install-test-deps.sh"
        )
    return candidates[-1]


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool with a clean environment; raise DatabaseError with its stderr on failure."""
    return netns.run(argv, check=check, timeout=timeout, input=input, error=DatabaseError, env=_TOOL_ENV)


def _sql_literal(value: str) -> str:
    """``value`` as a standard SQL string literal (standard_conforming_strings is on)."""
    if "\0" in value:
        raise ValueError("SQL strings cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class _State:
    """What teardown (by this or a later process) needs to remove a database."""

    netns: str
    veth: str
    base_dir: Path
    owner_pid: int

    def to_json(self) -> dict[str, Any]:
        return {"netns": self.netns, "veth": self.veth, "base_dir": str(self.base_dir), "owner_pid": self.owner_pid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        return cls(str(data["netns"]), str(data["veth"]), Path(data["base_dir"]), int(data["owner_pid"]))


def _teardown(state: _State) -> list[str]:
    """Stop the server, remove namespace, veth and files; return what was left behind."""
    data = state.base_dir / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(DatabaseError, DatabaseUnavailable, FileNotFoundError):
            _run(
                [
                    "runuser",
                    "-u",
                    _SUPERUSER,
                    "--",
                    str(pg_bindir() / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                check=False,
                timeout=30,
            )
    netns.kill_netns(state.netns, time.monotonic() + 10)
    _run(["ip", "link", "del", state.veth], check=False)
    _run(["ip", "netns", "del", state.netns], check=False)
    left = [f"pid {p} in netns {state.netns}" for p in netns.netns_pids(state.netns)]
    if Path("/sys/class/net", state.veth).exists():
        left.append(f"link {state.veth}")
    if Path("/run/netns", state.netns).exists():
        left.append(f"netns {state.netns}")
    if not left:
        shutil.rmtree(state.base_dir, ignore_errors=True)
        if state.base_dir.exists():
            left.append(f"directory {state.base_dir}")
    return left


def reap_stale_databases(registry: Path = DB_REGISTRY) -> list[str]:
    """Remove every recorded database whose owner process is gone; return their namespaces."""
    reaped: list[str] = []
    if not registry.is_dir():
        return reaped
    for entry in sorted(registry.iterdir()):
        try:
            state = _State.from_json(json.loads((entry / "state.json").read_text()))
        except (OSError, ValueError, KeyError):
            continue
        if netns.alive(state.owner_pid):
            continue
        if not _teardown(state):
            reaped.append(state.netns)
    return reaped


def destroy_detached(runid: str) -> list[str]:
    """Tear down the database detached with fleet ``runid`` (none: nothing to do); return what was left."""
    state_file = DB_REGISTRY / f"dp{runid}db" / "state.json"
    if not state_file.exists():
        return []
    return _teardown(_State.from_json(json.loads(state_file.read_text())))


class Database:
    """One PostgreSQL server for one fleet: a database, a login role, a random password.

    ``with Database(fleet) as db`` creates it (:meth:`create`) and always removes it
    (:meth:`destroy`).  :meth:`stop` / :meth:`start` stop and restart the server itself, for
    fault tests; the data survives them.
    """

    def __init__(
        self,
        fleet: _FleetLike,
        *,
        name: str = "app",
        user: str = "app",
        port: int = 5432,
        start_timeout: float = 60.0,
    ) -> None:
        """Describe a server for ``fleet`` (started: its run id and /16 are needed).

        ``name`` is the database, ``user`` the login role that owns it (both plain SQL
        identifiers); ``port`` the TCP port on the database host.
        """
        for label, value in (("name", name), ("user", user)):
            if not _IDENT_RE.fullmatch(value) or value == _SUPERUSER:
                raise ValueError(f"{label} must be a plain lower-case SQL identifier, got {value!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, got {port}")
        self.name = name
        self.user = user
        self.port = port
        self.start_timeout = start_timeout
        network = fleet.network
        octets = str(network.network_address).split(".")
        self.netns = f"dp{fleet.runid}db"
        self.veth = f"dp{fleet.runid}dbo"
        self.gateway = f"{octets[0]}.{octets[1]}.{DB_SUBNET_OCTET}.1"
        self.address = f"{octets[0]}.{octets[1]}.{DB_SUBNET_OCTET}.2"
        """The database host's address, on the fleet's private network."""
        self.network = str(network)
        self.base_dir = DB_REGISTRY / self.netns
        self._password = secrets.token_urlsafe(18)
        self._created = False

    # ------------------------------------------------------------------ properties

    @property
    def password(self) -> str:
        """The login role's current password."""
        return self._password

    @property
    def url(self) -> str:
        """``postgres://user:password@address:port/name`` for the app (a secret)."""
        return self.url_with(password=self._password)

    def url_with(self, *, password: str | None = None, port: int | None = None, name: str | None = None) -> str:
        """:attr:`url` with some parts replaced (a wrong password, a closed port, ...)."""
        pw = self._password if password is None else password
        return f"postgres://{self.user}:{pw}@{self.address}:{port or self.port}/{name or self.name}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        """The server's log (``pg_ctl -l``)."""
        return self.base_dir / "postgresql.log"

    @property
    def running(self) -> bool:
        """True while the server accepts connections on its unix socket."""
        if not self._created:
            return False
        proc = _run(
            [str(pg_bindir() / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
            check=False,
            timeout=15,
        )
        return proc.returncode == 0

    def __repr__(self) -> str:
        return f"Database({self.user}@{self.address}:{self.port}/{self.name}, netns={self.netns})"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Database:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def create(self) -> Database:
        """Make the database host, initialise a cluster, start it, create the role and database.

        On any failure everything created so far is removed and the error raised.
        """
        if os.geteuid() != 0:
            raise DatabaseUnavailable("needs root: the database host is a network namespace")
        bindir = pg_bindir()
        if shutil.which("runuser", path=netns.STD_PATH) is None:
            raise DatabaseUnavailable("runuser (util-linux) is missing")
        reap_stale_databases()
        if self.base_dir.exists():
            raise DatabaseError(f"{self.base_dir} exists: a database for this fleet is already up")
        DB_REGISTRY.mkdir(mode=0o755, exist_ok=True)
        self.base_dir.mkdir(mode=0o755)
        self._created = True
        state = _State(self.netns, self.veth, self.base_dir, os.getpid())
        (self.base_dir / "state.json").write_text(json.dumps(state.to_json()) + "\n")
        try:
            self._make_host()
            self._initdb(bindir)
            self.start()
            self._provision()
        except BaseException:
            self.destroy()
            raise
        return self

    def _make_host(self) -> None:
        ns, veth = self.netns, self.veth
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", _INNER_IF, "netns", ns])
        _run(["ip", "addr", "add", f"{self.gateway}/30", "dev", veth])
        _run(["ip", "link", "set", veth, "up"])
        # Forward between the fleet hosts' veths and this one (per interface, like the fleet).
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding").write_text("1")
        _run(
            ["ip", "-n", ns, "-batch", "-"],
            input=(
                f"addr add {self.address}/30 dev {_INNER_IF}\n"
                f"link set {_INNER_IF} up\n"
                "link set lo up\n"
                f"route add {self.network} via {self.gateway}\n"
            ),
        )

    def _as_postgres(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return _run(["runuser", "-u", _SUPERUSER, "--", *argv], **kwargs)

    def _initdb(self, bindir: Path) -> None:
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
            shutil.chown(directory, _SUPERUSER, _SUPERUSER)
        self.log_file.touch(mode=0o600)
        shutil.chown(self.log_file, _SUPERUSER, _SUPERUSER)
        self._as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _SUPERUSER,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
        )
        # Only the fleet's network, only with SCRAM; the superuser only through our own socket.
        (self.data_dir / "pg_hba.conf").write_text(
            "# deployer test database: written by tests/harness/database.py\n"
            f"local all {_SUPERUSER} peer\n"
            f"host all all {self.network} scram-sha-256\n"
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# deployer test database\n"
                f"listen_addresses = '{self.address}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "password_encryption = 'scram-sha-256'\n"
                "max_connections = 40\n"
                "shared_buffers = 16MB\n"
                # A throwaway cluster: durability is not what the tests are about.
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "log_connections = on\n"
                "log_min_messages = warning\n"
            )

    def _provision(self) -> None:
        # The password goes through stdin: never in an argv someone could read in /proc.
        self.query(
            f"CREATE ROLE {self.user} LOGIN PASSWORD {_sql_literal(self._password)};\n"
            f"CREATE DATABASE {self.name} OWNER {self.user};\n",
            database="postgres",
        )

    def start(self) -> None:
        """Start the server (after :meth:`stop`); returns once it accepts connections."""
        self._require_created()
        if self.running:
            return
        # pg_ctl inside the namespace: the postmaster (and every backend) lives there.
        _run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "runuser",
                "-u",
                _SUPERUSER,
                "--",
                str(pg_bindir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "start",
            ],
            timeout=self.start_timeout + 15,
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected, new connections refused)."""
        self._require_created()
        if (self.data_dir / "postmaster.pid").exists():
            self._as_postgres(
                [str(pg_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
                timeout=75,
            )

    def cut_link(self) -> None:
        """Cut the database host off: connections to it time out (nothing refuses them, nothing answers).

        The link stays up and answers ARP, but every packet back to the fleet is silently discarded (a
        blackhole route): a client's SYN gets no SYN-ACK and no ICMP error, as behind a firewall that
        drops. (Taking the link down instead makes the fleet's kernels answer "host is unreachable" once
        address resolution fails: another failure, not a timeout.)
        """
        self._require_created()
        _run(["ip", "-n", self.netns, "route", "replace", "blackhole", self.network])

    def restore_link(self) -> None:
        """Undo :meth:`cut_link`; returns once the link is up and routed again (bounded)."""
        self._require_created()
        _run(["ip", "-n", self.netns, "link", "set", _INNER_IF, "up"])
        # The route back to the fleet's hosts, instead of cut_link's blackhole.
        _run(["ip", "-n", self.netns, "route", "replace", self.network, "via", self.gateway])
        deadline = time.monotonic() + 5
        oper = Path(f"/sys/class/net/{self.veth}/operstate")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if oper.read_text().strip() == "up":
                    break
            time.sleep(0.01)
        else:
            raise DatabaseError(f"{self.netns}: link did not come back up")
        # Both ends remember the failed address resolution of the cut ("No route to host"): forget it.
        _run(["ip", "neigh", "flush", "dev", self.veth], check=False)
        _run(["ip", "-n", self.netns, "neigh", "flush", "dev", _INNER_IF], check=False)

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` owned by the login role; returns its URL.

        One server can hold a database per test, so tests sharing it count rows independently.
        """
        self._require_created()
        if not _IDENT_RE.fullmatch(name):
            raise ValueError(f"name must be a plain lower-case SQL identifier, got {name!r}")
        self.query(f"CREATE DATABASE {name} OWNER {self.user}", database="postgres")
        return self.url_with(name=name)

    def set_password(self, password: str | None = None) -> str:
        """Give the login role a new password (a rotation); return it.  :attr:`url` follows."""
        self._require_created()
        new = password if password is not None else secrets.token_urlsafe(18)
        self.query(f"ALTER ROLE {self.user} PASSWORD {_sql_literal(new)}", database="postgres")
        self._password = new
        return new

    def destroy(self) -> None:
        """Stop the server and remove namespace, veth and files.  Idempotent.

        Raises :class:`DatabaseError` only if something is verifiably left behind.
        """
        if not self._created:
            return
        left = _teardown(_State(self.netns, self.veth, self.base_dir, os.getpid()))
        self._created = False
        if left:
            raise DatabaseError(f"database {self.netns}: teardown left behind: {'; '.join(left)}")

    def detach(self, owner_pid: int) -> None:
        """Let the server outlive this process (``invoke fleet.up --database``): ``owner_pid`` (the detached
        fleet's first init) owns it from now on, so :func:`reap_stale_databases` leaves it alone while the
        fleet runs. This handle no longer tears it down; :func:`destroy_detached` does."""
        self._require_created()
        state = _State(self.netns, self.veth, self.base_dir, owner_pid)
        (self.base_dir / "state.json").write_text(json.dumps(state.to_json()) + "\n")
        self._created = False

    def _require_created(self) -> None:
        if not self._created:
            raise DatabaseError("the database has not been created")

    # ------------------------------------------------------------------ queries

    def query(self, sql: str, *, database: str | None = None) -> list[tuple[str | None, ...]]:
        """Run ``sql`` as the superuser (over the unix socket) and return the rows of its last result.

        Values come back as text; SQL ``NULL`` as ``None``.  Raises :class:`DatabaseError`
        with psql's message when a statement fails (``ON_ERROR_STOP``).
        """
        self._require_created()
        null = "\x1e"
        proc = self._as_postgres(
            [
                str(pg_bindir() / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "\x1f",
                "-P",
                f"null={null}",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-d",
                database or self.name,
                "-f",
                "-",
            ],
            input=sql,
            timeout=60,
        )
        rows: list[tuple[str | None, ...]] = []
        # Not splitlines(): it also splits on the separators chosen above.
        for line in proc.stdout.split("\n"):
            if line:
                rows.append(tuple(None if v == null else v for v in line.split("\x1f")))
        return rows

    def scalar(self, sql: str, *, database: str | None = None) -> str | None:
        """The first column of the first row of ``sql``'s result (``None`` if there is no row)."""
        rows = self.query(sql, database=database)
        return rows[0][0] if rows else None

    def table_exists(self, table: str) -> bool:
        """True if ``public.<table>`` exists in the app's database."""
        return self.scalar(f"SELECT to_regclass({_sql_literal('public.' + table)}) IS NOT NULL") == "t"
