"""Release history from ``revisions.log``: ordering, good/failed status, rollback targets, pruning.

Ordering always comes from the recorded history (the order in which releases
first appear), never from file modification times. A release's status is the
outcome of its latest record, so a release that failed its health gate is never
a rollback target and never counts toward ``keep_releases``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deployer.core.provenance import Source


@dataclass(frozen=True)
class Revision:
    """One line of ``revisions.log``."""

    time: str
    release: str
    event: str
    outcome: str
    version: str | None = None
    sha256: str | None = None
    by: str | None = None
    previous: str | None = None
    detail: str | None = None
    migrations: str | None = None
    """Migration records: the migration files the release ships, space-separated (when recorded)."""
    commit: str | None = None
    """The git commit the release was built from (records written since deployer kept it)."""
    dirty: str | None = None
    """``yes`` when the built worktree had uncommitted changes."""
    source: str | None = None
    """Why there is no commit: ``not a git checkout``, a prebuilt tarball."""
    deployer: str | None = None
    """The deployer version that wrote the record."""
    root: str | None = None
    """Hot upgrades: the release directory the upgraded node runs from (its root, an older release)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    @property
    def built_from(self) -> Source | None:
        """The release's source as recorded; None for records older than this field."""
        return Source.from_fields({"commit": self.commit, "dirty": self.dirty, "source": self.source})


def parse_revisions(lines: Iterable[str]) -> list[Revision]:
    """Parse ``<time>\\t<json>`` lines; malformed lines are skipped (a log is not worth failing a deploy)."""
    revisions: list[Revision] = []
    for line in lines:
        time, sep, payload = line.rstrip("\n").partition("\t")
        if not sep:
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("release"), str):
            continue
        revisions.append(
            Revision(
                time=time,
                release=data["release"],
                event=str(data.get("event", "deploy")),
                outcome=str(data.get("outcome", "success")),
                version=_opt(data.get("version")),
                sha256=_opt(data.get("sha256")),
                by=_opt(data.get("by")),
                previous=_opt(data.get("previous")),
                detail=_opt(data.get("detail")),
                migrations=_opt(data.get("migrations")),
                commit=_opt(data.get("commit")),
                dirty=_opt(data.get("dirty")),
                source=_opt(data.get("source")),
                deployer=_opt(data.get("deployer")),
                root=_opt(data.get("root")),
            )
        )
    return revisions


def _opt(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class History:
    """The parsed history of one host."""

    revisions: tuple[Revision, ...]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> History:
        return cls(tuple(parse_revisions(lines)))

    def order(self) -> list[str]:
        """Release ids in the order they were first deployed (oldest first)."""
        seen: dict[str, None] = {}
        for rev in self.revisions:
            seen.setdefault(rev.release, None)
        return list(seen)

    def status(self, release: str) -> str | None:
        """``success`` or ``failed`` from the release's latest deploy/rollback/revert record; None when
        never recorded. Migration records say nothing about whether the release ran healthy."""
        outcome = None
        for rev in self.revisions:
            if rev.release == release and rev.event != "migrate":
                outcome = rev.outcome
        return outcome

    def last_migration(self) -> Revision | None:
        """The latest successful migration record (which release migrated the schema last)."""
        for rev in reversed(self.revisions):
            if rev.event == "migrate" and rev.ok:
                return rev
        return None

    def newer_than(self, release: str, other: str) -> bool:
        """True when ``release`` was first deployed after ``other`` (both in this history)."""
        order = self.order()
        return release in order and other in order and order.index(release) > order.index(other)

    def version(self, release: str) -> str | None:
        for rev in reversed(self.revisions):
            if rev.release == release and rev.version:
                return rev.version
        return None

    def built_from(self, release: str) -> Source | None:
        """The source ``release`` was built from, from its latest record that says (None: never recorded)."""
        for rev in reversed(self.revisions):
            if rev.release == release and rev.built_from is not None:
                return rev.built_from
        return None

    def sha256(self, release: str) -> str | None:
        for rev in reversed(self.revisions):
            if rev.release == release and rev.sha256:
                return rev.sha256
        return None

    def good(self, on_disk: Iterable[str]) -> list[str]:
        """Releases whose latest outcome is success and that are still on disk, oldest first."""
        present = set(on_disk)
        return [r for r in self.order() if r in present and self.status(r) == "success"]

    def previous_good(self, current: str | None, on_disk: Iterable[str]) -> str | None:
        """The newest good release deployed before ``current`` (the default rollback target)."""
        good = self.good(on_disk)
        order = self.order()
        if current in order:
            position = order.index(current)
            earlier = [r for r in good if order.index(r) < position]
            return earlier[-1] if earlier else None
        others = [r for r in good if r != current]
        return others[-1] if others else None

    def last_good(self, on_disk: Iterable[str]) -> str | None:
        """The newest release on disk whose latest outcome is success (what a rollback falls back to)."""
        good = self.good(on_disk)
        return good[-1] if good else None

    def unaccounted(self, on_disk: Iterable[str]) -> list[str]:
        """Releases on disk this history says nothing about: recorded before the part of ``revisions.log``
        that was read, or after the log was rotated or lost. Nobody can tell whether they are good."""
        known = {rev.release for rev in self.revisions if rev.event != "migrate"}
        return [r for r in on_disk if r not in known]

    def releases_to_prune(self, on_disk: Sequence[str], *, keep: int, protect: Iterable[str | None]) -> list[str]:
        """Releases to delete: the ones this history accounts for, except the newest ``keep`` good ones,
        the newest good one on disk (always: it is the last rollback target) and ``protect``.

        ``protect`` holds the release that will be current and the one that is current now. Releases
        the history knows as failed are removed: they are never rollback targets. A release the history
        does not account for (see :meth:`unaccounted`) is always kept: pruning deletes only what it can
        prove is not needed.
        """
        keep_set = {r for r in protect if r}
        keep_set.update(self.good(on_disk)[-keep:] if keep > 0 else [])
        last_good = self.last_good(on_disk)
        if last_good is not None:
            keep_set.add(last_good)
        keep_set.update(self.unaccounted(on_disk))
        return [r for r in on_disk if r not in keep_set]
