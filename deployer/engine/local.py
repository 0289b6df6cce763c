"""A transport for the control machine: runs a :class:`Script` with the local ``sh``, like a host would.

Local hooks (issue 16) and balancers driven by a local CLI run through the executor like any remote
step (same events, masking, timings, failures); this is the one place they differ: the script is piped
to ``sh -s`` on this machine (secrets on stdin, never in argv) instead of over an SSH channel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from deployer.remote.shell import Script
from deployer.ssh.transport import CommandResult, OutputCallback, ProgressCallback

DEFAULT_TIMEOUT = 600.0


class LocalTransport:
    """Runs scripts on the control machine, in the current directory."""

    name = "local"

    def __init__(self, *, cwd: str | None = None) -> None:
        self.cwd = cwd
        self.sessions = 0
        self.bytes_uploaded = 0

    def run(self, script: Script, *, on_output: OutputCallback | None = None) -> CommandResult:
        timeout = script.timeout or DEFAULT_TIMEOUT
        started = time.monotonic()
        self.sessions += 1
        proc = subprocess.Popen(
            ["sh", "-s"] if script.stdin else ["sh", "-c", script.render(reveal=False)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            start_new_session=True,  # an operator's Ctrl-C goes to deployer, which lets the step finish
        )
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def pump(stream: str, pipe: IO[bytes]) -> None:
            while raw := pipe.read1(65536):  # type: ignore[attr-defined]
                text = raw.decode(errors="replace")
                chunks[stream].append(text)
                if on_output is not None:
                    on_output(stream, text)

        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        readers = [
            threading.Thread(target=pump, args=("stdout", proc.stdout), daemon=True),
            threading.Thread(target=pump, args=("stderr", proc.stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            if script.stdin:
                proc.stdin.write(script.render(reveal=True).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The whole process group: a command's children must not outlive it holding the pipes open.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            chunks["stderr"].append(f"\nthe local command did not finish within {timeout:g}s; it was killed\n")
            status = 124
        for reader in readers:
            reader.join(timeout=5)
        return CommandResult(status, "".join(chunks["stdout"]), "".join(chunks["stderr"]), time.monotonic() - started)

    def upload(
        self,
        script: Script,
        source: Path,
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CommandResult:
        raise NotImplementedError("the control machine receives no uploads")

    def is_alive(self) -> bool:
        return True

    def close(self) -> None:
        return None
