"""A scriptable in-memory transport for unit tests of the executor (no SSH, no threads of its own).

Every script run is recorded as ``(host, script name, masked text)``. Responses are
looked up by ``(host, script name)``, then by script name alone, else exit 0 with
no output. A response may be a :class:`CommandResult`, an exception to raise, or a
callable that receives the script.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deployer.core.config import HostConfig
from deployer.errors import ConnectError
from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult, OutputCallback, ProgressCallback, UploadStopped

Response = CommandResult | BaseException | Callable[[Script], CommandResult]


def ok(stdout: str = "") -> CommandResult:
    return CommandResult(0, stdout, "", 0.0)


def fail(step: str, message: str, status: int = 1) -> CommandResult:
    return CommandResult(status, "", f"@@step {step}\n{message}\n", 0.0)


@dataclass
class FakeFleet:
    """Shared state of all fake hosts: responses, the call log, unreachable hosts."""

    responses: dict[tuple[str, str] | str, Response] = field(default_factory=dict)
    probe_output: Mapping[str, str] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, host: HostConfig) -> FakeTransport:
        if host.name in self.unreachable:
            raise ConnectError(host.name, f"cannot connect to {host.address}:22: Connection refused")
        return FakeTransport(host.name, self)

    def respond(self, host: str, script: Script) -> CommandResult:
        with self._lock:
            self.calls.append((host, script.name, script.render(reveal=False)))
        response = self.responses.get((host, script.name), self.responses.get(script.name))
        if response is None:
            if script.name in ("probe", "lock+probe"):
                out = self.probe_output.get(host, "now=1700000000\n")
                if script.name == "lock+probe" and "lock=" not in out:
                    out += "lock_acquired=1\n"
                return ok(out)
            return ok()
        if isinstance(response, BaseException):
            raise response
        if isinstance(response, CommandResult):
            return response
        return response(script)

    def names(self, host: str | None = None) -> list[str]:
        """Script names run (on ``host``), in order."""
        return [name for h, name, _ in self.calls if host is None or h == host]


class FakeTransport:
    """Implements :class:`deployer.ssh.transport.Transport` over a :class:`FakeFleet`."""

    def __init__(self, name: str, fleet: FakeFleet) -> None:
        self.name = name
        self.fleet = fleet
        self.sessions = 0
        self.bytes_uploaded = 0
        self.closed = False

    def run(self, script: Script, *, on_output: OutputCallback | None = None) -> CommandResult:
        self.sessions += 1
        result = self.fleet.respond(self.name, script)
        if on_output is not None and result.stdout:
            on_output("stdout", result.stdout)
        return result

    def upload(
        self,
        script: Script,
        source: Path,
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CommandResult:
        self.sessions += 1
        if should_stop is not None and should_stop():
            raise UploadStopped(self.name, "upload", "upload stopped after 0 bytes")
        size = source.stat().st_size
        result = self.fleet.respond(self.name, script)
        if result.ok:
            self.bytes_uploaded += size
            if progress is not None:
                progress(size, size)
        return result

    def is_alive(self) -> bool:
        return not self.closed and self.name not in self.fleet.unreachable

    def close(self) -> None:
        self.closed = True
