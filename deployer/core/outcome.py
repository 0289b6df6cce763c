"""The result of an operation, per host: what it ran before, what it runs now, what happened.

The executor fills these in; :mod:`deployer.cli.render` renders them as a table or JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Outcome = Literal[
    "pending",  # nothing attempted yet
    "success",  # on the target release and healthy
    "reverted",  # the target failed; back on the previous release
    "failed",  # the step failed and the host could not be put back
    "aborted",  # the operation stopped before this host switched; still on its old release
    "untouched",  # never reached: an earlier batch failed, or the operation was interrupted
    "unreachable",  # could not connect
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
        return all(h.outcome == "success" for h in self.hosts)

    @property
    def mixed(self) -> bool:
        """True when hosts ended on different releases."""
        return len({h.after for h in self.hosts if h.outcome != "unreachable"}) > 1

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
