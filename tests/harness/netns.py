"""Process and namespace plumbing shared by every test fleet on this machine.

The namespace fleet (:mod:`tests.harness.fleet`), the booted machines
(:mod:`tests.harness.machines`) and the database host (:mod:`tests.harness.database`) all
create network namespaces, veths and processes that must never outlive the test run.  What
they have in common lives here, public, so none of them reaches into another's privates:

- running host-side tools with a clean environment (:func:`run`);
- identifying processes despite pid reuse (:func:`proc_start`, :func:`alive`);
- finding what is left in a network namespace (:func:`netns_pids`, :func:`netns_names`);
- the on-disk registry of fleets and its lock (:func:`registry_lock`, :func:`read_owner`);
- the /16s already in use, so a new fleet never shadows a real network;
- tearing down the fleets this process owns at exit and on SIGTERM/SIGHUP (:data:`LIVE`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from typing_extensions import Self

log = logging.getLogger(__name__)

STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH host-side tools run with: never the caller's (a venv or pyenv shim could shadow them)."""

TOOL_ENV = {"PATH": STD_PATH, "LANG": "C"}
"""The whole environment of host-side tools: nothing of the test run leaks into a host."""


class ToolError(RuntimeError):
    """A host-side tool failed; each harness raises its own subclass (FleetError, MachineError...)."""


def tool(name: str) -> str | None:
    """Absolute path of ``name`` on :data:`STD_PATH`, or None."""
    return shutil.which(name, path=STD_PATH)


def run(
    argv: list[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
    error: type[Exception] = ToolError,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host-side tool with ``env`` (default :data:`TOOL_ENV`) in ``/``.

    Raises ``error`` on a timeout or, if ``check``, on a non-zero exit.

    The message names the command and its stderr (stdout when stderr is empty).
    """
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=TOOL_ENV if env is None else env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            cwd="/",
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"{shlex.join(argv)}: timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise error(f"{shlex.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


# --------------------------------------------------------------------------- processes


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot): with the pid, identifies a process despite reuse."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int | None, start: int | None = None) -> bool:
    """True if ``pid`` runs (zombies do not count) and, if given, started at ``start``."""
    if pid is None or pid <= 0:
        return False
    fields = proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def children_of(ppid: int) -> list[int]:
    """Pids whose parent is ``ppid`` (one pass over /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and int(fields[1]) == ppid:
                found.append(int(entry.name))
    return found


def reap_if_child(pid: int, deadline: float) -> None:
    """Collect ``pid``'s exit status if it is our child, waiting until ``deadline`` (monotonic)."""
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours to reap (or already reaped)
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- namespaces and links


def netns_pids(netns: str) -> list[int]:
    """Live pids whose network namespace is ``netns``: the same test as ``ip netns pids``."""
    try:
        ref = os.stat(f"/run/netns/{netns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
        if (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino) and alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def kill_netns(netns: str, deadline: float) -> None:
    """SIGKILL everything in ``netns`` until it is empty or ``deadline`` (monotonic) passes."""
    while time.monotonic() < deadline:
        pids = netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            kill(pid)
        time.sleep(0.02)


def netns_names() -> set[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    """True if a network link called ``name`` exists in this namespace."""
    return Path("/sys/class/net", name).exists()


def used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine uses or talks to, so a fleet's /16 avoids them all."""
    nets: list[ipaddress.IPv4Network] = []

    def add(text: str) -> None:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(text, strict=False))

    with contextlib.suppress(ToolError, ValueError):
        for iface in json.loads(run(["ip", "-j", "-4", "addr"]).stdout or "[]"):
            for ai in iface.get("addr_info", []):
                if ai.get("family") == "inet":
                    add(f"{ai['local']}/{ai['prefixlen']}")
    with contextlib.suppress(ToolError, ValueError):
        for route in json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
            dst = str(route.get("dst", "default"))
            if dst != "default":
                add(dst)
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                add(parts[1])
    # Peers of open sockets: a /16 must never shadow an address something here is talking to.
    for table in ("/proc/net/tcp", "/proc/net/udp"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                for col in cols[1:3]:
                    with contextlib.suppress(ValueError):
                        add(socket.inet_ntoa(bytes.fromhex(col.split(":")[0])[::-1]))
    return [n for n in nets if n.prefixlen > 0]


# --------------------------------------------------------------------------- files and the registry


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` and set ``mode``."""
    path.write_text(text)
    path.chmod(mode)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON: a reader sees the old state or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def ensure_registry(registry: Path, unavailable: type[Exception] = ToolError) -> None:
    """Create ``registry`` (0755), refusing one that is a symlink or owned by someone else."""
    try:
        registry.mkdir(mode=0o755, exist_ok=True)
        st = os.lstat(registry)
    except OSError as exc:
        raise unavailable(f"cannot create {registry}: {exc}") from exc
    # /tmp is world-writable: refuse a registry someone else planted (symlink or foreign owner).
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise unavailable(f"{registry} is not a directory owned by uid {os.geteuid()}")


@contextlib.contextmanager
def registry_lock(registry: Path, unavailable: type[Exception] = ToolError) -> Iterator[None]:
    """Serialise run-id and address allocation (and reaping) across processes."""
    ensure_registry(registry, unavailable)
    fd = os.open(registry / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_owner(path: Path) -> tuple[int, int | None] | None:
    """An ``owner.pid`` record: ``<pid> [<start time>]``, or None if absent or unreadable."""
    try:
        parts = path.read_text().split()
        return int(parts[0]), (int(parts[1]) if len(parts) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def owner_record(pid: int) -> str:
    """The ``owner.pid`` record for ``pid`` (with its start time, so a reused pid is not the owner)."""
    start = proc_start(pid)
    return f"{pid} {start}\n" if start is not None else f"{pid}\n"


# --------------------------------------------------------------------------- live fleets


class LiveFleet(Protocol):
    """What every kind of fleet offers so that this process can tear it down as it ends."""

    def owned_by(self, pid: int) -> bool:
        """True if process ``pid`` started this fleet and must tear it down."""
        ...

    def stop_for_exit(self, *, parallel: bool) -> None:
        """Tear down now; with ``parallel=False`` (in a signal handler) start no threads."""
        ...


class LiveFleets:
    """The fleets this process owns, torn down at interpreter exit and on SIGTERM/SIGHUP.

    One instance per kind of fleet; at exit the kinds are torn down one after the other,
    in the order they were created.
    """

    _kinds: list[LiveFleets] = []
    _kinds_lock = threading.Lock()
    _hooks_installed = False
    _in_signal_teardown = False

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fleets: dict[int, LiveFleet] = {}
        self._lock = threading.Lock()
        with LiveFleets._kinds_lock:
            LiveFleets._kinds.append(self)

    def register(self, fleet: LiveFleet) -> None:
        """Tear ``fleet`` down when this process ends (unless it is :meth:`unregister`-ed first)."""
        with self._lock:
            self._fleets[id(fleet)] = fleet
        with LiveFleets._kinds_lock:
            if not LiveFleets._hooks_installed:
                atexit.register(LiveFleets.stop_all, parallel=True)
                LiveFleets._hooks_installed = True
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                # Only where nobody chose a disposition: a killed test run or demo still tears down.
                if signal.getsignal(sig) in (signal.SIG_DFL, _on_fatal_signal):
                    signal.signal(sig, _on_fatal_signal)

    def unregister(self, fleet: LiveFleet) -> None:
        """Forget ``fleet`` (it was stopped, or detached to outlive this process)."""
        with self._lock:
            self._fleets.pop(id(fleet), None)

    def stop_owned(self, *, parallel: bool) -> None:
        """Tear down every fleet of this kind that this very process owns (not a fork's)."""
        with self._lock:
            fleets = [f for f in self._fleets.values() if f.owned_by(os.getpid())]
        for fleet in fleets:
            try:
                fleet.stop_for_exit(parallel=parallel)
            except Exception as exc:
                log.error("tearing down %s %r: %s", self.kind, fleet, exc)

    @classmethod
    def stop_all(cls, *, parallel: bool) -> None:
        """Tear down every fleet this process owns, kind after kind."""
        with cls._kinds_lock:
            kinds = list(cls._kinds)
        for kinds_fleets in kinds:
            kinds_fleets.stop_owned(parallel=parallel)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    # `timeout` and process-group kills deliver the signal twice: tear down once.
    if LiveFleets._in_signal_teardown:
        return
    LiveFleets._in_signal_teardown = True
    # The interrupted code may hold any lock (even inside concurrent.futures), so this path
    # starts no threads and waits for each fleet's own lock only briefly.
    LiveFleets.stop_all(parallel=False)
    # Then die of the signal as if we had never caught it.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


RuntimeT = TypeVar("RuntimeT")
FleetState = Literal["new", "starting", "running", "stopping", "stopped"]


class OwnedFleet(Generic[RuntimeT]):
    """The lifecycle every kind of fleet shares: owned by the process that started it, stopped once.

    A subclass sets ``_rt`` (its hosts' runtime records), ``_runid``, ``_state``,
    ``_owner_pid`` and ``_lock`` (an ``RLock``) in its ``__init__``, and provides
    :meth:`start`, :meth:`_teardown_one` (one host) and :meth:`_teardown_shared` (what the
    hosts share: routes, files).  Stopping is idempotent, tears hosts down in parallel, and
    raises only for what is verifiably left behind.
    """

    KIND: ClassVar[str]
    """How messages name this kind of fleet."""
    ERROR: ClassVar[type[Exception]]
    """What :meth:`stop` raises for leftovers."""
    LIVE: ClassVar[LiveFleets]
    """Where the fleets of this kind that this process owns are registered."""

    _rt: dict[str, RuntimeT]
    _runid: str | None
    _state: FleetState
    _owner_pid: int | None
    _lock: threading.RLock

    def start(self) -> Self:
        """Bring every host up (see the subclass)."""
        raise NotImplementedError

    def _teardown_one(self, rt: RuntimeT) -> list[str]:
        """Tear one host down; return what is left of it (empty when nothing)."""
        raise NotImplementedError

    def _teardown_shared(self, *, clean: bool) -> None:
        """Remove what the hosts share; files only when ``clean`` (leftovers need their records)."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._state == "running"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def owned_by(self, pid: int) -> bool:
        """True if process ``pid`` started this fleet (and tears it down when it ends)."""
        return self._owner_pid == pid

    def stop(self) -> None:
        """Tear everything down: processes, namespaces, links, routes, files.

        Idempotent; pieces already gone are skipped.  Raises :attr:`ERROR` only if something
        of this fleet is verifiably left behind afterwards.
        """
        self._stop(parallel=True, lock_timeout=-1)

    def stop_for_exit(self, *, parallel: bool) -> None:
        """:meth:`stop` as the process ends; in a signal handler (not parallel) waits for the lock 5 s at most."""
        self._stop(parallel=parallel, lock_timeout=-1 if parallel else 5)

    def _stop(self, *, parallel: bool, lock_timeout: float) -> None:
        locked = self._lock.acquire(timeout=lock_timeout)
        try:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            # "stopping" is re-entered on purpose (a signal during stop): every step is idempotent.
            self._state = "stopping"
            rts = list(self._rt.values())
            leftovers: list[str] = []
            if parallel and len(rts) > 1:
                with ThreadPoolExecutor(max_workers=min(len(rts), 32), thread_name_prefix="teardown") as pool:
                    for found in pool.map(self._teardown_one, rts):
                        leftovers += found
            else:
                for rt in rts:
                    leftovers += self._teardown_one(rt)
            self._teardown_shared(clean=not leftovers)
            self.LIVE.unregister(self)
            self._state = "stopped"
            if leftovers:
                raise self.ERROR(f"{self.KIND} {self._runid}: teardown left behind: {'; '.join(leftovers)}")
        finally:
            if locked:
                self._lock.release()
