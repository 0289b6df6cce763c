"""The deploy lock as the engine sees it: who takes it, who holds it, whether the holder is gone.

The lock itself is a directory on each host (``mkdir`` is atomic, see :func:`deployer.remote.release.probe`);
its ``info`` file says who took it, from which machine and process, for what, and since when. Whether a
holder still lives can be known only for a process on *this* machine; for any other holder the lock's
age is all there is.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass

from deployer.core.facts import LockInfo, format_age


def current_user() -> str:
    """``user@machine`` of this run, as written into locks and revision records."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def lock_info(token: str, operation: str, release: str | None, message: str | None = None) -> str:
    """The JSON written into ``.lock/info`` when this run takes the lock.

    A manual lock (``message``: why, from ``deployer lock``) outlives this process, so it records no pid:
    its holder is a person, judged by the message and the age, never called stale.
    """
    user, _, local_host = current_user().partition("@")
    info: dict[str, object] = {
        "token": token,
        "who": user,
        "host": local_host,
        "pid": os.getpid(),
        "operation": operation,
        "release": release,
        "since": round(time.time()),
    }
    if message is not None:
        del info["pid"]
        info["message"] = message
    return json.dumps(info, sort_keys=True)


def locked_hint(holders: list[LockInfo | None], env: str) -> str:
    """What to do about a lock held elsewhere: a manual lock is lifted by ``unlock``, a run's lock ends with it."""
    if any(info is not None and info.manual for info in holders):
        return f"the environment was locked by hand (see the message); `deployer unlock --env {env}` lifts the lock"
    return f"wait for it to finish; if its process is gone, `deployer unlock --env {env}` removes the lock"


def holder_alive(info: LockInfo | None) -> bool | None:
    """True/False when the holder is a process on this machine that does/does not exist; None when
    that cannot be known here (another machine, no pid recorded)."""
    if info is None or info.pid is None or info.local_host != socket.gethostname():
        return None
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockState:
    """One host's lock judged for display and for ``unlock``."""

    info: LockInfo | None
    age: float | None
    alive: bool | None

    @property
    def stale(self) -> bool:
        """The holder is known to be gone (its process on this machine no longer exists)."""
        return self.alive is False

    def refusal(self, timeout: float) -> str | None:
        """Why ``unlock`` must not remove this lock without ``force``, or None when it may.

        A live holder on this machine is refused; a holder that cannot be checked from here is
        refused while its lock is younger than the command timeout (its run may still be working).
        """
        if self.info is not None and self.info.manual:
            return None  # `deployer lock` is lifted by `deployer unlock`: that is what it is for
        if self.alive is True:
            return "its process is still running on this machine"
        if self.alive is None and self.age is not None and self.age < timeout:
            return f"it was taken {format_age(self.age)} ago, less than the command timeout ({timeout:g}s)"
        return None


def judge(info: LockInfo | None, now: float | None = None) -> LockState:
    """The lock ``info`` with its age (seconds, by ``now`` or this machine's clock) and liveness."""
    age = None
    if info is not None and info.since is not None:
        age = max(0.0, (now if now is not None else time.time()) - info.since)
    return LockState(info, age, holder_alive(info))


def describe_holder(info: LockInfo | None, now: float | None = None) -> str:
    """Who holds a lock, and whether that process is known to be gone (a stale lock)."""
    if info is None:
        return "a lock directory without info (left by an old or killed run?)"
    text = info.describe(now)
    if judge(info, now).stale:
        text += " - that process no longer exists: the lock is stale"
    return text
