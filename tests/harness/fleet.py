"""A fleet of real OpenSSH hosts on this machine, for end-to-end tests and demos.

Each host is a real ``/usr/sbin/sshd`` living in its own set of Linux namespaces, so that
it behaves like a separate machine while costing a few megabytes:

* **network**: its own ``eth0`` (one end of a veth pair whose other end stays in the root
  namespace) with a private /30 inside ``10.<octet>.0.0/16``, its own loopback and its own
  port space (every host can listen on 4369, like separate machines);
* **mount**: a per-host directory bind-mounted at the deploy root (``/srv``), plus private
  ``/tmp``, ``/root``, ``/run`` and ``/etc/hosts``, so no host sees another's files;
* **pid**: ``ps`` and ``/proc`` inside a host only show that host's processes.  PID 1 of the
  namespace is a tiny Python init that starts sshd and reaps every orphan (daemons started
  from an SSH session with ``setsid ... &`` vanish when killed instead of lingering as
  zombies that ``kill -0`` still sees);
* **uts**: the hostname is the host's logical name (``h1``, ``h2``, ...).

Everything a fleet creates is named after a random run id (``dp<4 hex>``) and recorded
under ``/tmp/deployer-fleet/<runid>`` so two fleets never collide, teardown removes only
what it created, and :func:`reap_stale_fleets` can clean up after a killed owner.

Typical use::

    with Fleet(3) as fleet:
        h1 = fleet.host("h1")
        fleet.exec(h1, "ls /srv")

A long-lived fleet for a demo (``invoke fleet.up`` / ``fleet.down``)::

    fleet = Fleet(3).start()
    fleet.detach()                      # survive this process; no teardown at exit
    fleet.save(Path(".fleet/fleet.json"))
    ...
    Fleet.load(Path(".fleet/fleet.json")).stop()   # from another process
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.netns import (
    STD_PATH,
    FleetState,
    LiveFleets,
    OwnedFleet,
    ToolError,
    alive,
    children_of,
    kill,
    link_exists,
    netns_names,
    netns_pids,
    owner_record,
    proc_start,
    read_owner,
    reap_if_child,
    registry_lock,
    run,
    tool,
    used_ipv4_networks,
    write,
    write_json_atomic,
)

if TYPE_CHECKING:
    import paramiko

__all__ = [
    "REGISTRY",
    "Fleet",
    "FleetError",
    "FleetHost",
    "FleetUnavailable",
    "check_environment",
    "reap_stale_fleets",
]

log = logging.getLogger(__name__)

#: Where every fleet on this machine is registered (one entry per run id).
REGISTRY = Path("/tmp/deployer-fleet")
#: Most hosts one fleet can have (the host index is the third octet of its address).
MAX_HOSTS = 250

# What a login on a host would roughly see; used for exec() and the host's init.
_HOST_ENV = {
    "PATH": STD_PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
}
_INNER_IF = "eth0"
# Paths as seen inside a host (its private /run is <state_dir>/run outside).
_IN_FLEET_DIR = "/run/fleet"
_IN_SSHD_CONFIG = f"{_IN_FLEET_DIR}/sshd_config"
_IN_SSHD_LOG = f"{_IN_FLEET_DIR}/sshd.log"
_IN_SSHD_PID = f"{_IN_FLEET_DIR}/sshd.pid"
_HOST_KEY = "ssh_host_ed25519_key"
# Deploy roots that would hide the host's own plumbing (or make no sense) if mounted over.
_FORBIDDEN_ROOTS = ("/tmp", "/run", "/root", "/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/lib")
_STATE_VERSION = 1

# PID 1 of every host's pid namespace.  sshd is not used as PID 1 because stopping it
# (stop_sshd) would then end the whole host, and because something must reap the
# daemons that outlive their SSH session.  Signals are blocked and taken synchronously
# with sigtimedwait, so a SIGCHLD can never slip in between a reap and the wait.
_INIT_SCRIPT = """\
# PID 1 of one deployer test-fleet host: start sshd, reap every orphan, and end the
# host (the kernel kills the rest of the pid namespace) on SIGTERM/SIGINT/SIGHUP.
import os
import signal
import sys

SIGS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
for s in SIGS:
    # A handler (not SIG_DFL) is what lets these signals reach a pid-namespace init.
    signal.signal(s, lambda signum, frame: None)
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)

if os.fork() == 0:
    for s in SIGS | {signal.SIGPIPE, signal.SIGXFSZ}:
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGS)
    os.execv(SSHD, [SSHD, "-f", CONFIG, "-E", LOG])

while True:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    info = signal.sigtimedwait(SIGS, 60)
    if info is not None and info.si_signo != signal.SIGCHLD:
        sys.exit(0)
"""


class FleetUnavailable(RuntimeError):
    """This machine cannot run a fleet (not root, or a needed tool is missing)."""


class FleetError(ToolError):
    """A fleet operation failed (a host did not come up, teardown left something behind, ...)."""


@dataclass(frozen=True)
class FleetHost:
    """One host of a fleet, as a test or an inventory sees it."""

    name: str
    """Stable logical name: ``h1``, ``h2``, ... (also the host's hostname)."""
    netns: str
    """Name of its network namespace (``ip netns``), unique per run."""
    address: str
    """IPv4 address sshd listens on, reachable from the root namespace."""
    port: int
    """sshd port (22)."""
    host_dir: Path
    """Local directory bind-mounted at the deploy root (``/srv``) inside the host."""


@dataclass
class _HostRuntime:
    """Mutable bookkeeping for one host (never handed out)."""

    host: FleetHost
    veth: str
    gateway: str
    state_dir: Path
    init_pid: int | None = None
    init_start: int | None = None
    launcher_pid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    fills: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def fleet_dir(self) -> Path:
        """``/run/fleet`` of the host, seen from outside."""
        return self.run_dir / "fleet"

    @property
    def sshd_log(self) -> Path:
        return self.fleet_dir / "sshd.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.host.name,
            "netns": self.host.netns,
            "address": self.host.address,
            "port": self.host.port,
            "host_dir": str(self.host.host_dir),
            "veth": self.veth,
            "gateway": self.gateway,
            "state_dir": str(self.state_dir),
            "init_pid": self.init_pid,
            "init_start": self.init_start,
            "launcher_pid": self.launcher_pid,
            "fills": list(self.fills),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _HostRuntime:
        host = FleetHost(
            name=str(data["name"]),
            netns=str(data["netns"]),
            address=str(data["address"]),
            port=int(data["port"]),
            host_dir=Path(data["host_dir"]),
        )
        return cls(
            host=host,
            veth=str(data["veth"]),
            gateway=str(data["gateway"]),
            state_dir=Path(data["state_dir"]),
            init_pid=_opt_int(data.get("init_pid")),
            init_start=_opt_int(data.get("init_start")),
            launcher_pid=_opt_int(data.get("launcher_pid")),
            fills=[str(p) for p in data.get("fills", [])],
        )


# --------------------------------------------------------------------------- helpers


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 30, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a host-side tool with a clean environment; raise FleetError on failure."""
    return run(argv, check=check, timeout=timeout, input=input, error=FleetError)


@contextlib.contextmanager
def _registry_lock(registry: Path) -> Iterator[None]:
    with registry_lock(registry, FleetUnavailable):
        yield


def _init_python() -> str:
    """An interpreter for the hosts' init that stays visible inside a host.

    The venv's interpreter may live under /root (pyenv), which every host hides behind its
    own private /root, so the system one is preferred.
    """
    hidden = ("/root/", "/tmp/", "/run/")
    for candidate in ("/usr/bin/python3", tool("python3")):
        if candidate and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            if not real.startswith(hidden):
                return real
    raise FleetUnavailable("needs a python3 outside /root, /tmp and /run (e.g. /usr/bin/python3)")


def check_environment() -> None:
    """Raise :class:`FleetUnavailable` unless this process can create a fleet."""
    if not hasattr(os, "geteuid") or not Path("/proc/self/ns/net").exists():
        raise FleetUnavailable("needs Linux with namespaces")
    if os.geteuid() != 0:
        raise FleetUnavailable(
            "needs root: creating network, mount and pid namespaces (ip netns, unshare, nsenter) "
            f"requires CAP_SYS_ADMIN and CAP_NET_ADMIN; running as uid {os.geteuid()}"
        )
    missing = [t for t in ("ip", "unshare", "nsenter", "sshd", "ssh-keygen", "mount") if not tool(t)]
    if missing:
        raise FleetUnavailable(f"missing tools: {', '.join(missing)} (install iproute2, util-linux, openssh-server)")
    _init_python()


# --------------------------------------------------------------------------- registry


def reap_stale_fleets(registry: Path = REGISTRY) -> list[str]:
    """Tear down every registered fleet whose owner process is dead; return their run ids.

    The owner is the process that started the fleet, or for a detached fleet its first
    host's init.  Only what the dead fleet recorded (or, failing that, what is named after
    its run id) is removed.
    """
    if not registry.is_dir():
        return []
    reaped: list[str] = []
    with _registry_lock(registry):
        for entry in sorted(registry.iterdir()):
            if entry.name.startswith(".") or not re.fullmatch(r"[0-9a-f]{4}", entry.name):
                continue
            base = entry.resolve() if entry.is_symlink() else entry
            owner = read_owner(base / "owner.pid")
            if owner is not None and alive(owner[0], owner[1]):
                continue
            log.warning("reaping stale fleet %s (owner %s is gone)", entry.name, owner)
            try:
                Fleet._from_state(json.loads((base / "fleet.json").read_text()), owner=False).stop()
            except Exception as exc:
                log.warning("stale fleet %s: %s; cleaning up by name", entry.name, exc)
                _cleanup_by_runid(entry.name)
            if entry.is_symlink() or not entry.exists():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            else:
                shutil.rmtree(entry, ignore_errors=True)
            reaped.append(entry.name)
    return reaped


def _cleanup_by_runid(runid: str) -> None:
    """Last resort for a fleet without a readable state file: everything named dp<runid>h<N>."""
    pattern = re.compile(rf"dp{runid}h\d+")
    for ns in netns_names():
        if pattern.fullmatch(ns):
            for pid in netns_pids(ns):
                kill(pid)
            _run(["ip", "link", "del", f"{ns}o"], check=False)
            _run(["ip", "netns", "del", ns], check=False)


# --------------------------------------------------------------------------- live fleets

LIVE = LiveFleets("namespace fleet")
"""The namespace fleets this process owns (torn down at exit and on SIGTERM/SIGHUP)."""


# --------------------------------------------------------------------------- the fleet


class Fleet(OwnedFleet[_HostRuntime]):
    """N real sshd hosts, each in its own network, mount, pid and uts namespaces.

    Nothing happens until :meth:`start` (or ``with Fleet(n) as fleet:``).  Teardown always
    runs: on ``stop()``, on leaving the ``with`` block, at interpreter exit, and on
    SIGTERM/SIGHUP when the process had no handler of its own.
    """

    KIND = "fleet"
    ERROR = FleetError
    LIVE = LIVE

    user: str = "root"
    """The login user on every host."""

    def __init__(
        self,
        size: int,
        *,
        base_dir: Path | None = None,
        deploy_root: str = "/srv",
        port: int = 22,
        start_timeout: float = 30.0,
    ) -> None:
        """Describe a fleet of ``size`` hosts.

        ``base_dir`` holds the fleet's keys, configs, logs and the per-host directories
        (default: ``/tmp/deployer-fleet/<runid>``).  ``deploy_root`` is where each host's
        ``host_dir`` is mounted; it must be absolute and outside the per-host system mounts
        (``/tmp``, ``/run``, ``/root``, ...); it is created on this machine if missing.
        ``start_timeout`` bounds how long :meth:`start` waits for all sshds.
        """
        if not 1 <= size <= MAX_HOSTS:
            raise ValueError(f"size must be 1..{MAX_HOSTS}, got {size}")
        root = os.path.normpath(deploy_root)
        if (
            not root.startswith("/")
            or root == "/"
            or any(root == f or root.startswith(f + "/") for f in _FORBIDDEN_ROOTS)
        ):
            raise ValueError(f"deploy_root must be an absolute path outside {', '.join(_FORBIDDEN_ROOTS)}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, got {port}")
        self.size = size
        self.deploy_root = root
        self.port = port
        self.start_timeout = start_timeout
        self.hosts: list[FleetHost] = []
        self._base_dir_arg = base_dir
        self._base_dir: Path | None = None
        self._created_base_dir = False
        self._registry_entry: Path | None = None
        self._runid: str | None = None
        self._octet: int | None = None
        self._rt: dict[str, _HostRuntime] = {}
        self._state: FleetState = "new"
        self._owner_pid: int | None = None
        self._lock = threading.RLock()
        self._netns_add_lock = threading.Lock()
        self._pkey: paramiko.PKey | None = None
        self._pkey_lock = threading.Lock()
        self._cancel = threading.Event()
        self._state_lock = threading.Lock()
        self._route_added = False

    # ------------------------------------------------------------------ properties

    def _require_base(self) -> Path:
        if self._base_dir is None:
            raise FleetError("the fleet has not been started")
        return self._base_dir

    @property
    def base_dir(self) -> Path:
        """Directory holding this fleet's state (keys, configs, logs, host dirs)."""
        return self._require_base()

    @property
    def runid(self) -> str:
        """Random 4-hex id naming this run's namespaces and interfaces (``dp<runid>h<i>``)."""
        if self._runid is None:
            raise FleetError("the fleet has not been started")
        return self._runid

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The /16 every address of this fleet lives in (routed nowhere else)."""
        if self._octet is None:
            raise FleetError("the fleet has not been started")
        return ipaddress.IPv4Network(f"10.{self._octet}.0.0/16")

    @property
    def client_key(self) -> Path:
        """ed25519 private key (OpenSSH format) authorized for ``root`` on every host."""
        return self._require_base() / "client_key"

    @property
    def known_hosts(self) -> Path:
        """known_hosts listing the exact host key of every host."""
        return self._require_base() / "known_hosts"

    def __repr__(self) -> str:
        return f"Fleet(size={self.size}, runid={self._runid}, state={self._state})"

    def host(self, name: str) -> FleetHost:
        """The host called ``name`` (``"h1"``...)."""
        try:
            return self._rt[name].host
        except KeyError:
            raise KeyError(f"no host {name!r} in this fleet (hosts: {', '.join(self._rt)})") from None

    def _host_rt(self, host: FleetHost | str) -> _HostRuntime:
        name = host if isinstance(host, str) else host.name
        self.host(name)
        rt = self._rt[name]
        if isinstance(host, FleetHost) and host != rt.host:
            raise KeyError(f"{host} does not belong to this fleet")
        return rt

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Fleet:
        """Create every host and return once each sshd completes a real SSH login.

        Hosts start in parallel.  On any failure everything created so far is torn down
        and the error is raised.  Calling ``start()`` on a running fleet does nothing.
        """
        with self._lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise FleetError(f"cannot start a fleet that is {self._state}")
            check_environment()
            reap_stale_fleets()
            self._state = "starting"
            try:
                self._reserve()
                self._owner_pid = os.getpid()
                LIVE.register(self)
                self._boot_all()
                self._state = "running"
                self._write_state()
            except BaseException:
                self.stop()
                raise
            return self

    def _reserve(self) -> None:
        """Pick a run id and a /16 nobody uses, and claim them under the registry lock."""
        with _registry_lock(REGISTRY):
            taken_ids = {p.name for p in REGISTRY.iterdir()}
            namespaces = netns_names()
            used = used_ipv4_networks()
            reserved: set[int] = set()
            for entry in REGISTRY.iterdir():
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    reserved.add(int(json.loads((entry / "fleet.json").read_text())["octet"]))
            for _ in range(1000):
                runid = secrets.token_hex(2)
                if runid not in taken_ids and not any(n.startswith(f"dp{runid}h") for n in namespaces):
                    break
            else:  # pragma: no cover - 65536 ids
                raise FleetError("no free run id")
            free = [
                o
                for o in range(32, 251)
                if o not in reserved and not any(n.overlaps(ipaddress.IPv4Network(f"10.{o}.0.0/16")) for n in used)
            ]
            if not free:
                raise FleetError("no free 10.x.0.0/16 for the fleet")
            octet = secrets.choice(free)

            entry = REGISTRY / runid
            if self._base_dir_arg is None:
                base = entry
                base.mkdir(mode=0o700)
                self._created_base_dir = True
            else:
                base = self._base_dir_arg.resolve()
                if (base / "owner.pid").exists():
                    raise FleetError(f"{base} already holds a fleet (owner.pid exists)")
                self._created_base_dir = not base.exists()
                base.mkdir(mode=0o700, parents=True, exist_ok=True)
                entry.symlink_to(base)
            self._runid, self._octet, self._base_dir, self._registry_entry = runid, octet, base, entry
            write(base / "owner.pid", owner_record(os.getpid()))

            for i in range(1, self.size + 1):
                name = f"h{i}"
                state_dir = base / "hosts" / name
                host = FleetHost(
                    name=name,
                    netns=f"dp{runid}h{i}",
                    address=f"10.{octet}.{i}.2",
                    port=self.port,
                    host_dir=state_dir / "srv",
                )
                self._rt[name] = _HostRuntime(
                    host=host, veth=f"dp{runid}h{i}o", gateway=f"10.{octet}.{i}.1", state_dir=state_dir
                )
            self.hosts = [rt.host for rt in self._rt.values()]
            # Whatever happens to a single host link, nothing for this /16 leaves the machine
            # by the default route; it also shows the /16 as taken to other fleets.
            _run(["ip", "route", "add", "blackhole", str(self.network)])
            self._route_added = True
            # The reservation (and the plan of every name) is on disk before anything else is
            # created, so a reaper can undo a start killed half-way.
            self._write_state()

    def _boot_all(self) -> None:
        base = self._require_base()
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"deployer-fleet-{self._runid}",
                "-f",
                str(self.client_key),
            ]
        )
        write(base / "hosts_file", self._hosts_file())
        rts = list(self._rt.values())
        with ThreadPoolExecutor(max_workers=min(len(rts), 32), thread_name_prefix="fleet") as pool:
            try:
                list(pool.map(self._boot_host, rts))
                self._write_known_hosts()
                self._write_state()
                deadline = time.monotonic() + self.start_timeout
                list(pool.map(lambda rt: self._wait_ready(rt, deadline), rts))
            except BaseException:
                # Ctrl-C or one host failing: the other workers give up instead of finishing.
                self._cancel.set()
                raise

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{rt.host.address}\t{rt.host.name}" for rt in self._rt.values()]
        return "\n".join(lines) + "\n"

    def _write_known_hosts(self) -> None:
        lines = []
        for rt in self._rt.values():
            keytype, blob = self._host_pubkey(rt)
            h = rt.host
            lines.append(f"{h.address} {keytype} {blob}")
            if h.port != 22:
                lines.append(f"[{h.address}]:{h.port} {keytype} {blob}")
        write(self.known_hosts, "\n".join(lines) + "\n")

    def _host_pubkey(self, rt: _HostRuntime) -> tuple[str, str]:
        keytype, blob = (rt.fleet_dir / f"{_HOST_KEY}.pub").read_text().split()[:2]
        return keytype, blob

    def _boot_host(self, rt: _HostRuntime) -> None:
        h, ns, veth = rt.host, rt.host.netns, rt.veth
        if self._cancel.is_set() or self._state != "starting":
            raise FleetError("fleet start was cancelled")
        # --- network: veth pair, /30, routes only towards the fleet's own /16.
        with self._netns_add_lock:  # first `ip netns add` sets up /run/netns; keep it serial
            _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", _INNER_IF, "netns", ns])
        _run(["ip", "addr", "add", f"{rt.gateway}/30", "dev", veth])
        _run(["ip", "link", "set", veth, "up"])
        # Per-interface forwarding (not the global switch): hosts reach each other, and
        # since they only have a route to the fleet's /16, nothing else.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding").write_text("1")
        _run(
            ["ip", "-n", ns, "-batch", "-"],
            input=(
                f"addr add {h.address}/30 dev {_INNER_IF}\n"
                f"link set {_INNER_IF} up\n"
                "link set lo up\n"
                f"route add {self.network} via {rt.gateway}\n"
            ),
        )
        # --- files: the host's private directories and sshd's own.
        for sub, mode in (
            ("srv", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
            ("run", 0o755),
            ("run/sshd", 0o755),
            ("run/fleet", 0o755),
        ):
            d = rt.state_dir / sub
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        self._keygen_host(rt)
        shutil.copyfile(f"{self.client_key}.pub", rt.fleet_dir / "authorized_keys")
        write(rt.fleet_dir / "sshd_config", self._sshd_config(h))
        sshd = tool("sshd") or "/usr/sbin/sshd"
        write(
            rt.fleet_dir / "init.py",
            f"SSHD = {sshd!r}\nCONFIG = {_IN_SSHD_CONFIG!r}\nLOG = {_IN_SSHD_LOG!r}\n" + _INIT_SCRIPT,
        )
        shadow = self._shadow_override(rt)
        # --- namespaces: mount + uts + pid, with a reaping init as PID 1.
        q = shlex.quote
        steps = [
            "set -e",
            # Copies of other namespaces' /run/netns mounts would pin those namespaces alive.
            "umount -R -l /run/netns 2>/dev/null || true",
            f"mkdir -p {q(self.deploy_root)}",
            f"mount --bind {q(str(h.host_dir))} {q(self.deploy_root)}",
            f"mount --bind {q(str(self._require_base() / 'hosts_file'))} /etc/hosts",
        ]
        if shadow is not None:
            steps.append(f"mount --bind {q(str(shadow))} /etc/shadow")
        steps += [
            f"mount --bind {q(str(rt.state_dir / 'root'))} /root",
            f"mount --bind {q(str(rt.run_dir))} /run",
            # Last: the state directory itself may live under /tmp.
            f"mount --bind {q(str(rt.state_dir / 'tmp'))} /tmp",
            f"hostname {q(h.name)}",
            f"exec {q(_init_python())} -I -S {_IN_FLEET_DIR}/init.py {q(h.name)}",
        ]
        argv = [
            "ip",
            "netns",
            "exec",
            ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            "; ".join(steps),
        ]
        with open(rt.state_dir / "launcher.log", "ab") as launcher_log:
            # A new session and no pipes: the host outlives this process when detached.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=launcher_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_HOST_ENV,
                cwd="/",
            )
        rt.proc, rt.launcher_pid = proc, proc.pid
        self._write_state()  # a reaper must know the launcher (see _teardown_one)
        deadline = time.monotonic() + 10
        while True:
            children = children_of(proc.pid)
            if children:
                rt.init_pid = children[0]
                rt.init_start = proc_start(children[0])
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"{h.name}: host init did not start: {self._tail(rt.state_dir / 'launcher.log')}")
            time.sleep(0.005)

    def _keygen_host(self, rt: _HostRuntime) -> None:
        key = rt.fleet_dir / _HOST_KEY
        for p in (key, key.with_name(f"{_HOST_KEY}.pub")):
            p.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{rt.host.name}", "-f", str(key)])

    def _shadow_override(self, rt: _HostRuntime) -> Path | None:
        """With UsePAM no, sshd refuses a '!'-locked root even for keys; unlock it inside the host only."""
        try:
            lines = Path("/etc/shadow").read_text().splitlines()
        except OSError:
            return None
        out, changed = [], False
        for line in lines:
            parts = line.split(":")
            if len(parts) > 1 and parts[0] == self.user and parts[1].startswith("!"):
                parts[1], changed = "*", True
            out.append(":".join(parts))
        if not changed:
            return None
        path = rt.state_dir / "shadow"
        write(path, "\n".join(out) + "\n", 0o640)
        return path

    def _sshd_config(self, h: FleetHost) -> str:
        return f"""\
# deployer test fleet {self._runid}, host {h.name}
Port {h.port}
ListenAddress {h.address}
AddressFamily inet
HostKey {_IN_FLEET_DIR}/{_HOST_KEY}
AuthorizedKeysFile {_IN_FLEET_DIR}/authorized_keys
PidFile {_IN_SSHD_PID}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 50
AllowAgentForwarding no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
UseDNS no
LogLevel VERBOSE
"""

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _client_pkey(self) -> paramiko.PKey:
        import paramiko

        with self._pkey_lock:  # not self._lock: start() holds that while workers log in
            if self._pkey is None:
                self._pkey = paramiko.Ed25519Key.from_private_key_file(str(self.client_key))
            return self._pkey

    def _handshake(self, rt: _HostRuntime, timeout: float) -> None:
        """One real SSH login: key exchange, host key == the host's current key, pubkey auth."""
        import paramiko

        keytype, blob = self._host_pubkey(rt)
        sock = socket.create_connection((rt.host.address, rt.host.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
            if key.get_name() != keytype or key.get_base64() != blob:
                raise FleetError(f"{rt.host.name}: sshd presented an unexpected host key")
            transport.auth_publickey(self.user, self._client_pkey())
            if not transport.is_authenticated():
                raise FleetError(f"{rt.host.name}: public key login failed")
        finally:
            transport.close()
            sock.close()

    def _wait_ready(self, rt: _HostRuntime, deadline: float) -> None:
        last: Exception | None = None
        while True:
            if self._cancel.is_set():
                raise FleetError("fleet start was cancelled")
            if not alive(rt.init_pid, rt.init_start):
                raise FleetError(f"{rt.host.name}: host init exited: {self._tail(rt.state_dir / 'launcher.log')}")
            remaining = deadline - time.monotonic()
            try:
                self._handshake(rt, timeout=max(0.5, min(5.0, remaining)))
                return
            except Exception as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise FleetError(
                    f"{rt.host.name}: sshd on {rt.host.address}:{rt.host.port} not ready: {last!r}; "
                    f"sshd.log: {self._tail(rt.sshd_log)}"
                )
            time.sleep(0.02)

    def _teardown_shared(self, *, clean: bool) -> None:
        if self._route_added:
            _run(["ip", "route", "del", "blackhole", str(self.network)], check=False)
            self._route_added = False
        if clean:
            self._remove_files()

    def _teardown_one(self, rt: _HostRuntime) -> list[str]:
        h = rt.host
        in_netns = netns_pids(h.netns)
        # The launcher (`unshare`, parent of the init) is spared until it has reaped the init:
        # killed first, it would hand the init to a reaper of unknown diligence (this kind of
        # VM's PID 1 never reaps, leaving a zombie for good).
        launcher = rt.launcher_pid if rt.launcher_pid in in_netns else None
        # The init is PID 1 of the host's pid namespace: when it dies the kernel kills every
        # process of that namespace, sessions and orphaned daemons included.
        if rt.init_pid is not None and alive(rt.init_pid, rt.init_start):
            kill(rt.init_pid)
        deadline = time.monotonic() + 10
        # Then anything else that joined the network namespace (e.g. `ip netns exec` by hand).
        while time.monotonic() < deadline:
            pids = [p for p in netns_pids(h.netns) if p != launcher]
            if not pids:
                break
            for pid in pids:
                kill(pid)
            time.sleep(0.01)
        if rt.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rt.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        elif launcher is not None:
            while alive(launcher) and time.monotonic() < deadline:
                time.sleep(0.01)
            # A fleet started by another process: its launcher may have become our child
            # (we are a subreaper); reap it so it does not linger as a zombie.
            reap_if_child(launcher, time.monotonic() + 1)
        # Last resort, for a launcher that would not exit.
        for _ in range(100):
            pids = netns_pids(h.netns)
            if not pids:
                break
            for pid in pids:
                kill(pid)
            time.sleep(0.01)
        if rt.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rt.proc.wait(timeout=5)
        _run(["ip", "link", "del", rt.veth], check=False)
        _run(["ip", "netns", "del", h.netns], check=False)
        leftovers = [f"{h.name}: pid {pid} in netns {h.netns}" for pid in netns_pids(h.netns)]
        if h.netns in netns_names():
            leftovers.append(f"{h.name}: netns {h.netns}")
        if link_exists(rt.veth):
            leftovers.append(f"{h.name}: link {rt.veth}")
        if alive(rt.init_pid, rt.init_start):
            leftovers.append(f"{h.name}: init pid {rt.init_pid}")
        return leftovers

    def _remove_files(self) -> None:
        base = self._base_dir
        if base is None:
            return
        if base.exists():
            # Never recurse into something mounted (there should be nothing: host mounts
            # live in the hosts' own mount namespaces).
            mounts = Path("/proc/self/mounts").read_text().split("\n")
            prefix = str(base) + "/"
            if any(len(m.split()) > 1 and (m.split()[1] + "/").startswith(prefix) for m in mounts):
                raise FleetError(f"{base}: something is mounted inside; not removing it")
            if self._created_base_dir:
                shutil.rmtree(base, ignore_errors=True)
            else:
                shutil.rmtree(base / "hosts", ignore_errors=True)
                for name in ("owner.pid", "fleet.json", "client_key", "client_key.pub", "known_hosts", "hosts_file"):
                    (base / name).unlink(missing_ok=True)
        entry = self._registry_entry
        if entry is not None and entry.is_symlink():
            entry.unlink(missing_ok=True)

    # ------------------------------------------------------------------ persistence

    def _state_json(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "runid": self._runid,
            "octet": self._octet,
            "size": self.size,
            "port": self.port,
            "deploy_root": self.deploy_root,
            "user": self.user,
            "base_dir": str(self._base_dir),
            "created_base_dir": self._created_base_dir,
            "registry_entry": str(self._registry_entry),
            "route_added": self._route_added,
            "hosts": [rt.to_json() for rt in self._rt.values()],
        }

    def _write_state(self) -> None:
        with self._state_lock:
            if self._base_dir is not None and self._base_dir.exists():
                write_json_atomic(self._base_dir / "fleet.json", self._state_json())

    def save(self, path: Path) -> None:
        """Write what another process needs to use or stop this fleet (see :meth:`load`)."""
        with self._lock:
            if self._state != "running":
                raise FleetError("only a running fleet can be saved")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, self._state_json())

    @classmethod
    def load(cls, path: Path) -> Fleet:
        """A handle on a fleet saved by :meth:`save`, possibly by another process.

        The handle does not own the fleet: nothing is torn down when this process exits;
        call :meth:`stop` to tear it down.
        """
        return cls._from_state(json.loads(path.read_text()), owner=False)

    @classmethod
    def _from_state(cls, data: dict[str, Any], *, owner: bool) -> Fleet:
        if data.get("version") != _STATE_VERSION:
            raise FleetError(f"unsupported fleet state version {data.get('version')!r}")
        fleet = cls(int(data["size"]), deploy_root=str(data["deploy_root"]), port=int(data["port"]))
        fleet._runid = str(data["runid"])
        fleet._octet = int(data["octet"])
        fleet._base_dir = Path(data["base_dir"])
        fleet._created_base_dir = bool(data["created_base_dir"])
        fleet._registry_entry = Path(data["registry_entry"])
        fleet._route_added = bool(data.get("route_added", True))
        for item in data["hosts"]:
            rt = _HostRuntime.from_json(item)
            fleet._rt[rt.host.name] = rt
        fleet.hosts = [rt.host for rt in fleet._rt.values()]
        fleet._state = "running"
        if owner:
            fleet._owner_pid = os.getpid()
            LIVE.register(fleet)
        return fleet

    def detach(self) -> None:
        """Let the fleet outlive this process (for ``fleet.up``): no teardown at exit.

        Ownership passes to the first host's init, so :func:`reap_stale_fleets` leaves the
        fleet alone while it runs.  Tear it down later with ``Fleet.load(path).stop()``.
        """
        with self._lock:
            if self._state != "running":
                raise FleetError("only a running fleet can be detached")
            first = next(iter(self._rt.values()))
            if first.init_pid is None:
                raise FleetError("the first host has no init")
            write(self.base_dir / "owner.pid", f"{first.init_pid} {first.init_start}\n")
            self._owner_pid = None
            LIVE.unregister(self)
            for rt in self._rt.values():
                rt.proc = None

    def serve(self, poll: float = 1.0) -> None:
        """Block until SIGINT, SIGTERM or SIGHUP (or every host died), then :meth:`stop`.

        For a foreground demo fleet; must be called from the main thread.
        """
        done = threading.Event()
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, lambda signum, frame: done.set()) for s in sigs}
        try:
            while not done.wait(poll):
                if not any(alive(rt.init_pid, rt.init_start) for rt in self._rt.values()):
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()

    # ------------------------------------------------------------------ inside a host

    def exec(
        self, host: FleetHost | str, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sh -c command`` inside the host (its net, mount, uts and pid namespaces).

        For tests to inspect files, ports and processes the way the host sees them; this
        does not go through SSH.  Raises ``CalledProcessError`` on a non-zero exit when
        ``check``, and ``TimeoutExpired`` (after killing the command) past ``timeout``.
        """
        rt = self._host_rt(host)
        if not alive(rt.init_pid, rt.init_start) or rt.init_pid is None:
            raise FleetError(f"{rt.host.name} is not running")
        argv = ["nsenter", "-t", str(rt.init_pid), "-n", "-m", "-u", "-p", "--", "/bin/sh", "-c", command]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=_HOST_ENV,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The process group spans into the host's pid namespace: the command dies too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, out, err)
        return result

    # ------------------------------------------------------------------ faults

    def cut_link(self, host: FleetHost | str) -> None:
        """Cut the host's network: new connections time out, established ones stall.

        The host side of the veth goes down, so the root side keeps its route and packets
        are silently dropped (downing the root side would remove the route instead, and
        connections would fail at once rather than hang like a real cut).
        """
        rt = self._host_rt(host)
        _run(["ip", "-n", rt.host.netns, "link", "set", _INNER_IF, "down"])

    def restore_link(self, host: FleetHost | str) -> None:
        """Undo :meth:`cut_link`; returns once the link is up again (bounded)."""
        rt = self._host_rt(host)
        _run(["ip", "-n", rt.host.netns, "link", "set", _INNER_IF, "up"])
        deadline = time.monotonic() + 5
        oper = Path(f"/sys/class/net/{rt.veth}/operstate")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if oper.read_text().strip() == "up":
                    return
            time.sleep(0.01)
        raise FleetError(f"{rt.host.name}: link did not come back up")

    def _sshd_running(self, rt: _HostRuntime) -> bool:
        return (
            self.exec(
                rt.host, f'kill -0 "$(cat {_IN_SSHD_PID} 2>/dev/null)" 2>/dev/null', check=False, timeout=10
            ).returncode
            == 0
        )

    def stop_sshd(self, host: FleetHost | str) -> None:
        """Stop the host's listening sshd (by its pid file): new connections are refused.

        The host itself (its init and any deployed daemons) keeps running.
        """
        rt = self._host_rt(host)
        self.exec(
            rt.host,
            f'pid=$(cat {_IN_SSHD_PID} 2>/dev/null) || exit 0; kill "$pid" 2>/dev/null || exit 0; '
            'i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; '
            f'kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; rm -f {_IN_SSHD_PID}',
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((rt.host.address, rt.host.port), timeout=1).close()
            except ConnectionRefusedError:
                return
            except OSError:
                return  # unreachable (cut link): nothing listens either way
            time.sleep(0.02)
        raise FleetError(f"{rt.host.name}: sshd still accepts connections")

    def start_sshd(self, host: FleetHost | str) -> None:
        """Start the host's sshd again; returns once it completes an SSH login (bounded)."""
        rt = self._host_rt(host)
        if not self._sshd_running(rt):
            sshd = tool("sshd") or "/usr/sbin/sshd"
            self.exec(rt.host, f"{shlex.quote(sshd)} -f {_IN_SSHD_CONFIG} -E {_IN_SSHD_LOG}", timeout=30)
        self._wait_ready(rt, time.monotonic() + self.start_timeout)

    def regenerate_host_key(self, host: FleetHost | str) -> None:
        """Give the host a new host key and restart its sshd; ``known_hosts`` keeps the old one."""
        rt = self._host_rt(host)
        self._keygen_host(rt)
        self.stop_sshd(rt.host)
        self.start_sshd(rt.host)

    def fill_disk(self, host: FleetHost | str, path: str = "/srv", size: str = "16m") -> None:
        """Mount a ``size`` tmpfs over ``path`` inside the host (for 'disk full' tests).

        The mount exists only in the host's mount namespace; :meth:`restore_disk` or
        :meth:`stop` removes it.
        """
        rt = self._host_rt(host)
        if not re.fullmatch(r"\d+[kmg%]?", size):
            raise ValueError(f"bad tmpfs size {size!r}")
        q = shlex.quote(path)
        self.exec(rt.host, f"mkdir -p {q} && mount -t tmpfs -o size={size},mode=0755 fleet-fill {q}")
        rt.fills.append(path)

    def restore_disk(self, host: FleetHost | str, path: str = "/srv") -> None:
        """Remove the tmpfs :meth:`fill_disk` mounted over ``path``."""
        rt = self._host_rt(host)
        if path in rt.fills:
            self.exec(rt.host, f"umount {shlex.quote(path)}")
            rt.fills.remove(path)

    # ------------------------------------------------------------------ clients

    def ssh_argv(self, host: FleetHost | str) -> list[str]:
        """argv for OpenSSH ``ssh`` to the host with strict host key checking (append a command)."""
        h = self._host_rt(host).host
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(h.port),
            f"{self.user}@{h.address}",
        ]
