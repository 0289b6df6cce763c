"""Hot code upgrades (``deployer upgrade``) and the rollback of a hot-upgraded node, in the one engine.

inventory -> facts (the usual probe, plus each running node's root, OS pid and releases, asked over rpc)
-> plan (a restart deploy's plan, whose activation is replaced, host by host, by an in-place upgrade
when the host can take one) -> executor (upload, verify, extract, migrate once, then batches) -> report.

A host that cannot be upgraded in place (no relup in the release, no node running, a running version the
relup does not upgrade from) makes the whole upgrade refuse before anything changes, unless the operator
allowed ``fallback="restart"``: then that host gets an ordinary restart deploy, and the report says so.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from deployer.core.artifact import Artifact
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.plan import HostPlan, HostStep, Plan, failed_record, health_check, layout_for, provenance_record
from deployer.core.relup import (
    HOT_DOWNGRADE,
    HOT_UPGRADE,
    NodeRelease,
    Relup,
    TermError,
    hot_refusal,
    parse_node_release,
    read_relup,
)
from deployer.engine.executor import Executor
from deployer.engine.locks import current_user
from deployer.engine.run import Options, Result
from deployer.errors import DeployerError, PlanError
from deployer.operations.hooks import run_with_hooks
from deployer.remote import relup as hot
from deployer.remote.flavours import flavour

__all__ = ["HOT_EVENT", "Fallback", "hot_rollback", "node_releases", "upgrade"]

Fallback = Literal["refuse", "restart"]

HOT_EVENT = HOT_UPGRADE
"""The ``revisions.log`` event of a release installed in a running node (``hot-downgrade`` for a rollback)."""


def _notice(output: str) -> str | None:
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key == hot.FALLBACK_KEY:
            return f"fell back to a restart deploy: {value}"
    return None


def node_releases(
    executor: Executor, inventory: Inventory, hosts: list[str]
) -> dict[str, tuple[NodeRelease | None, str | None]]:
    """Ask each host's running node for its root, OS pid and releases: host -> (answer, or why none)."""
    spec = flavour(inventory.config.app.flavour)
    probed = executor.probe_each(hosts, hot.node_release(layout_for(inventory), spec))
    out: dict[str, tuple[NodeRelease | None, str | None]] = {}
    for host, (stdout, error) in probed.items():
        if stdout is None:
            out[host] = (None, error)
            continue
        node = parse_node_release(stdout)
        if node is not None:
            out[host] = (node, None)
        elif "node=none" in stdout:
            out[host] = (None, "nothing is deployed on this host")
        elif "node=down" in stdout:
            out[host] = (None, "the node is not running")
        else:
            answer = " ".join(stdout.split())[:200]
            out[host] = (None, f"the node's answer was not understood: {answer or 'no output'}")
    return out


def _read_relup(artifact: Artifact) -> Relup | None:
    try:
        return read_relup(artifact.path, artifact.version)
    except TermError as exc:
        raise DeployerError(
            f"{exc}", hint="rebuild the release with `rebar3 relup` and `rebar3 tar`; see docs/hot-upgrades.md"
        ) from None


def upgrade(
    inventory: Inventory, artifact: Artifact, options: Options | None = None, *, fallback: Fallback = "refuse"
) -> Result:
    """Upgrade the selected hosts' running nodes in place to ``artifact`` (its relup), without a restart.

    Refuses before anything changes when a host cannot take the upgrade, unless ``fallback`` is
    ``"restart"``: then such hosts get a restart deploy (also when a check on the host fails just before
    the install), and the report's warnings name them.
    """
    options = options or Options()
    config = inventory.config
    if config.node.service == "systemd":
        # The in-place install itself would keep the unit's main process, but the fallback and the revert
        # restart the node the daemon way, outside the unit: refuse rather than leave two supervisors.
        raise PlanError(
            "hot upgrades are not supported with node.service: systemd yet",
            hint="deploy the release with `deployer deploy` (a restart through the unit), or use "
            "node.service: daemon for hot upgrades",
        )
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    relup = _read_relup(artifact)
    spec = flavour(config.app.flavour)

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        from deployer.operations.release import deploy_plan  # release imports this module for rollbacks

        hosts = list(facts)
        nodes = node_releases(executor, inventory, hosts) if spec.name == "rebar3" and relup is not None else {}
        refused: dict[str, str] = {}
        for host in hosts:
            node, error = nodes.get(host, (None, None))
            why = hot_refusal(flavour=spec.name, relup=relup, version=artifact.version, node=node, node_error=error)
            if why is not None:
                refused[host] = why
        if refused and fallback != "restart":
            raise PlanError(
                "cannot hot-upgrade:\n  " + "\n  ".join(f"{h}: {why}" for h, why in refused.items()),
                hint="nothing was changed on any host; `deployer upgrade --fallback restart` does a restart "
                "deploy of those hosts instead, `deployer deploy` restarts every host",
            )
        plan = deploy_plan(executor, inventory, artifact, facts, options)
        host_plans = []
        for host_plan in plan.hosts:
            node = nodes.get(host_plan.host, (None, None))[0]
            if host_plan.host in refused or node is None or node.running is None:
                why = refused.get(host_plan.host, "no node answered")
                host_plans.append(replace(host_plan, notes=(*host_plan.notes, f"restart deploy instead: {why}")))
                continue
            host_plans.append(
                _hot_host(inventory, plan, host_plan, facts[host_plan.host], node, node.running, fallback)
            )
        warnings = [f"{h}: no hot upgrade, a restart deploy instead: {why}" for h, why in refused.items()]
        # Its own kind: a lost link's recovery knows a `hot-upgrade` record means done (deployer.engine.recovery).
        return replace(plan, kind="upgrade", hosts=tuple(host_plans)).with_warnings(warnings)

    return run_with_hooks(
        inventory, options, "upgrade", names, plan_for, release=artifact.version, version=artifact.version
    )


def _hot_host(
    inventory: Inventory,
    plan: Plan,
    host_plan: HostPlan,
    fact: HostFacts,
    node: NodeRelease,
    running: str,
    fallback: Fallback,
) -> HostPlan:
    """``host_plan`` (a restart deploy's) with its activation and revert replaced by the in-place upgrade."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    host = next(h for h in inventory.hosts if h.name == host_plan.host)
    health = health_check(inventory, host)
    artifact = plan.artifact
    release_id = plan.release_id
    assert artifact is not None and release_id is not None
    before = fact.current_release
    who = current_user()
    root_id = node.root_release
    # The running node keeps its root (an older release directory) until it restarts: never prune it.
    on_disk_after = [*fact.releases, release_id]
    prune_ids = fact.history.releases_to_prune(
        on_disk_after, keep=config.keep_releases - 1, protect=[release_id, before, root_id]
    )
    kept_shas = {fact.history.sha256(r) for r in on_disk_after if r not in prune_ids} | {artifact.sha256}
    paths = [layout.release(r) for r in prune_ids]
    paths += [layout.artifact(sha) for sha in sorted(a for a in fact.artifacts if a not in kept_shas)]
    # The same provenance as a deploy's records (deployer version, commit, dirty flag): `history` shows it.
    source = artifact.source.fields() if artifact.source is not None else {}
    common: dict[str, str | None] = dict(version=artifact.version, sha256=artifact.sha256, by=who, **source)
    success = provenance_record(
        dict(
            release=release_id,
            event=HOT_EVENT,
            outcome="success",
            previous=before,
            root=root_id,
            detail=f"installed in the running node (OS pid {node.os_pid}, root releases/{root_id}), no restart",
            **common,
        )
    )
    fallback_record = None
    if fallback == "restart":
        fallback_record = provenance_record(
            dict(
                release=release_id,
                event="deploy",
                outcome="success",
                previous=before,
                detail="hot upgrade fell back to a restart",
                **common,
            )
        )
    tmp = secrets.token_hex(4)
    activate = hot.hot_activate(
        layout,
        spec,
        release_id=release_id,
        name=config.app.name,
        version=artifact.version,
        from_version=running,
        root=node.root,
        os_pid=node.os_pid,
        sha256=artifact.sha256,
        health=health,
        stop_timeout=config.node.stop_timeout,
        tmp_suffix=tmp,
        success_record=success,
        fallback_record=fallback_record,
        prune_paths=paths,
    )
    assert before is not None  # a running node was found through `current`
    done = [
        provenance_record(
            dict(release=before, event="revert", outcome="success", version=fact.history.version(before), by=who),
            fact.history.built_from(before),
        )
    ]
    revert = hot.hot_revert(
        layout,
        spec,
        previous_id=before,
        root=node.root,
        version=artifact.version,
        health=health,
        stop_timeout=config.node.stop_timeout,
        tmp_suffix=tmp,
        records=done,
        failure_records=[failed_record(release_id, HOT_EVENT, before, common)],
    )
    others = [s for s in host_plan.steps if s.role not in ("activate", "revert")]
    steps = [*others, HostStep("activate", activate, _notice), HostStep("revert", revert)]
    order = ("before_stop", "activate", "after_healthy", "revert")
    steps.sort(key=lambda s: order.index(s.role))
    after = "falls back to a restart deploy" if fallback == "restart" else "leaves the node as it is"
    note = (
        f"hot upgrade {running} -> {artifact.version} in the running node (OS pid {node.os_pid}, "
        f"root releases/{root_id}); a failure before the install {after}"
    )
    notes = (*host_plan.notes, note)
    return replace(host_plan, steps=tuple(steps), notes=notes)


def hot_rollback(executor: Executor, inventory: Inventory, plan: Plan, facts: Mapping[str, HostFacts]) -> Plan:
    """A rollback's plan with a downgrade in place for each host whose node runs a hot-upgraded release
    whose relup can go back to the target's version (its root is the target release); other hosts keep
    the restart rollback. Only hosts whose current release was hot-upgraded are asked."""
    candidates = [
        p.host
        for p in plan.hosts
        if any(
            r.event == HOT_EVENT and r.ok and (r.release == facts[p.host].current_release or r.root == p.target)
            for r in facts[p.host].history.revisions
        )
    ]
    if not candidates or plan.kind != "rollback":
        return plan
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    nodes = node_releases(executor, inventory, candidates)
    who = current_user()
    host_plans = []
    for host_plan in plan.hosts:
        node = nodes.get(host_plan.host, (None, None))[0]
        target = host_plan.target
        fact = facts[host_plan.host]
        version = fact.history.version(target) if target else None
        if (
            node is None
            or target is None
            or version is None
            or node.root_release != target
            or version not in node.down_to
            or not any(v == version for v, _ in node.releases)
        ):
            if target is not None and any(r.event == HOT_EVENT and r.root == target for r in fact.history.revisions):
                # A restart on a release whose directory a hot upgrade changed: put it back as extracted first,
                # or its RELEASES would still name the newer version.
                restore = HostStep("before_stop", hot.restore_root(layout, target))
                host_plan = replace(host_plan, steps=(restore, *host_plan.steps))
            host_plans.append(host_plan)
            continue
        host = next(h for h in inventory.hosts if h.name == host_plan.host)
        tmp = secrets.token_hex(4)
        success = provenance_record(
            dict(
                release=target,
                event=HOT_DOWNGRADE,
                outcome="success",
                previous=host_plan.before,
                version=version,
                by=who,
                detail=f"downgraded in the running node (OS pid {node.os_pid}) through the relup, no restart",
            ),
            fact.history.built_from(target),
        )
        down = hot.downgrade(
            layout,
            spec,
            target_id=target,
            version=version,
            root=node.root,
            os_pid=node.os_pid,
            health=health_check(inventory, host),
            tmp_suffix=tmp,
            success_record=success,
        )
        steps = tuple(HostStep("activate", down) if s.role == "activate" else s for s in host_plan.steps)
        notes = (*host_plan.notes, f"downgrade {node.running} -> {version} in the running node (OS pid {node.os_pid})")
        host_plans.append(replace(host_plan, steps=steps, notes=notes))
    return replace(plan, hosts=tuple(host_plans))
