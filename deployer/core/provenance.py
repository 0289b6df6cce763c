"""Who deployed which commit: the source a release was built from, as recorded in ``revisions.log``.

Every record carries the deployer version that wrote it; a deploy's records also carry the git commit of the
built project and whether its worktree had uncommitted changes (``dirty``), or why there is no commit ("not
a git checkout", "prebuilt tarball"). Records written before these fields existed simply lack them: readers
show "unknown" rather than failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NOT_A_CHECKOUT = "not a git checkout"
PREBUILT = "prebuilt tarball (--tarball): its commit is unknown"


@dataclass(frozen=True)
class Source:
    """Where a release came from: a git commit (``dirty`` when the worktree had changes), or a ``note``."""

    commit: str | None = None
    dirty: bool = False
    note: str | None = None

    def fields(self) -> dict[str, str | None]:
        """The ``revisions.log`` fields: ``commit`` and ``dirty``, or ``source`` saying why there is no commit."""
        if self.commit:
            return {"commit": self.commit, "dirty": "yes" if self.dirty else None, "source": None}
        return {"commit": None, "dirty": None, "source": self.note}

    def describe(self) -> str:
        """``3f2a9c1d0b7e (dirty)``, ``not a git checkout``, or ``unknown`` (recorded before deployer kept it)."""
        if self.commit:
            return self.commit[:12] + (" (dirty)" if self.dirty else "")
        return self.note or "unknown"

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> Source | None:
        """Read back what :meth:`fields` wrote; None when the record says nothing (an older record)."""
        commit, source = fields.get("commit"), fields.get("source")
        if isinstance(commit, str) and commit:
            return cls(commit, fields.get("dirty") == "yes")
        if isinstance(source, str) and source:
            return cls(note=source)
        return None


__all__ = ["NOT_A_CHECKOUT", "PREBUILT", "Source"]
