"""Where the fleet hosts' CPU goes, by kind of process: sshd, shells, tar, hash, health checks, BEAM.

The hosts' total (``CpuMeter.hosts``) says how much; this says who. Two sources, no double counting:

* processes that **exited** during the measurement: BSD process accounting (``acct(2)``, the kernel writes
  one record per exiting process: its command name, parent, own user+system time, children excluded).
  A record belongs to a fleet host when its parent chain ends at a live process in that host's network
  namespace (a session's shell → its sshd → the host's sshd listener; a daemonised node → the host's init);
  the rest of the machine's processes (other people's work on a shared machine) fall out;
* processes **alive** at the end: their own utime+stime (not cutime: the reaped children are in the
  accounting records), minus what they had already used at the start, when they existed then.

An old node stopped by a deploy exits with its whole life's CPU in its record: what it had used at the start
(seen alive then, same pid and start time) is subtracted.

Accounting is machine-wide (one file per pid namespace): :class:`ProcessAccounting` turns it on for the
length of a benchmark and off at the end; two benchmarks at once on one machine would steal each other's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
_AHZ = 100  # acct(5): times in the records are in AHZ ticks
_V3 = struct.Struct("<BBHIIIIIIf8H16s")  # struct acct_v3, 64 bytes

CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "beam": ("beam.smp", "erl_child_setup", "inet_gethost", "epmd", "run_erl", "heart", "erlexec", "to_erl"),
    "sshd": ("sshd",),
    "shell": ("sh", "dash", "bash"),
    "tar": ("tar", "gzip", "pigz"),
    "hash": ("openssl", "sha256sum"),
    "health": ("curl", "wget"),
}
"""Command names (``comm``) of each kind; anything else is ``other`` (its top names are listed too)."""

ORDER = ("sshd", "shell", "tar", "hash", "health", "other", "beam")


def category(comm: str) -> str:
    for name, comms in CATEGORIES.items():
        if comm in comms:
            return name
    return "other"


def _comp_t(value: int) -> int:
    """acct's comp_t: 13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


@dataclass(frozen=True)
class Exited:
    pid: int
    ppid: int
    btime: int  # epoch seconds
    cpu: float  # own user+system seconds
    comm: str


def read_records(path: Path, offset: int) -> tuple[list[Exited], int]:
    """acct v3 records from byte ``offset`` on; returns them and the new offset."""
    data = path.read_bytes()[offset:]
    out = []
    usable = len(data) - len(data) % _V3.size
    for start in range(0, usable, _V3.size):
        f = _V3.unpack_from(data, start)
        if f[1] != 3:  # ac_version
            continue
        pid, ppid, btime = f[6], f[7], f[8]
        cpu = (_comp_t(f[10]) + _comp_t(f[11])) / _AHZ
        comm = f[18].split(b"\0", 1)[0].decode(errors="replace")
        out.append(Exited(pid, ppid, btime, cpu, comm))
    return out, offset + usable


@dataclass(frozen=True)
class Live:
    pid: int
    ppid: int
    start: int  # clock ticks since boot
    cpu: float
    comm: str
    netns: int


def live_processes() -> dict[int, Live]:
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            netns = os.stat(f"/proc/{entry.name}/ns/net").st_ino
            with open(f"/proc/{entry.name}/stat") as handle:
                raw = handle.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rpartition(")")[2].split()
        pid = int(entry.name)
        out[pid] = Live(pid, int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK, comm, netns)
    return out


def _boot_time() -> float:
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])


class ProcessAccounting:
    """BSD process accounting into ``path`` while in use (root only; off again on close)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.on = False

    def start(self) -> ProcessAccounting:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")
        os.chmod(self.path, 0o600)
        if self._libc.acct(str(self.path).encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"acct({self.path}): {os.strerror(err)}")
        self.on = True
        # Accounting outlives this process unless turned off: also on the signals that end a benchmark
        # (the fleet's own handlers then tear it down and re-raise).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous = signal.getsignal(sig)

                def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                    self._libc.acct(None)
                    if callable(previous):
                        previous(signum, frame)
                    else:
                        signal.signal(signum, signal.SIG_DFL)
                        os.kill(os.getpid(), signum)

                signal.signal(sig, handler)
        return self

    def close(self) -> None:
        if self.on:
            self._libc.acct(None)
            self.on = False
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> ProcessAccounting:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostCpu:
    """CPU seconds by kind of process on the hosts whose network namespaces are ``netns_inodes``."""

    def __init__(self, accounting: ProcessAccounting, netns_inodes: Iterable[int]) -> None:
        self.accounting = accounting
        self.inodes = set(netns_inodes)
        self.boot = _boot_time()

    def snapshot(self) -> tuple[int, dict[int, Live]]:
        size = self.accounting.path.stat().st_size
        return size - size % _V3.size, live_processes()

    def since(self, before: tuple[int, dict[int, Live]]) -> dict[str, object]:
        offset, then = before
        time.sleep(0.05)  # records of processes that exited just now
        records, _ = read_records(self.accounting.path, offset)
        now = live_processes()
        by_kind: dict[str, float] = defaultdict(float)
        other_comms: dict[str, float] = defaultdict(float)
        processes: dict[str, int] = defaultdict(int)

        def previously(pid: int, start_epoch: float | None, start_ticks: int | None) -> float:
            old = then.get(pid)
            if old is None:
                return 0.0
            if start_ticks is not None:
                return old.cpu if old.start == start_ticks else 0.0
            born = self.boot + old.start / _TICK
            return old.cpu if start_epoch is not None and abs(born - start_epoch) <= 2 else 0.0

        def add(comm: str, cpu: float) -> None:
            kind = category(comm)
            by_kind[kind] += cpu
            if kind == "other":
                other_comms[comm] += cpu

        # Newest first: a parent usually exits after its children, so its host is known when they need it.
        host_of: dict[int, bool] = {}
        for record in reversed(records):
            if record.ppid in host_of:
                ours = host_of[record.ppid]
            else:
                parent = now.get(record.ppid)
                ours = parent is not None and parent.netns in self.inodes
            host_of[record.pid] = ours
            if not ours:
                continue
            cpu = record.cpu - previously(record.pid, record.btime, None)
            add(record.comm, max(0.0, cpu))
            processes[category(record.comm)] += 1
        for proc in now.values():
            if proc.netns not in self.inodes:
                continue
            add(proc.comm, max(0.0, proc.cpu - previously(proc.pid, None, proc.start)))
        total = sum(by_kind.values())
        top = sorted(other_comms.items(), key=lambda kv: -kv[1])[:6]
        return {
            "by_kind": {k: round(by_kind.get(k, 0.0), 2) for k in ORDER},
            "non_beam": round(total - by_kind.get("beam", 0.0), 2),
            "total": round(total, 2),
            "exited_processes": dict(processes),
            "other_top": {k: round(v, 2) for k, v in top},
        }
