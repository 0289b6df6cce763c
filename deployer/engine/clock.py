"""When this process started, on the monotonic clock: what a command's reported duration counts from.

An operator waits from the moment they press Enter (interpreter start, imports, inventory load, artifact
checks, lock ... unlock); a duration measured from the operation's call leaves the first of those out.
"""

from __future__ import annotations

import os
import time


def process_started() -> float:
    """``time.monotonic()`` at this process's start (Linux: ``/proc/self/stat``), else at the first call.

    Both clocks count from boot on Linux (CLOCK_MONOTONIC and the start time in clock ticks), so the
    difference is exact to a tick; elsewhere the time of the first call is the best this knows.
    """
    global _FIRST
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        now = time.monotonic()
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        if 0 <= age < uptime:
            return now - age
    except (OSError, ValueError, IndexError):
        pass
    if _FIRST is None:
        _FIRST = time.monotonic()
    return _FIRST


_FIRST: float | None = None
