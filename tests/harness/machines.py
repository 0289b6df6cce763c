"""A fleet of real Debian machines that boot systemd, for end-to-end tests and demos.

Where :mod:`tests.harness.fleet` gives each host only its own network, files and sshd, a
*machine* is a whole booted Debian: ``systemd-nspawn --boot`` runs systemd as its PID 1,
with journald, logind, dbus, sshd, sudo, a non-root ``deploy`` user and its own users,
units and journal.  It can be rebooted gracefully and have its power cut, and it comes
back with its disk intact, as a bare-metal host does.  The recipe is the one proven in
``shared/design/machines.md``:

* **one root filesystem**, built once by ``scripts/machines-rootfs.sh`` and cached outside
  the repository (``/var/cache/deployer-machines/bookworm-<recipe hash>``); each machine
  boots from an **overlayfs** over it, so a machine costs its own changes only;
* **its own network namespace** with a veth pair and a private /30 inside a /16 reserved
  for the run, allocated under the namespace fleet's registry lock, so machine fleets and
  namespace fleets never take the same addresses;
* ``--register=no --keep-unit --network-namespace-path``: this host is not booted with
  systemd, so nspawn must neither talk to machined nor create its own network;
* per machine, the harness writes a machine-id, an ed25519 host key and the client key
  into ``root`` and ``deploy``'s ``authorized_keys``, so ``known_hosts`` is exact and
  clients connect with strict host key checking, as users must.

Everything is named after a random run id (``dm<4 hex>``) and recorded under
``/tmp/deployer-machines/<runid>``: teardown (``stop()``, leaving the ``with`` block, exit,
SIGTERM/SIGHUP) removes only what this run created, and :func:`reap_stale_machines`
cleans up after an owner that was killed.

Typical use::

    with MachineFleet(2) as fleet:
        m1 = fleet.hosts[0]
        fleet.exec(m1, ["systemctl", "is-active", "ssh"])
        fleet.reboot(m1)            # systemctl reboot inside; back when sshd answers
        fleet.power_cut(m1)         # every process of m1 dies at once; boots again

A power cut here kills every process of the machine at once (SIGKILL to its systemd), but
the page cache belongs to this kernel, which keeps running: data written without fsync is
not lost as it could be on real hardware.  Tests that need durability should fsync anyway.
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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import netns
from tests.harness.fleet import REGISTRY as NAMESPACE_FLEET_REGISTRY

__all__ = [
    "REGISTRY",
    "ROOTFS_SCRIPT",
    "Machine",
    "MachineError",
    "MachineFleet",
    "MachinesUnavailable",
    "check_environment",
    "ensure_rootfs",
    "reap_stale_machines",
    "rootfs_path",
]

log = logging.getLogger(__name__)

#: Where every machine fleet on this machine is registered (one entry per run id).
REGISTRY = Path("/tmp/deployer-machines")
#: Builds and caches the root filesystem (its recipe's hash names the cache directory).
ROOTFS_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "machines-rootfs.sh"
#: Most machines one fleet can have (the index is the third octet of its address).
MAX_MACHINES = 250
#: The non-root login every machine has (created in the root filesystem).
DEPLOY_USER = "deploy"
#: ``systemd-nspawn``'s exit status when the machine's systemd asked for a reboot.
REBOOT_EXIT = 133

# What exec() runs with inside a machine: a root login's environment, not the caller's.
_MACHINE_ENV = {"PATH": netns.STD_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}
_INNER_IF = "eth0"
_HOST_KEY = "etc/ssh/ssh_host_ed25519_key"
_STATE_VERSION = 1
_DETACHED = "detached"
_SPAWN_STEPS = ("setsid", "nsenter", "setpriv")


class MachinesUnavailable(RuntimeError):
    """This machine cannot run machines (not root, no namespaces, no root filesystem)."""


class MachineError(netns.ToolError):
    """A machine operation failed (did not boot, did not reboot, teardown left something)."""


@dataclass(frozen=True)
class Machine:
    """One machine of a fleet, as a test or an inventory sees it."""

    name: str
    """Stable logical name and hostname: ``m1``, ``m2``, ..."""
    address: str
    """IPv4 address of its ``eth0``, where its sshd listens, reachable from this machine."""
    port: int
    """sshd port (22)."""
    netns: str
    """Its network namespace (``ip netns``), unique per run."""


@dataclass
class _Runtime:
    """Mutable bookkeeping for one machine (never handed out)."""

    machine: Machine
    veth: str
    gateway: str
    dir: Path
    nspawn_pid: int | None = None
    nspawn_start: int | None = None
    leader_pid: int | None = None
    leader_start: int | None = None
    boots: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # Held while booting and while tearing down: a reboot in another thread can never start
    # the machine again behind the back of a teardown.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        """Where the machine's overlay is mounted: its ``/`` seen from outside."""
        return self.dir / "root"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    def to_json(self) -> dict[str, Any]:
        m = self.machine
        return {
            "name": m.name,
            "address": m.address,
            "port": m.port,
            "netns": m.netns,
            "veth": self.veth,
            "gateway": self.gateway,
            "dir": str(self.dir),
            "nspawn_pid": self.nspawn_pid,
            "nspawn_start": self.nspawn_start,
            "leader_pid": self.leader_pid,
            "leader_start": self.leader_start,
            "boots": self.boots,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Runtime:
        def opt(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        machine = Machine(
            name=str(data["name"]), address=str(data["address"]), port=int(data["port"]), netns=str(data["netns"])
        )
        return cls(
            machine=machine,
            veth=str(data["veth"]),
            gateway=str(data["gateway"]),
            dir=Path(data["dir"]),
            nspawn_pid=opt("nspawn_pid"),
            nspawn_start=opt("nspawn_start"),
            leader_pid=opt("leader_pid"),
            leader_start=opt("leader_start"),
            boots=int(data.get("boots", 0)),
        )


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    return netns.tool(name)


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool on this machine with a clean environment; raise MachineError on failure."""
    return netns.run(argv, check=check, timeout=timeout, input=input, error=MachineError)


def _ns_pid_one(pid: int) -> bool:
    """True if ``pid`` is PID 1 of a pid namespace nested in ours (a container's init)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return len(ids) == 2 and ids[1] == "1"
    except OSError:
        pass
    return False


def _mounted(path: Path) -> bool:
    target = str(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == target:
                return True
    return False


def _mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    with contextlib.suppress(OSError):
        return [
            f[1] for f in (line.split() for line in Path("/proc/self/mounts").read_text().splitlines())
            if len(f) > 1 and f[1].startswith(prefix)
        ]  # fmt: skip
    return []


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def rootfs_path() -> Path:
    """Where the cached root filesystem for the current recipe is (built or not)."""
    out = _run(["bash", str(ROOTFS_SCRIPT), "--path"]).stdout.strip()
    return Path(out)


def ensure_rootfs(timeout: float = 1800) -> Path:
    """Return the cached root filesystem, building it first if absent (minutes, once).

    Also installs ``debootstrap`` and ``systemd-container`` when missing.  Parallel callers
    wait for one build (the script holds a lock).
    """
    path = rootfs_path()
    if path.is_dir() and _tool("systemd-nspawn"):
        return path
    log.warning("building the machines' root filesystem %s (once; takes minutes)", path)
    proc = subprocess.run(
        ["bash", str(ROOTFS_SCRIPT)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=netns.TOOL_ENV,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0 or not path.is_dir():
        raise MachinesUnavailable(
            f"{ROOTFS_SCRIPT} could not build {path} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return path


def check_environment() -> None:
    """Raise :class:`MachinesUnavailable` unless this process can boot machines (tools aside)."""
    if not hasattr(os, "geteuid") or not Path("/proc/self/ns/net").exists():
        raise MachinesUnavailable("needs Linux with namespaces")
    if os.geteuid() != 0:
        raise MachinesUnavailable(
            "needs root: overlay mounts, network namespaces and systemd-nspawn require "
            f"CAP_SYS_ADMIN and CAP_NET_ADMIN; running as uid {os.geteuid()}"
        )
    missing = [t for t in ("ip", "nsenter", "mount", "umount", "ssh-keygen", "bash", "flock") if not _tool(t)]
    if missing:
        raise MachinesUnavailable(f"missing tools: {', '.join(missing)} (install iproute2, util-linux, openssh-client)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        with contextlib.suppress(MachineError):
            _run(["modprobe", "overlay"], check=False)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise MachinesUnavailable("the kernel has no overlayfs")


# --------------------------------------------------------------------------- registry


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    """Serialise run ids, reaping and registry entries between machine fleets."""
    with netns.registry_lock(REGISTRY, MachinesUnavailable):
        yield


def reap_stale_machines() -> list[str]:
    """Tear down every registered machine fleet whose owner process is dead; return their run ids."""
    if not REGISTRY.is_dir():
        return []
    reaped: list[str] = []
    with _registry_lock():
        for entry in sorted(REGISTRY.iterdir()):
            if not re.fullmatch(r"[0-9a-f]{4}", entry.name):
                continue
            if _owned(entry):
                continue
            owner = netns.read_owner(entry / "owner.pid")
            log.warning("reaping stale machine fleet %s (owner %s is gone)", entry.name, owner)
            try:
                state = json.loads((entry / "machines.json").read_text())
                MachineFleet._from_state(state, owner=False).stop()
            except Exception as exc:
                log.warning("stale machine fleet %s: %s", entry.name, exc)
            if _mounts_under(entry):
                # Deleting through a mounted overlay would be wrong; the next reaper retries.
                log.warning("stale machine fleet %s: still mounted: %s", entry.name, _mounts_under(entry))
                continue
            shutil.rmtree(entry, ignore_errors=True)
            reaped.append(entry.name)
    return reaped


def _owned(entry: Path) -> bool:
    """True while the fleet of registry ``entry`` has an owner: its process, or if detached, a machine."""
    try:
        record = (entry / "owner.pid").read_text().strip()
    except OSError:
        return False
    if record == _DETACHED:
        # Nobody owns a detached fleet; it lives as long as any of its machines does.
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            for item in json.loads((entry / "machines.json").read_text())["machines"]:
                if netns.alive(item.get("nspawn_pid"), item.get("nspawn_start")):
                    return True
        return False
    owner = netns.read_owner(entry / "owner.pid")
    return owner is not None and netns.alive(owner[0], owner[1])


# --------------------------------------------------------------------------- live fleets

LIVE = netns.LiveFleets("machine fleet")
"""The machine fleets this process owns (torn down at exit and on SIGTERM/SIGHUP)."""


# --------------------------------------------------------------------------- the fleet


class MachineFleet(netns.OwnedFleet[_Runtime]):
    """``n`` booted Debian machines (systemd as PID 1), each in its own network namespace.

    Nothing happens until :meth:`start` (or ``with MachineFleet(n) as fleet:``).  Teardown
    always runs: on :meth:`stop`, on leaving the ``with`` block, at interpreter exit and on
    SIGTERM/SIGHUP; a fleet whose owner was SIGKILLed is reaped by the next one started.
    """

    KIND = "machine fleet"
    ERROR = MachineError
    LIVE = LIVE

    user: str = DEPLOY_USER
    """The non-root login every machine has (``root`` also accepts the client key)."""
    deploy_root: str = "/srv"
    """Where deployments go on a machine (root's: prepare it, or let ``deployer setup`` do it)."""

    def __init__(
        self, size: int, *, boot_timeout: float = 180.0, port: int = 22, shared_dir: Path | None = None
    ) -> None:
        """Describe ``size`` machines; ``boot_timeout`` bounds each boot (start, reboot, power cut).

        ``shared_dir`` (absolute, on this machine) is created world-writable and bind-mounted
        at the same path in every machine: a stand-in for the database that real app
        servers share (``{runid}`` in it is replaced by the fleet's run id).
        """
        if not 1 <= size <= MAX_MACHINES:
            raise ValueError(f"size must be 1..{MAX_MACHINES}, got {size}")
        if shared_dir is not None and not shared_dir.is_absolute():
            raise ValueError(f"shared_dir must be absolute, got {shared_dir}")
        self.size = size
        self._shared_arg = shared_dir
        self.shared_dir: Path | None = None
        self.boot_timeout = boot_timeout
        self.port = port
        self.hosts: list[Machine] = []
        self._rt: dict[str, _Runtime] = {}
        self._runid: str | None = None
        self._octet: int | None = None
        self._base: Path | None = None
        self._rootfs: Path | None = None
        self._route_added = False
        self._state: netns.FleetState = "new"
        self._owner_pid: int | None = None
        self._lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._cancel = threading.Event()

    # ------------------------------------------------------------------ properties

    def _require_base(self) -> Path:
        if self._base is None:
            raise MachineError("the machine fleet has not been started")
        return self._base

    @property
    def runid(self) -> str:
        """Random 4-hex id naming this run's namespaces and links (``dm<runid>m<i>``)."""
        if self._runid is None:
            raise MachineError("the machine fleet has not been started")
        return self._runid

    @property
    def base_dir(self) -> Path:
        """This fleet's state: keys, known_hosts, and per machine its overlay and console log."""
        return self._require_base()

    @property
    def client_key(self) -> Path:
        """ed25519 private key authorized for ``root`` and ``deploy`` on every machine."""
        return self._require_base() / "client_key"

    @property
    def known_hosts_path(self) -> Path:
        """known_hosts listing the exact host key of every machine (for strict checking)."""
        return self._require_base() / "known_hosts"

    @property
    def known_hosts(self) -> Path:
        """Same as :attr:`known_hosts_path` (the namespace fleet's name, for shared helpers)."""
        return self.known_hosts_path

    def __repr__(self) -> str:
        return f"MachineFleet(size={self.size}, runid={self._runid}, state={self._state})"

    def host(self, name: str) -> Machine:
        """The machine called ``name`` (``"m1"``...)."""
        try:
            return self._rt[name].machine
        except KeyError:
            raise KeyError(f"no machine {name!r} in this fleet (machines: {', '.join(self._rt)})") from None

    def _host_rt(self, host: Machine | str) -> _Runtime:
        name = host if isinstance(host, str) else host.name
        self.host(name)
        return self._rt[name]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MachineFleet:
        """Boot every machine; return once each runs (``is-system-running``) and its sshd answers.

        Builds the root filesystem first if it is not cached.  On any failure everything
        created so far is torn down and the error is raised.
        """
        with self._lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise MachineError(f"cannot start a machine fleet that is {self._state}")
            check_environment()
            self._rootfs = ensure_rootfs()
            reap_stale_machines()
            self._state = "starting"
            try:
                self._reserve()
                self._owner_pid = os.getpid()
                LIVE.register(self)
                self._boot_all()
                self._state = "running"
                self._write_state()
            except BaseException:
                self._cancel.set()
                self.stop()
                raise
            return self

    def _reserve(self) -> None:
        """Pick a run id and a free /16, and record the plan before creating anything."""
        # The namespace fleet's lock too: both kinds of fleet take /16s from the same 10/8.
        with _registry_lock(), netns.registry_lock(NAMESPACE_FLEET_REGISTRY, MachinesUnavailable):
            namespaces = netns.netns_names()
            used = netns.used_ipv4_networks()
            for _ in range(1000):
                runid = secrets.token_hex(2)
                if not (REGISTRY / runid).exists() and not any(n.startswith(f"dm{runid}m") for n in namespaces):
                    break
            else:  # pragma: no cover - 65536 ids
                raise MachineError("no free run id")
            free = [o for o in range(32, 251) if not any(n.overlaps(_net(o)) for n in used)]
            if not free:
                raise MachineError("no free 10.x.0.0/16 for the machines")
            octet = secrets.choice(free)
            base = REGISTRY / runid
            base.mkdir(mode=0o700)
            self._runid, self._octet, self._base = runid, octet, base
            if self._shared_arg is not None:
                self.shared_dir = Path(str(self._shared_arg).replace("{runid}", runid))
            netns.write(base / "owner.pid", netns.owner_record(os.getpid()))
            for i in range(1, self.size + 1):
                name = f"m{i}"
                machine = Machine(name=name, address=f"10.{octet}.{i}.2", port=self.port, netns=f"dm{runid}m{i}")
                self._rt[name] = _Runtime(
                    machine=machine, veth=f"dm{runid}m{i}o", gateway=f"10.{octet}.{i}.1", dir=base / name
                )
            self.hosts = [rt.machine for rt in self._rt.values()]
            # Nothing for this /16 leaves by the default route, and other fleets see it taken.
            _run(["ip", "route", "add", "blackhole", str(_net(octet))])
            self._route_added = True
            self._write_state()

    def _boot_all(self) -> None:
        base = self._require_base()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"deployer-machines-{self._runid}",
              "-f", str(self.client_key)])  # fmt: skip
        if self.shared_dir is not None:
            self.shared_dir.mkdir(parents=True, exist_ok=True)
            self.shared_dir.chmod(0o1777)
        rts = list(self._rt.values())
        with ThreadPoolExecutor(max_workers=min(len(rts), 16), thread_name_prefix="machines") as pool:
            try:
                list(pool.map(self._prepare, rts))
                self._write_known_hosts()
                list(pool.map(self._launch, rts))
                self._write_state()
                list(pool.map(self._wait_booted, rts))
            except BaseException:
                self._cancel.set()
                raise
        log.info("machines %s up in %s", ", ".join(self._rt), base)

    def _prepare(self, rt: _Runtime) -> None:
        """Network, overlay and the machine's own files (identity, keys, hostname)."""
        if self._cancel.is_set():
            raise MachineError("machine fleet start was cancelled")
        m, ns = rt.machine, rt.machine.netns
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", rt.veth, "type", "veth", "peer", "name", _INNER_IF, "netns", ns])
        _run(["ip", "addr", "add", f"{rt.gateway}/30", "dev", rt.veth])
        _run(["ip", "link", "set", rt.veth, "up"])
        # Per-link forwarding: machines reach each other; they have no route anywhere else.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{rt.veth}/forwarding").write_text("1")
        _run(
            ["ip", "-n", ns, "-batch", "-"],
            input=(
                f"addr add {m.address}/30 dev {_INNER_IF}\n"
                f"link set {_INNER_IF} up\n"
                "link set lo up\n"
                f"route add {_net(self._octet or 0)} via {rt.gateway}\n"
            ),
        )
        for sub in ("upper", "work", "root"):
            (rt.dir / sub).mkdir(parents=True, exist_ok=True)
        rt.dir.chmod(0o700)
        _run(
            [
                "mount", "-t", "overlay", f"deployer-{m.netns}",
                "-o", f"lowerdir={self._rootfs},upperdir={rt.dir / 'upper'},workdir={rt.dir / 'work'}",
                str(rt.root),
            ]
        )  # fmt: skip
        root = rt.root
        netns.write(root / "etc/hostname", f"{m.name}\n")
        netns.write(root / "etc/hosts", self._hosts_file())
        netns.write(root / "etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
        key = root / _HOST_KEY
        for p in (key, key.with_name(key.name + ".pub")):
            p.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{m.name}", "-f", str(key)])
        pub = Path(f"{self.client_key}.pub").read_text()
        uid, gid = _passwd_ids(root, DEPLOY_USER)
        for home, owner in ((root / "root", (0, 0)), (root / "home" / DEPLOY_USER, (uid, gid))):
            ssh_dir = home / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            netns.write(ssh_dir / "authorized_keys", pub, 0o600)
            for p in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(p, *owner)

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{rt.machine.address}\t{rt.machine.name}" for rt in self._rt.values()]
        return "\n".join(lines) + "\n"

    def _host_pubkey(self, rt: _Runtime) -> tuple[str, str]:
        keytype, blob = (rt.root / f"{_HOST_KEY}.pub").read_text().split()[:2]
        return keytype, blob

    def _write_known_hosts(self) -> None:
        lines = []
        for rt in self._rt.values():
            keytype, blob = self._host_pubkey(rt)
            m = rt.machine
            lines.append(
                f"{m.address} {keytype} {blob}" if m.port == 22 else f"[{m.address}]:{m.port} {keytype} {blob}"
            )
        netns.write(self.known_hosts_path, "\n".join(lines) + "\n")

    def _launch(self, rt: _Runtime) -> None:
        """Start ``systemd-nspawn --boot`` on the machine's overlay; return once its systemd runs."""
        with rt.lock:
            if self._cancel.is_set() or self._state in ("stopping", "stopped"):
                raise MachineError(f"{rt.machine.name}: not booting, the machine fleet is being torn down")
            self._launch_locked(rt)

    def _launch_locked(self, rt: _Runtime) -> None:
        m = rt.machine
        argv = [
            _tool("systemd-nspawn") or "systemd-nspawn",
            "--quiet",
            f"--directory={rt.root}",
            "--boot",
            # This host is not booted with systemd: no machined to register with, no
            # transient scope, and the network namespace is ours, made beforehand.
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{m.netns}",
            f"--machine={m.netns}",
            f"--hostname={m.name}",
            # The machine's journal stays inside it (persistent, in its overlay).
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=read-only",
        ]
        if self.shared_dir is not None:
            argv.append(f"--bind={self.shared_dir}")
        with open(rt.console_log, "ab") as console:
            console.write(f"---- boot {rt.boots + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            console.flush()
            # Own session: a Ctrl-C to the test run must not reach nspawn, which would
            # pass it to the machine as ctrl-alt-del (a reboot).
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=netns.TOOL_ENV,
                cwd="/",
            )
        rt.proc, rt.nspawn_pid, rt.nspawn_start = proc, proc.pid, netns.proc_start(proc.pid)
        rt.leader_pid = rt.leader_start = None
        rt.boots += 1
        self._write_state()  # a reaper must know nspawn even if we die right now
        deadline = time.monotonic() + self.boot_timeout
        while True:
            for child in netns.children_of(proc.pid):
                if _ns_pid_one(child):
                    rt.leader_pid, rt.leader_start = child, netns.proc_start(child)
                    self._write_state()
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise MachineError(
                    f"{m.name}: systemd-nspawn did not start the machine (exit {proc.poll()}): {_tail(rt.console_log)}"
                )
            time.sleep(0.01)

    def _wait_booted(self, rt: _Runtime) -> None:
        deadline = time.monotonic() + self.boot_timeout
        self._wait_sshd(rt, deadline)
        self._wait_running(rt, deadline)

    def _alive(self, rt: _Runtime) -> bool:
        return netns.alive(rt.leader_pid, rt.leader_start)

    def _check_up(self, rt: _Runtime) -> None:
        if self._cancel.is_set():
            raise MachineError("machine fleet start was cancelled")
        if not self._alive(rt):
            raise MachineError(f"{rt.machine.name} is not running: {_tail(rt.console_log)}")

    def _wait_sshd(self, rt: _Runtime, deadline: float) -> None:
        """Until one real SSH login as root succeeds against the machine's own host key."""
        import paramiko

        keytype, blob = self._host_pubkey(rt)
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.client_key))
        last: Exception | None = None
        while True:
            self._check_up(rt)
            timeout = max(0.5, min(5.0, deadline - time.monotonic()))
            try:
                with socket.create_connection((rt.machine.address, rt.machine.port), timeout=timeout) as sock:
                    transport = paramiko.Transport(sock)
                    try:
                        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
                        transport.start_client(timeout=timeout)
                        key = transport.get_remote_server_key()
                        if (key.get_name(), key.get_base64()) != (keytype, blob):
                            raise MachineError(f"{rt.machine.name}: sshd presented an unexpected host key")
                        transport.auth_publickey("root", pkey)
                        if transport.is_authenticated():
                            return
                    finally:
                        transport.close()
            except MachineError:
                raise
            except Exception as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise MachineError(
                    f"{rt.machine.name}: sshd on {rt.machine.address}:{rt.machine.port} did not answer "
                    f"within {self.boot_timeout:.0f}s: {last!r}; console: {_tail(rt.console_log)}"
                )
            time.sleep(0.1)

    def _wait_running(self, rt: _Runtime, deadline: float) -> str:
        state = "unknown"
        while True:
            self._check_up(rt)
            with contextlib.suppress(subprocess.TimeoutExpired, MachineError):
                state = self.exec(rt.machine, ["systemctl", "is-system-running"], check=False, timeout=10).stdout
                state = state.strip() or "unknown"
                if state in ("running", "degraded"):
                    return state
            if time.monotonic() >= deadline:
                failed = self.exec(rt.machine, ["systemctl", "--failed", "--no-legend"], check=False, timeout=10)
                raise MachineError(
                    f"{rt.machine.name}: systemd did not finish booting within {self.boot_timeout:.0f}s "
                    f"(is-system-running: {state}); failed units: {failed.stdout.strip() or 'none'}"
                )
            time.sleep(0.2)

    def wait_running(self, host: Machine | str, timeout: float | None = None) -> str:
        """Wait until the machine's systemd reports ``running`` or ``degraded``; return which."""
        rt = self._host_rt(host)
        return self._wait_running(rt, time.monotonic() + (timeout or self.boot_timeout))

    # ------------------------------------------------------------------ reboots and power

    def reboot(self, host: Machine | str) -> None:
        """Graceful reboot: ``systemctl reboot`` inside, then boot again on the same disk.

        Returns once the machine runs again and its sshd answers.  Raises
        :class:`MachineError` if the machine does not shut down as a reboot (nspawn exit 133).
        Machines of one fleet may be rebooted from several threads at once.
        """
        rt = self._host_rt(host)
        self._check_up(rt)
        # The command may be cut off as the machine goes down: its status means nothing.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.exec(rt.machine, ["systemctl", "reboot"], check=False, timeout=30)
        code = self._wait_nspawn_exit(rt, self.boot_timeout)
        if code is not None and code != REBOOT_EXIT:
            raise MachineError(
                f"{rt.machine.name}: systemd-nspawn exited {code} instead of {REBOOT_EXIT} (reboot): "
                f"{_tail(rt.console_log)}"
            )
        self._launch(rt)
        self._wait_booted(rt)

    def power_cut(self, host: Machine | str, *, restore: bool = True) -> None:
        """Cut the power: every process of the machine dies at once (SIGKILL to its systemd).

        With ``restore`` (default) the machine then boots again on the same disk and this
        returns once it runs and its sshd answers; otherwise it stays off until :meth:`power_on`.
        """
        rt = self._host_rt(host)
        self._check_up(rt)
        if rt.leader_pid is not None:
            netns.kill(rt.leader_pid, signal.SIGKILL)
        self._wait_nspawn_exit(rt, 30)
        if restore:
            self._launch(rt)
            self._wait_booted(rt)

    def power_on(self, host: Machine | str) -> None:
        """Boot a machine that is off (after ``power_cut(restore=False)`` or a halt inside)."""
        rt = self._host_rt(host)
        if self._alive(rt):
            raise MachineError(f"{rt.machine.name} is already running")
        self._wait_nspawn_exit(rt, 30)
        self._launch(rt)
        self._wait_booted(rt)

    def is_on(self, host: Machine | str) -> bool:
        """True while the machine's systemd (its PID 1) runs."""
        return self._alive(self._host_rt(host))

    def boots(self, host: Machine | str) -> int:
        """How many times this harness has booted the machine (1 after start)."""
        return self._host_rt(host).boots

    def _wait_nspawn_exit(self, rt: _Runtime, timeout: float) -> int | None:
        """Wait for this boot's nspawn to end; its exit status if we are its parent."""
        deadline = time.monotonic() + timeout
        proc = rt.proc
        if proc is not None:
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise MachineError(f"{rt.machine.name}: systemd-nspawn still runs after {timeout:.0f}s") from None
        while netns.alive(rt.nspawn_pid, rt.nspawn_start):
            if time.monotonic() >= deadline:
                raise MachineError(f"{rt.machine.name}: systemd-nspawn still runs after {timeout:.0f}s")
            time.sleep(0.05)
        return None

    # ------------------------------------------------------------------ inside a machine

    def exec(
        self,
        host: Machine | str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root inside the machine (all its namespaces, via its PID 1), not over SSH.

        Raises ``CalledProcessError`` on a non-zero exit when ``check``, and
        ``TimeoutExpired`` (after killing the command) past ``timeout``.
        """
        return self._enter(host, ["-a", "-r", "-w"], argv, check=check, timeout=timeout, input=input)

    def _enter(
        self,
        host: Machine | str,
        flags: Sequence[str],
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``nsenter -t <machine's PID 1> flags -- argv``: see :meth:`exec`."""
        rt = self._host_rt(host)
        if not self._alive(rt) or rt.leader_pid is None:
            raise MachineError(f"{rt.machine.name} is not running")
        full = ["nsenter", "-t", str(rt.leader_pid), *flags, "--", *argv]
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=_MACHINE_ENV,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(full, timeout, out, err) from None
        result = subprocess.CompletedProcess(full, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, full, out, err)
        return result

    def sh(self, host: Machine | str, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """:meth:`exec` of ``sh -c script``."""
        return self.exec(host, ["/bin/sh", "-c", script], **kwargs)

    def install_sudoers(self, host: Machine | str, name: str, text: str) -> None:
        """Install ``/etc/sudoers.d/<name>`` (mode 0440) after ``visudo -c`` accepted it."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"sudoers drop-in name must be [A-Za-z0-9_-]+ (sudo skips others), got {name!r}")
        path = f"/etc/sudoers.d/{name}"
        self.sh(
            host,
            f'tmp=$(mktemp /etc/sudoers.d/.{name}.XXXXXX) && cat > "$tmp" && chmod 0440 "$tmp" && '
            f'visudo -c -q -f "$tmp" && mv "$tmp" {shlex.quote(path)} || {{ rm -f "$tmp"; exit 1; }}',
            input=text,
        )

    def spawn_at_pid(self, host: Machine | str, pid: int, argv: Sequence[str], *, user: str = "nobody") -> None:
        """Start ``argv`` as ``user`` inside the machine with exactly process id ``pid``, detached.

        For stale-pid tests: a pid file written before a reboot can be made to point at a
        live process that has nothing to do with it, as happens by chance on real hosts.
        Uses the pid namespace's ``ns_last_pid``; raises :class:`MachineError` if ``pid`` is
        taken or another process of the machine took it first (retried a few times).
        """
        if pid < 2:
            raise ValueError(f"pid must be >= 2, got {pid}")
        rt = self._host_rt(host)
        name = rt.machine.name
        gid = self.exec(host, ["id", "-g", user], check=False)
        if gid.returncode != 0:
            raise MachineError(f"{name}: no user {user!r}")
        probe = f"tr '\\0' '\\n' < /proc/{pid}/cmdline && stat -c %U /proc/{pid}"
        if self.sh(host, f"[ -e /proc/{pid} ]", check=False).returncode == 0:
            raise MachineError(f"{name}: pid {pid} is taken: {self.sh(host, probe, check=False).stdout.split()}")
        # The machine's /proc/sys is read-only, so ns_last_pid is written through this
        # machine's /proc from a shell that only joined the machine's pid namespace (the
        # file acts on the writer's pid namespace).  Nothing may fork between that write and
        # setsid's fork, whose child gets the pid and only execs from then on: nsenter
        # without -p joins the other namespaces and the root in place, setpriv drops to user.
        inner = [
            "nsenter", "-t", str(rt.leader_pid), "-m", "-u", "-i", "-n", "-C", "-r", "-w", "--",
            "setpriv", f"--reuid={user}", f"--regid={gid.stdout.strip()}", "--clear-groups", "--", *argv,
        ]  # fmt: skip
        script = (
            f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "
            f"exec setsid -f {shlex.join(inner)} </dev/null >/dev/null 2>&1"
        )
        for _ in range(5):
            self._enter(host, ["-p"], ["/bin/sh", "-c", script], timeout=30)
            seen: list[str] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                check = self.sh(host, probe, check=False, timeout=30)
                seen = check.stdout.splitlines()
                if check.returncode == 0 and seen == [*argv, user]:
                    return
                # Between the fork and the final exec the pid shows setsid, nsenter or setpriv.
                if check.returncode != 0 or not seen or seen[0] not in _SPAWN_STEPS:
                    break
                time.sleep(0.02)
            if seen and seen[0] not in _SPAWN_STEPS:
                raise MachineError(f"{name}: pid {pid} was taken by another process first: {seen}")
        raise MachineError(f"{name}: could not start {argv} at pid {pid}")

    def ssh_argv(self, host: Machine | str, user: str = DEPLOY_USER) -> list[str]:
        """argv for OpenSSH ``ssh`` to the machine as ``user`` with strict host key checking."""
        m = self._host_rt(host).machine
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_path}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-p", str(m.port), f"{user}@{m.address}",
        ]  # fmt: skip

    # ------------------------------------------------------------------ teardown

    def _teardown_shared(self, *, clean: bool) -> None:
        if self._route_added and self._octet is not None:
            _run(["ip", "route", "del", "blackhole", str(_net(self._octet))], check=False)
            self._route_added = False
        if clean and self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def _teardown_one(self, rt: _Runtime) -> list[str]:
        with rt.lock:
            return self._teardown_locked(rt)

    def _teardown_locked(self, rt: _Runtime) -> list[str]:
        m = rt.machine
        # Power off: PID 1 of the machine dies and the kernel ends every process of its pid
        # namespace (sessions, services, exec'd commands); nspawn then cleans up and exits.
        # Killing nspawn instead would orphan the machine, so a machine caught mid-boot (its
        # init not recorded yet) is looked up among nspawn's children first.
        leaders = [rt.leader_pid] if self._alive(rt) and rt.leader_pid is not None else []
        if rt.nspawn_pid is not None and netns.alive(rt.nspawn_pid, rt.nspawn_start):
            leaders += [c for c in netns.children_of(rt.nspawn_pid) if _ns_pid_one(c)]
        for pid in leaders:
            netns.kill(pid)
        try:
            self._wait_nspawn_exit(rt, 20)
        except MachineError:
            if rt.nspawn_pid is not None and netns.alive(rt.nspawn_pid, rt.nspawn_start):
                netns.kill(rt.nspawn_pid)
            with contextlib.suppress(MachineError):
                self._wait_nspawn_exit(rt, 5)
        # Anything else that joined the network namespace (e.g. `ip netns exec` by hand).
        for _ in range(100):
            pids = netns.netns_pids(m.netns)
            if not pids:
                break
            for pid in pids:
                netns.kill(pid)
            time.sleep(0.02)
        leftovers: list[str] = []
        if _mounted(rt.root):
            for _ in range(50):
                if _run(["umount", str(rt.root)], check=False).returncode == 0 or not _mounted(rt.root):
                    break
                time.sleep(0.1)
            if _mounted(rt.root):
                leftovers.append(f"{m.name}: overlay still mounted at {rt.root}")
        _run(["ip", "link", "del", rt.veth], check=False)
        _run(["ip", "netns", "del", m.netns], check=False)
        leftovers += [f"{m.name}: pid {pid} in netns {m.netns}" for pid in netns.netns_pids(m.netns)]
        if m.netns in netns.netns_names():
            leftovers.append(f"{m.name}: netns {m.netns}")
        if netns.link_exists(rt.veth):
            leftovers.append(f"{m.name}: link {rt.veth}")
        if netns.alive(rt.nspawn_pid, rt.nspawn_start):
            leftovers.append(f"{m.name}: systemd-nspawn pid {rt.nspawn_pid}")
        if self._alive(rt):
            leftovers.append(f"{m.name}: machine init pid {rt.leader_pid}")
        return leftovers

    # ------------------------------------------------------------------ persistence

    def _state_json(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "runid": self._runid,
            "octet": self._octet,
            "size": self.size,
            "port": self.port,
            "base_dir": str(self._base),
            "rootfs": str(self._rootfs),
            "shared_dir": None if self.shared_dir is None else str(self.shared_dir),
            "route_added": self._route_added,
            "machines": [rt.to_json() for rt in self._rt.values()],
        }

    def _write_state(self) -> None:
        with self._state_lock:
            if self._base is not None and self._base.exists():
                netns.write_json_atomic(self._base / "machines.json", self._state_json())

    def save(self, path: Path) -> None:
        """Write what another process needs to use or stop this fleet (see :meth:`load`)."""
        with self._lock:
            if self._state != "running":
                raise MachineError("only a running machine fleet can be saved")
            path.parent.mkdir(parents=True, exist_ok=True)
            netns.write_json_atomic(path, self._state_json())

    @classmethod
    def load(cls, path: Path) -> MachineFleet:
        """A handle on a fleet saved by :meth:`save`: it does not own it (no teardown at exit)."""
        return cls._from_state(json.loads(path.read_text()), owner=False)

    @classmethod
    def _from_state(cls, data: dict[str, Any], *, owner: bool) -> MachineFleet:
        if data.get("version") != _STATE_VERSION:
            raise MachineError(f"unsupported machine fleet state version {data.get('version')!r}")
        fleet = cls(int(data["size"]), port=int(data["port"]))
        fleet._runid = str(data["runid"])
        fleet._octet = int(data["octet"])
        fleet._base = Path(data["base_dir"])
        fleet._rootfs = Path(data["rootfs"])
        shared = data.get("shared_dir")
        fleet.shared_dir = None if shared is None else Path(shared)
        fleet._route_added = bool(data.get("route_added", True))
        for item in data["machines"]:
            rt = _Runtime.from_json(item)
            fleet._rt[rt.machine.name] = rt
        fleet.hosts = [rt.machine for rt in fleet._rt.values()]
        fleet._state = "running"
        if owner:
            fleet._owner_pid = os.getpid()
            LIVE.register(fleet)
        return fleet

    def detach(self) -> None:
        """Let the fleet outlive this process (for ``fleet.up --machines``): no teardown at exit.

        :func:`reap_stale_machines` leaves it alone while any of its machines runs (reboots
        included).  Tear it down with ``MachineFleet.load(path).stop()``.
        """
        with self._lock:
            if self._state != "running":
                raise MachineError("only a running machine fleet can be detached")
            netns.write(self.base_dir / "owner.pid", _DETACHED + "\n")
            self._owner_pid = None
            LIVE.unregister(self)
            for rt in self._rt.values():
                rt.proc = None


def _net(octet: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{octet}.0.0/16")


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise MachinesUnavailable(f"{root}: no user {user!r} in the root filesystem (rebuild it)")
