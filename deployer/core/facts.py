"""Host facts: the probe's ``key=value`` output parsed into a :class:`HostFacts` (pure, unit-tested)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from deployer.core.history import History
from deployer.core.paths import is_release_id


@dataclass(frozen=True)
class LockInfo:
    """Who holds a host's deploy lock, as written into ``.lock/info``."""

    raw: str
    token: str | None = None
    who: str | None = None
    operation: str | None = None
    release: str | None = None
    pid: int | None = None
    local_host: str | None = None
    since: float | None = None
    message: str | None = None
    """The reason of a manual lock (``deployer lock --message``); None for a run's own lock."""

    @property
    def manual(self) -> bool:
        """Taken by ``deployer lock``: held until ``deployer unlock``, not by a running process."""
        return self.message is not None

    @classmethod
    def parse(cls, raw: str) -> LockInfo:
        try:
            data = json.loads(raw)
        except ValueError:
            return cls(raw=raw.strip())
        if not isinstance(data, dict):
            return cls(raw=raw.strip())
        since = data.get("since")
        pid = data.get("pid")
        return cls(
            raw=raw.strip(),
            token=_str(data.get("token")),
            who=_str(data.get("who")),
            operation=_str(data.get("operation")),
            release=_str(data.get("release")),
            pid=pid if isinstance(pid, int) else None,
            local_host=_str(data.get("host")),
            since=float(since) if isinstance(since, int | float) else None,
            message=_str(data.get("message")),
        )

    def describe(self, now: float | None = None) -> str:
        """E.g. ``alice@laptop (pid 4242) running deploy of 2026...-0.2.0 for 3m12s``."""
        if self.who is None and self.since is None:
            return f"unreadable lock info: {self.raw[:200]!r}"
        parts = [self.who or "someone"]
        if self.local_host:
            parts[0] += f"@{self.local_host}"
        if self.manual:
            parts.append(f"locked it by hand: {self.message!r}")
        if self.pid is not None:
            parts.append(f"(pid {self.pid})")
        if self.operation:
            parts.append(f"running {self.operation}")
        if self.release:
            parts.append(f"of {self.release}")
        if self.since is not None:
            age = max(0.0, (now if now is not None else time.time()) - self.since)
            parts.append(f"since {format_age(age)} ago")
        return " ".join(parts)


def format_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class HostFacts:
    """What a host looked like when probed."""

    now: float | None = None
    arch: str | None = None
    libc: str | None = None
    libcrypto: frozenset[str] | None = None
    """``libcrypto.so.*`` sonames found in the usual library directories (None: not probed)."""
    tools: frozenset[str] = frozenset()
    exists: bool = False
    writable: bool = False
    disk_free_kb: int | None = None
    current: str | None = None
    releases: tuple[str, ...] = ()
    artifacts: frozenset[str] = frozenset()
    has_cookie: bool = False
    node_pids: tuple[int, ...] = ()
    lock: LockInfo | None = None
    lock_acquired: bool = False
    history: History = field(default_factory=lambda: History(()))
    health: str | None = None
    """One try of the health check, when the probe ran it (``running_state``): ok, failing, down or none."""
    env_sha256: str | None = None
    """sha256 of the run's nonce and the current release's environment file (``running_state``)."""

    @property
    def current_release(self) -> str | None:
        """The release id ``current`` points to (``releases/<id>``), if it is one."""
        if self.current is None:
            return None
        name = self.current.rstrip("/").rsplit("/", 1)[-1]
        return name if is_release_id(name) else None

    @property
    def previous_good(self) -> str | None:
        return self.history.previous_good(self.current_release, self.releases)

    @property
    def current_version(self) -> str | None:
        release = self.current_release
        return self.history.version(release) if release else None


def parse_probe(output: str) -> HostFacts:
    """Parse the probe script's stdout. Unknown keys are ignored so newer probes stay compatible."""
    values: dict[str, str] = {}
    tools: set[str] = set()
    releases: list[str] = []
    artifacts: set[str] = set()
    pids: list[int] = []
    revisions: list[str] = []
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "tool":
            tools.add(value)
        elif key == "release":
            if is_release_id(value):
                releases.append(value)
        elif key == "artifact":
            artifacts.add(value)
        elif key == "node_pid":
            pids.extend(int(p) for p in value.split() if p.isdigit())
        elif key == "rev":
            revisions.append(value)
        else:
            values[key] = value
    history = History.from_lines(revisions)
    order = {r: i for i, r in enumerate(history.order())}
    # History order first; ids the log does not know sort by name after them.
    releases.sort(key=lambda r: (0, order[r], r) if r in order else (1, 0, r))
    free = values.get("disk_free_kb", "")
    now = values.get("now", "")
    return HostFacts(
        now=float(now) if now.isdigit() else None,
        arch=values.get("arch") or None,
        libc=values.get("libc") or None,
        libcrypto=frozenset(values["libcrypto"].split()) if "libcrypto" in values else None,
        tools=frozenset(tools),
        exists=values.get("exists") == "1",
        writable=values.get("writable") == "1",
        disk_free_kb=int(free) if free.isdigit() else None,
        current=values.get("current") or None,
        releases=tuple(releases),
        artifacts=frozenset(artifacts),
        has_cookie=values.get("cookie") == "1",
        node_pids=tuple(sorted(set(pids))),
        lock=LockInfo.parse(values["lock"]) if values.get("lock") else None,
        lock_acquired=values.get("lock_acquired") == "1",
        history=history,
        health=values.get("health") or None,
        env_sha256=values["env_sha256"] if len(values.get("env_sha256", "")) == 64 else None,
    )


@dataclass(frozen=True)
class RunOutcome:
    """What a detached run on a host (activation, revert) did, read by ``await_outcome`` after a reconnect.

    ``state`` is ``finished`` (``status`` and ``step`` are known), ``running`` (still running when the
    wait ended), ``lost`` (it ended without an outcome: the host rebooted or lost power, or its supervisor
    was killed) or ``missing`` (the run never started on that host).
    """

    state: str
    status: int | None = None
    step: str | None = None
    reason: str | None = None
    finished_at: float | None = None
    log: tuple[str, ...] = ()
    stdout: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.state == "finished" and self.status == 0

    @property
    def deadline_expired(self) -> bool:
        """The host ended the run at its own deadline (its process group was killed)."""
        return self.reason == "deadline"


def parse_outcome(output: str) -> RunOutcome:
    """Parse the output of :func:`deployer.remote.fragments.await_outcome`."""
    values: dict[str, str] = {}
    log: list[str] = []
    out: list[str] = []
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "log":
            log.append(value)
        elif key == "out":
            out.append(value)
        else:
            values.setdefault(key, value)
    state = values.get("run", "missing")
    if state not in ("finished", "running", "lost", "missing"):
        state = "missing"
    status = values.get("status", "")
    finished = values.get("finished", "")
    return RunOutcome(
        state=state,
        status=int(status) if state == "finished" and status.isdigit() else None,
        step=values.get("step") or None,
        reason=values.get("reason") or None,
        finished_at=float(finished) if finished.isdigit() else None,
        log=tuple(log),
        stdout=tuple(out),
    )
