"""The git state of the project being built (:class:`deployer.core.provenance.Source`), read with ``git``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from deployer.core.provenance import NOT_A_CHECKOUT, Source


def _git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(project), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def git_source(project: Path) -> Source:
    """The commit ``project`` is checked out at and whether tracked files differ from it (like ``git
    describe --dirty``: untracked files do not count); ``not a git checkout`` otherwise."""
    if shutil.which("git") is None:
        return Source(note=f"{NOT_A_CHECKOUT} (git is not installed)")
    try:
        head = _git(project, "rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            inside = _git(project, "rev-parse", "--is-inside-work-tree")
            return Source(note=NOT_A_CHECKOUT if inside.returncode != 0 else "a git checkout without commits")
        status = _git(project, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Source(note=f"git could not be read: {exc}")
    return Source(head.stdout.strip(), dirty=bool(status.stdout.strip()) or status.returncode != 0)


__all__ = ["git_source"]
