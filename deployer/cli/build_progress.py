"""The build as the operator watches it: one live line with the command and the elapsed time.

A build takes minutes and prints hundreds of lines nobody reads unless it fails. So: on a terminal a
spinner line ``building (local): mix release  1m12s  | last output line``; the build's own output is kept
and shown in full when the build fails (its last lines are also in the error) or, with ``--verbose``, as it
comes. deployer's own lines (which engine, cached layers, fetching the tarball) are always printed.
Everything here goes to stderr (people's output).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.status import Status
from rich.text import Text

from deployer.core.facts import format_age

KEPT_LINES = 20_000
"""Output lines kept for the failure display (a runaway build must not fill the memory)."""


class _Line:
    """The live line, rendered afresh at every refresh: the elapsed time moves by itself."""

    def __init__(self, progress: BuildProgress) -> None:
        self.progress = progress

    def __rich__(self) -> RenderableType:
        return Text(self.progress.line(), overflow="ellipsis", no_wrap=True)


class BuildProgress:
    """``with BuildProgress(console, "mix release", "local") as p: build(..., log=p.log, output=p.output)``."""

    def __init__(
        self,
        console: Console,
        command: str,
        strategy: str,
        *,
        verbose: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.command = command
        self.strategy = strategy
        self.verbose = verbose
        self.clock = clock
        self.started = clock()
        self.lines: list[str] = []
        self.dropped = 0
        self._status: Status | None = None

    def line(self) -> str:
        """``building (local): mix release  42s  | the last output line``."""
        text = f"building ({self.strategy}): {self.command}  {format_age(self.clock() - self.started)}"
        return text + (f"  | {self.lines[-1].strip()[:100]}" if self.lines and self.lines[-1].strip() else "")

    def __enter__(self) -> BuildProgress:
        self.started = self.clock()
        if self.console.is_terminal:
            self._status = Status(_Line(self), console=self.console, refresh_per_second=4)
            self._status.start()
        else:
            # No live line off a terminal (CI logs): say what runs; the time comes at the end.
            self.console.print(f"    {escape(self.line())}", highlight=False)
        return self

    def log(self, text: str) -> None:
        """deployer's own line about the build: always shown."""
        self.console.print(f"    {escape(text)}", highlight=False)

    def output(self, text: str) -> None:
        """One line of the build's output: kept; shown now only with ``--verbose``."""
        if len(self.lines) >= KEPT_LINES:
            del self.lines[: KEPT_LINES // 10]
            self.dropped += KEPT_LINES // 10
        self.lines.append(text)
        if self.verbose:
            self.console.print(f"    | {escape(text)}", highlight=False)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._status is not None:
            self._status.stop()
        elapsed = format_age(self.clock() - self.started)
        if exc is None:
            self.console.print(f"    built in {elapsed}: {escape(self.command)}", highlight=False)
            return
        if not self.verbose and self.lines:
            # The whole output, not just the tail in the error: the first error is often far above the last line.
            self.console.print(f"    build output ({len(self.lines)} lines):", highlight=False)
            if self.dropped:
                self.console.print(f"    | ... ({self.dropped} earlier lines not kept)", highlight=False)
            for text in self.lines:
                self.console.print(f"    | {escape(text)}", highlight=False)
        self.console.print(f"    build failed after {elapsed}", highlight=False)


__all__ = ["BuildProgress"]
