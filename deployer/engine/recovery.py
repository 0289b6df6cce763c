"""What to do with a host whose activation failed, decided from what the host really runs now.

The last ``@@step`` marker received says only how far a script got *at least*: the link may have
dropped after the host switched, after the new node started, or even after the host recorded its
success. So after any failed activation the engine reconnects, probes the host again (current
release, node pids, revisions.log) and decides here (pure, unit-tested):

* ``success``: the host is on the target, its node runs, and revisions.log holds this run's success
  record for it (written only after the health gate passed): only the report of it was lost. Which
  events count is the operation's (:func:`success_events`): a hot upgrade records ``hot-upgrade``
  (the node kept its OS pid) or, when it fell back to a restart deploy, ``deploy``;
* ``unchanged``: the host still runs what it ran before, with the same node: nothing to undo;
* ``revert``: anything else, when the plan has a way back;
* ``failed``: anything else, when it has none (start/stop/restart change no release).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Literal

from deployer.core.facts import HostFacts, RunOutcome
from deployer.core.plan import HostPlan
from deployer.core.relup import HOT_DOWNGRADE, HOT_UPGRADE

Decision = Literal["success", "unchanged", "revert", "failed"]

SUCCESS_EVENTS: Mapping[str, tuple[str, ...]] = {
    # In place, or (allowed by the operator) a restart deploy instead, decided on the host itself.
    "upgrade": (HOT_UPGRADE, "deploy"),
    # A hot-upgraded node is rolled back in place when its relup can go down, else restarted.
    "rollback": ("rollback", HOT_DOWNGRADE),
}


def success_events(kind: str) -> tuple[str, ...]:
    """The ``revisions.log`` events whose success record says an activation of a ``kind`` plan finished."""
    return SUCCESS_EVENTS.get(kind, (kind,))


def _epoch(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def recorded_success(facts: HostFacts, release: str, event: str, since: float | None) -> bool:
    """True when revisions.log holds a success record of ``event`` for ``release`` written at or after
    ``since`` (the host's clock when this run probed it); without ``since``, when it is the last record."""
    revisions = facts.history.revisions
    if since is None:
        last = revisions[-1] if revisions else None
        return last is not None and (last.release, last.event, last.outcome) == (release, event, "success")
    for rev in reversed(revisions):
        when = _epoch(rev.time)
        if when is not None and when < since:
            return False
        if (rev.release, rev.event, rev.outcome) == (release, event, "success"):
            return True
    return False


def decide(host_plan: HostPlan, kind: str, now: HostFacts, *, since: float | None) -> Decision:
    """Decide the fate of ``host_plan``'s host from ``now``, its facts re-probed after a failure of an
    activation of a ``kind`` plan (deploy, rollback, upgrade, ...)."""
    current = now.current_release
    switches = host_plan.target != host_plan.before
    target = host_plan.target
    landed = switches and target is not None and current == target and bool(now.node_pids)
    if landed and target is not None and any(recorded_success(now, target, e, since) for e in success_events(kind)):
        return "success"
    if current == host_plan.before and set(now.node_pids) == set(host_plan.node_pids):
        return "unchanged"
    return "revert" if host_plan.revert is not None else "failed"


def describe_now(now: HostFacts | None) -> str:
    """``now runs 2026...-0.2.0, node pid 4242`` for a report line; what is unknown says so."""
    if now is None:
        return "what it runs now is unknown"
    release = now.current_release or "no release"
    node = f"node pid {' '.join(map(str, now.node_pids))}" if now.node_pids else "no node running"
    return f"now runs {release}, {node}"


def describe_run(run: RunOutcome) -> str:
    """What a detached activation did on its own after the link was lost, for a report line:
    ``the host went on alone and failed at install: <its error>``."""
    if run.state == "running":
        return "its activation still runs on the host, past its deadline"
    if run.state == "missing":
        return "the activation never started on the host"
    if run.state == "lost":
        return "the activation was cut short on the host (a reboot, a power cut or a kill) before it finished"
    if run.ok:
        return "the host went on alone and finished the activation"
    where = f" at {run.step}" if run.step else ""
    why = run.log[-1] if run.log else f"exit status {run.status}"
    if run.deadline_expired:
        why = f"ended at its own deadline ({why})"
    return f"the host went on alone and failed{where}: {why}"
