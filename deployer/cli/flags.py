"""Flag values checked before any work (build, lock, connect): a bad one exits 2 naming the flag.

Invoke hands flags over as strings; these turn them into the strategy overrides the operations take, or
refuse them with the flag, the value and what is expected, e.g. ``error: --batch-size 150%: a percentage
must be between 1% and 100%``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from invoke.exceptions import Exit

from deployer.cli.common import split, usage_error

_PERCENT = re.compile(r"(\d+)%")


def count(flag: str, value: str, *, minimum: int) -> int | str:
    """``3`` or ``"25%"``: a whole number of hosts (at least ``minimum``) or a percentage of them."""
    text = value.strip()
    percent = _PERCENT.fullmatch(text)
    if percent:
        number = int(percent.group(1))
        if not max(minimum, 0) <= number <= 100 or (minimum > 0 and number == 0):
            raise usage_error(f"{flag} {value}: a percentage must be between {minimum}% and 100%")
        return text
    if not text.isdigit():
        raise usage_error(f"{flag} {value!r}: expected a number of hosts like 2 or a percentage like 25%")
    number = int(text)
    if number < minimum:
        raise usage_error(f"{flag} {value}: must be at least {minimum}")
    return number


def seconds(flag: str, value: str) -> float:
    """A non-negative, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise usage_error(f"{flag} {value!r}: expected a number of seconds like 30 or 0.5") from None
    if not math.isfinite(number) or number < 0:
        raise usage_error(f"{flag} {value}: must be a number of seconds, 0 or more")
    return number


def rollout(
    strategy: str | None = None,
    batch_size: str | None = None,
    canary: bool = False,
    max_fail: str | None = None,
    pause: str | None = None,
) -> dict[str, Any]:
    """The strategy overrides of ``--strategy/--batch-size/--canary/--max-fail/--pause`` (only those given)."""
    overrides: dict[str, Any] = {}
    if strategy:
        if strategy not in ("parallel", "rolling"):
            raise usage_error(f"--strategy {strategy!r}: expected parallel or rolling")
        overrides["kind"] = strategy
    if batch_size is not None:
        overrides["batch_size"] = count("--batch-size", batch_size, minimum=1)
        if overrides.get("kind") == "parallel":
            raise usage_error("--batch-size only applies to --strategy rolling (parallel switches every host at once)")
        overrides["kind"] = "rolling"
    if canary:
        overrides["canary"] = True
    if max_fail is not None:
        overrides["max_fail"] = count("--max-fail", max_fail, minimum=0)
    if pause is not None:
        overrides["pause"] = seconds("--pause", pause)
    return overrides


def one_host(hosts: str | None, task: str) -> str:
    """The single host a session task (logs, console, observer) works on, from ``--hosts``."""
    names = split(hosts)
    if not names:
        raise usage_error(f"{task} works on one host: name it with --hosts NAME")
    if len(names) > 1:
        raise usage_error(f"{task} works on one host at a time, got --hosts {','.join(names)}: run it once per host")
    return names[0]


def either(hosts: str | None, host: str | None) -> str | None:
    """``--hosts``, or the hidden ``--host`` alias kept for scripts written before one vocabulary."""
    if hosts and host:
        raise Exit("error: give --hosts only (--host is its old name)", code=2)
    return hosts or host


__all__ = ["count", "either", "one_host", "rollout", "seconds"]
