"""The result of an operation, per host: what it ran before, what it runs now, what happened.

The executor fills these in; :mod:`deployer.cli.render` renders them as a table or JSON.

One vocabulary for every operation (deploy, rollback, migrate, start, stop, restart); a final report
never says ``pending``:

* ``success``: the host did what was asked (on the target release, healthy unless it was a stop);
* ``unchanged``: a deploy of what the host already ran, healthy, with the same environment: nothing was
  done there (no upload, no new release, no restart);
* ``reverted``: the target failed; the host is back on its previous release;
* ``failed``: the step failed and the host could not be put back (its row says what it runs now);
* ``aborted``: the operation started on this host (a prepared release, a before-stop step) but
  stopped before the host switched or its node was touched; it still runs what it ran;
* ``untouched``: the operation never reached this host (a batch not started after failures, an
  interrupt, another run's lock): nothing was done there;
* ``unreachable``: no connection could be made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal[
    "pending",  # while the run goes on only: nothing attempted yet
    "success",
    "unchanged",
    "reverted",
    "failed",
    "aborted",
    "untouched",
    "unreachable",
]


@dataclass
class HostResult:
    """One host's account of the run."""

    host: str
    before: str | None = None
    target: str | None = None
    after: str | None = None
    outcome: Outcome = "pending"
    healthy: bool | None = None
    step: str | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    uploaded_bytes: int = 0
    sessions: int = 0
    known: bool = False
    """True when ``before``/``after`` come from what the host reported; False when it was never
    probed (refused at another host's lock) or could not be reached again after a lost connection."""

    @property
    def succeeded(self) -> bool:
        """Success with nothing left to report (a failed after-healthy step is an error on a healthy host)."""
        return self.outcome in ("success", "unchanged") and self.error is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """The whole run: ``ok`` only when every host ended healthy on the intended release."""

    operation: str
    env: str
    release: str | None
    version: str | None
    hosts: list[HostResult]
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    interrupted: bool = False
    migrated_on: str | None = None
    dry_run: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        if self.error or self.interrupted:
            return False
        return all(h.succeeded for h in self.hosts)

    @property
    def mixed(self) -> bool:
        """True when hosts whose state is known ended on different releases (hosts never probed, or
        lost, say nothing about the fleet)."""
        return len({h.after for h in self.hosts if h.known and h.outcome != "unreachable"}) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "env": self.env,
            "release": self.release,
            "version": self.version,
            "ok": self.ok,
            "mixed": self.mixed,
            "interrupted": self.interrupted,
            "dry_run": self.dry_run,
            "migrated_on": self.migrated_on,
            "duration": round(self.duration, 3),
            "error": self.error,
            "warnings": self.warnings,
            "hosts": [h.to_json() for h in self.hosts],
        }


class Events(Protocol):
    """What the executor tells the operator while it works."""

    def phase(self, name: str, detail: str = "") -> None: ...

    def step(self, host: str, step: str, status: str, detail: str = "") -> None: ...

    def progress(self, host: str, sent: int, total: int) -> None: ...

    def output(self, host: str, stream: str, text: str) -> None: ...

    def warning(self, text: str) -> None: ...


class NullEvents:
    """Events that go nowhere (tests, --json without a TTY)."""

    def phase(self, name: str, detail: str = "") -> None:
        pass

    def step(self, host: str, step: str, status: str, detail: str = "") -> None:
        pass

    def progress(self, host: str, sent: int, total: int) -> None:
        pass

    def output(self, host: str, stream: str, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass
