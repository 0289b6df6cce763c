"""What every task shares: the output rule, loading the inventory, failing, flag help, interrupts.

The output rule (documented in the task reference): **stdout carries only machine output** (the ``--json``
document, ``logs`` lines, ``config``'s YAML, ``observer --print``'s command); **everything written for people
goes to stderr** (progress, plans, tables, reports, warnings, errors, prompts). ``deployer deploy --json >
report.json`` therefore always yields pure JSON, and a terminal shows the same text with or without it.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from invoke.exceptions import Exit
from rich.console import Console
from rich.markup import escape

from deployer.cli.catalogue import pointer
from deployer.core.inventory import Inventory, load_inventory
from deployer.errors import DeployerError

USAGE = 2
"""Exit status of bad input (flags, inventory): nothing was done."""

FLAG_HELP = {
    "env": "Environment: reads inventory/<env>.yml (required).",
    "hosts": "Only these hosts (comma-separated names).",
    "roles": "Only hosts with one of these roles (comma-separated).",
    "host": "The one host to work on (its name in the inventory).",
    "one_host": "The one host to work on (its name in the inventory).",
    "inventory_dir": "Directory holding the inventory files (default: inventory).",
    "json_": "Print a machine-readable JSON document on stdout (people's output stays on stderr).",
    "verbose": "Show the exact remote scripts (secrets masked) and their output.",
    "dry_run": "Print the plan (phases, batches, per-host steps) and change nothing; with --verbose also the scripts.",
    "strategy": "parallel or rolling (overrides the inventory).",
    "batch_size": "Hosts per batch when rolling: a count or a percentage like 25%.",
    "canary": "One host first; nothing else proceeds until it is healthy.",
    "max_fail": "Failed hosts tolerated before no further batch starts (count or %).",
    "pause": "Seconds to wait between batches.",
    "yes": "Do not ask for confirmation in a protected environment (confirm: true); required there without a terminal.",
}


def flag_help(*names: str, **extra: str) -> dict[str, str]:
    """The help of the named shared flags plus task-specific ones, for ``@task(help=...)``."""
    return {**{name: FLAG_HELP[name] for name in names}, **extra}


def width() -> int | None:
    """Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns and split release ids."""
    return None if sys.stderr.isatty() else 160


def consoles() -> tuple[Console, Console]:
    """(people's output, errors): both on stderr, so stdout stays machine output only."""
    return Console(stderr=True, width=width()), Console(stderr=True, width=width())


def split(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (comma-separated flag values)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


_INVOKE_HINT = re.compile(r"`(?:invoke|deployer) ([a-z][\w.-]*)([^`]*)`")
_ENV_PLACEHOLDER = re.compile(r"--env(?:=| )(?:<env>|ENV)(?!\w)")
_OLD_HOST = re.compile(r"--host(?=[ =])")


def speak_deployer(text: str, env: str | None) -> str:
    """Hints from the layers below name a task (``deployer <task>``, older ones ``invoke <task>``): say
    ``deployer <task> --env <the real env>``, with the environment this run used filled in."""

    def rewrite(match: re.Match[str]) -> str:
        task, rest = match.group(1), _OLD_HOST.sub("--hosts", match.group(2))
        if env:
            rest = _ENV_PLACEHOLDER.sub(f"--env {env}", rest)
            if "--env" not in rest:
                rest = f" --env {env}{rest}"
        return f"`deployer {task}{rest}`"

    text = _INVOKE_HINT.sub(rewrite, text)
    return _ENV_PLACEHOLDER.sub(f"--env {env}", text) if env else text


def usage_error(message: str) -> Exit:
    """Bad input: a one-line message on stderr (Invoke prints it), exit status 2, no traceback."""
    return Exit(f"error: {message}", code=USAGE)


def load(env: str | None, inventory_dir: str, *, secrets: bool = False) -> Inventory:
    """The environment's inventory, or exit 2 with the file, key path and what is expected."""
    if not env:
        raise usage_error("--env is required (it selects inventory/<env>.yml)")
    try:
        return load_inventory(env, inventory_dir, resolve_secrets=secrets)
    except DeployerError as exc:
        raise usage_error(with_pointer(speak_deployer(str(exc), env))) from None


def select(inventory: Inventory, hosts: Sequence[str], roles: Sequence[str] = ()) -> None:
    """Check ``--hosts``/``--roles`` before any work (build, lock, connect): exit 2 if they match nothing."""
    try:
        inventory.select(hosts, roles)
    except DeployerError as exc:
        raise usage_error(with_pointer(speak_deployer(str(exc), inventory.env))) from None


def fail(console: Console, exc: DeployerError, env: str | None = None, code: int = 1) -> Exit:
    """Print an operational error (with its hint in deployer's words) and return the Exit to raise."""
    text = speak_deployer(str(exc), env)
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
    console.print(f"  {pointer(text)}", highlight=False, markup=False)
    return Exit(code=code)


def with_pointer(message: str) -> str:
    """An operator error's text ending with where the catalogue explains it (``see: docs/errors.md#...``)."""
    return f"{message}\n  {pointer(message)}"


@contextmanager
def interruptible(console: Console) -> Iterator[threading.Event]:
    """First SIGINT/SIGTERM: let running host steps finish, undo, unlock. Second SIGINT: stop at once."""
    cancel = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        cancel.set()
        name = signal.Signals(signum).name
        console.print(
            f"[bold yellow]{name}:[/] finishing the running host steps, then undoing and unlocking "
            "(Ctrl-C again to abandon the run)",
            highlight=False,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM ends a long-running session (logs -f, observer) like Ctrl-C: tunnels close, temp files go."""

    def handle(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_stdout(text: str) -> None:
    """Machine output (or a stream of remote lines) on stdout, flushed at once."""
    sys.stdout.write(text)
    sys.stdout.flush()
