"""The confirmation of a protected environment (``confirm: true``): asked before any host work.

The question names the environment, the operation and the hosts, and is answered by typing the environment's
name (a reflexive ``y`` is not enough for production). ``--yes`` skips it; a run without a terminal on stdin
(CI, cron, a pipe) cannot be asked and is refused unless it says ``--yes``. Dry runs change nothing and are
never asked.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from invoke.exceptions import Exit

from deployer.cli.common import usage_error

DECLINED = 1
"""Exit status when the operator did not confirm: nothing was done."""


def question(env: str, operation: str, hosts: Sequence[str]) -> str:
    """What is asked: ``prod is protected (confirm: true): deploy on 3 host(s): web1, web2, web3``."""
    return f"{env} is protected (confirm: true): {operation} on {len(hosts)} host(s): {', '.join(hosts)}"


def confirm(
    env: str,
    operation: str,
    hosts: Sequence[str],
    *,
    yes: bool,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Return when the operation may go on; raise :class:`Exit` (nothing done) otherwise."""
    if yes:
        return
    source = stdin if stdin is not None else sys.stdin
    out = stderr if stderr is not None else sys.stderr
    if source is None or not source.isatty():
        raise usage_error(
            f"{question(env, operation, hosts)}; this run has no terminal to ask on: "
            f"add --yes to {operation} without the question (nothing was done)"
        )
    out.write(f"{question(env, operation, hosts)}\nType {env!r} to go on (anything else stops): ")
    out.flush()
    answer = source.readline()
    if answer.strip() != env:
        out.write("\n" if not answer.endswith("\n") else "")
        raise Exit(f"error: not confirmed ({answer.strip()!r} is not {env!r}): nothing was done", code=DECLINED)


__all__ = ["DECLINED", "confirm", "question"]
