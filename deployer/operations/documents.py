"""The JSON documents of the read-only operations, built from the facts (``status --json`` and its table).

Here rather than in the CLI's renderers so the operations never import the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from deployer.core.facts import HostFacts


class ProbedHost(Protocol):
    """A probed host: its facts, or why it could not be probed."""

    @property
    def host(self) -> str: ...
    @property
    def reachable(self) -> bool: ...
    @property
    def facts(self) -> HostFacts | None: ...
    @property
    def error(self) -> str | None: ...


def status_json(rows: Sequence[ProbedHost]) -> dict[str, Any]:
    """Per host: reachable, current release and version, node pids, releases on disk, lock; ``mixed``."""
    hosts = []
    for row in rows:
        f = row.facts
        hosts.append(
            {
                "host": row.host,
                "reachable": row.reachable,
                "error": row.error,
                "current": f.current_release if f else None,
                "version": f.current_version if f else None,
                "node_pids": list(f.node_pids) if f else [],
                "running": bool(f and f.node_pids),
                "releases": [
                    {"release": r, "version": f.history.version(r), "status": f.history.status(r) or "unknown"}
                    for r in f.releases
                ]
                if f
                else [],
                "lock": f.lock.describe() if f and f.lock else None,
                "disk_free_kb": f.disk_free_kb if f else None,
            }
        )
    currents = {h["current"] for h in hosts if h["reachable"]}
    return {"hosts": hosts, "mixed": len(currents) > 1}
