"""Plans: what deploy, migrate and rollback will do on each host, decided before anything changes.

A plan is built from the inventory, the artifact and the probed host facts, and
holds the exact scripts the executor will run. ``--dry-run`` renders the same
object (secrets masked) and stops.
"""

from __future__ import annotations

import re
import secrets as random_secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import SecretStr

from deployer.core.artifact import Artifact
from deployer.core.config import HostConfig, parse_count
from deployer.core.facts import HostFacts
from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout, make_release_id
from deployer.errors import PlanError
from deployer.remote import release as rc
from deployer.remote.flavours import Flavour, flavour
from deployer.remote.fragments import expand_placeholders
from deployer.remote.shell import Script, Secret, env_file_text

COOKIE_ALPHABET = string.ascii_uppercase + string.digits


def generate_cookie() -> SecretStr:
    """A strong Erlang cookie (~206 bits) from the OS's CSPRNG."""
    return SecretStr("".join(random_secrets.choice(COOKIE_ALPHABET) for _ in range(40)))


def layout_for(inventory: Inventory) -> RemoteLayout:
    return RemoteLayout(inventory.config.deploy_to, inventory.config.app.name)


def health_check(inventory: Inventory, host: HostConfig | None = None) -> rc.HealthCheck:
    """The health gate's settings; ``${NAME}`` in ``health.http`` is the plain env value of ``host`` (or of
    ``env.clear`` when no host is given)."""
    health = inventory.config.health
    http = health.http
    if http is not None and "${" in http:
        values = {**inventory.config.env.clear, **(host.env if host is not None else {})}
        try:
            http = expand_placeholders(http, values)
        except KeyError as exc:
            raise PlanError(
                f"{inventory.path}: health.http: ${{{exc.args[0]}}} is not a plain env value"
                + (f" of host {host.name}" if host is not None else ""),
                hint="set it in env.clear or hosts[].env (secrets are never put into the health URL)",
            ) from None
        if not re.fullmatch(r"https?://[^\s'\"]+", http):
            raise PlanError(f"{inventory.path}: health.http: {http!r} is not a URL once its placeholders are expanded")
    return rc.HealthCheck(
        http=http,
        rpc=health.rpc,
        deadline=health.deadline,
        interval=health.interval,
        stable_for=health.stable_for,
    )


def node_env(inventory: Inventory, host: HostConfig, release_id: str) -> dict[str, str | Secret]:
    """The node's environment on ``host``: inventory values, secrets, and what deployer owns."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)

    def expand(value: str) -> str:
        return value.replace("${shared}", layout.shared).replace("${deploy_to}", layout.deploy_to)

    env: dict[str, str | Secret] = {}
    env.update({k: expand(v) for k, v in config.env.clear.items()})
    env.update({k: expand(v) for k, v in host.env.items()})
    for name, value in inventory.secrets.items():
        env[name] = Secret(name, value)
    env.update({k: expand(v) for k, v in spec.runtime_env})
    env["RELEASE_TMP"] = layout.release_tmp
    env["RELEASE_NODE"] = config.node_name
    env["RELEASE_DISTRIBUTION"] = config.node.distribution
    env["DEPLOYER_RELEASE_ID"] = release_id
    env["DEPLOYER_SHARED_DIR"] = layout.shared
    if config.node.loopback_only:
        # EPMD and the distribution port must not face the network; observe through an SSH tunnel.
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        previous = env.get("ERL_AFLAGS")
        flags = "-kernel inet_dist_use_interface {127,0,0,1}"
        env["ERL_AFLAGS"] = f"{previous} {flags}" if isinstance(previous, str) and previous else flags
    return env


def batches(
    hosts: Sequence[str], inventory: Inventory, overrides: Mapping[str, object] | None = None
) -> list[list[str]]:
    """Split hosts into the batches the strategy asks for (canary first when set)."""
    strategy = inventory.config.strategy.model_copy(update=dict(overrides or {}))
    names = list(hosts)
    if not names:
        return []
    if strategy.kind == "parallel" and not strategy.canary:
        return [names]
    result: list[list[str]] = []
    if strategy.canary:
        result.append(names[:1])
        names = names[1:]
    size = len(names) if strategy.kind == "parallel" else parse_count(strategy.batch_size, len(hosts) or 1)
    for start in range(0, len(names), max(1, size)):
        result.append(names[start : start + size])
    return result


@dataclass(frozen=True)
class HostPlan:
    """One host's part of a deploy or rollback."""

    host: str
    before: str | None
    target: str
    upload: bool
    prepare: Script | None
    activate: Script
    revert: Script
    abort: Script | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A whole operation. ``kind`` is deploy, rollback or migrate."""

    kind: str
    env: str
    release_id: str | None
    version: str | None
    artifact: Artifact | None
    hosts: tuple[HostPlan, ...]
    batches: tuple[tuple[str, ...], ...]
    migrator: str | None = None
    migrate: Script | None = None
    upload_scripts: Mapping[str, Script] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    max_fail: int = 0
    pause: float = 0.0

    def host(self, name: str) -> HostPlan:
        for plan in self.hosts:
            if plan.host == name:
                return plan
        raise KeyError(name)


def _record(**fields: str | None) -> str:
    return rc.revision_record(fields)


def _tmp_suffix() -> str:
    return random_secrets.token_hex(4)


def plan_deploy(
    inventory: Inventory,
    artifact: Artifact,
    facts: Mapping[str, HostFacts],
    *,
    who: str,
    cookie: SecretStr | None,
    now: datetime | None = None,
    strategy: Mapping[str, object] | None = None,
) -> Plan:
    """Plan a deploy of ``artifact`` to every host in ``facts`` (which are the selected hosts, in order)."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    now = now or datetime.now(UTC)
    taken = {r for f in facts.values() for r in f.releases}
    release_id = make_release_id(now, artifact.version, taken)
    selected = [h for h in inventory.hosts if h.name in facts]
    host_plans: list[HostPlan] = []
    uploads: dict[str, Script] = {}
    for host in selected:
        fact = facts[host.name]
        health = health_check(inventory, host)
        before = fact.current_release
        upload = artifact.sha256 not in fact.artifacts
        if upload:
            uploads[host.name] = rc.receive_artifact(layout, artifact.sha256)
        on_disk_after = [*fact.releases, release_id]
        prune = fact.history.releases_to_prune(
            on_disk_after, keep=config.keep_releases - 1, protect=[release_id, before]
        )
        kept_shas = {fact.history.sha256(r) for r in on_disk_after if r not in prune} | {artifact.sha256}
        prune_artifacts = sorted(a for a in fact.artifacts if a not in kept_shas)
        common = dict(version=artifact.version, sha256=artifact.sha256, by=who)
        host_plans.append(
            HostPlan(
                host=host.name,
                before=before,
                target=release_id,
                upload=upload,
                prepare=rc.prepare(
                    layout,
                    release_id=release_id,
                    sha256=artifact.sha256,
                    env_file=env_file_text(node_env(inventory, host, release_id)),
                    cookie=Secret("erlang cookie", cookie) if cookie is not None and not fact.has_cookie else None,
                ),
                activate=rc.activate(
                    layout,
                    spec,
                    release_id=release_id,
                    health=health,
                    stop_timeout=config.node.stop_timeout,
                    tmp_suffix=_tmp_suffix(),
                    success_record=_record(
                        release=release_id, event="deploy", outcome="success", previous=before, **common
                    ),
                    prune_releases=prune,
                    prune_artifacts=prune_artifacts,
                ),
                revert=_revert(
                    layout,
                    spec,
                    config.node.stop_timeout,
                    health,
                    before,
                    [
                        _record(
                            release=release_id,
                            event="deploy",
                            outcome="failed",
                            previous=before,
                            detail="not healthy; reverted",
                            **common,
                        ),
                    ],
                    who,
                    fact,
                ),
                abort=rc.abort_prepared(layout, release_id),
                notes=tuple(f"remove old release {r}" for r in prune),
            )
        )
    migrator = inventory.migrator()
    migrate_script = None
    if migrator is not None and config.migrate is not None:
        if migrator.name not in facts:
            raise PlanError(
                f"the migrator host {migrator.name} is not among the selected hosts",
                hint="include it in --hosts/--roles, or deploy to every host",
            )
        migrate_script = rc.migrate(
            layout,
            spec,
            release_id=release_id,
            expression=config.migrate.eval,
            timeout=config.migrate.timeout,
            record=_record(release=release_id, event="migrate", outcome="success", version=artifact.version, by=who),
        )
    names = [h.name for h in selected]
    return Plan(
        kind="deploy",
        env=inventory.env,
        release_id=release_id,
        version=artifact.version,
        artifact=artifact,
        hosts=tuple(host_plans),
        batches=tuple(tuple(b) for b in batches(names, inventory, strategy)),
        migrator=migrator.name if migrator is not None and migrate_script else None,
        migrate=migrate_script,
        upload_scripts=uploads,
        max_fail=_max_fail(inventory, len(names), strategy),
        pause=float(inventory.config.strategy.model_copy(update=dict(strategy or {})).pause),
    )


def _max_fail(inventory: Inventory, total: int, overrides: Mapping[str, object] | None) -> int:
    strategy = inventory.config.strategy.model_copy(update=dict(overrides or {}))
    return parse_count(strategy.max_fail, total, allow_zero=True)


def _revert(
    layout: RemoteLayout,
    spec: Flavour,
    stop_timeout: float,
    health: rc.HealthCheck,
    previous: str | None,
    records: list[str],
    who: str,
    fact: HostFacts,
) -> Script:
    # The failed release's entry goes first (its health gate has failed); the revert's own entry is written
    # on the host only once the previous release is healthy again.
    done = []
    if previous is not None:
        done = [
            _record(
                release=previous, event="revert", outcome="success", version=fact.history.version(previous), by=who
            ),
        ]
    return rc.revert(
        layout,
        spec,
        previous_id=previous,
        health=health,
        stop_timeout=stop_timeout,
        tmp_suffix=_tmp_suffix(),
        records=done,
        failure_records=records,
    )


def plan_rollback(
    inventory: Inventory,
    facts: Mapping[str, HostFacts],
    *,
    who: str,
    to: str | None = None,
    strategy: Mapping[str, object] | None = None,
) -> Plan:
    """Plan switching every host back to its previous good release, or to release ``to``."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    selected = [h for h in inventory.hosts if h.name in facts]
    problems: list[str] = []
    host_plans: list[HostPlan] = []
    warnings: list[str] = []
    for host in selected:
        fact = facts[host.name]
        health = health_check(inventory, host)
        before = fact.current_release
        if to is not None:
            target = _match_release(to, fact)
            if target is None:
                problems.append(
                    f"{host.name}: release {to!r} is not on this host (has: {', '.join(fact.releases) or 'none'})"
                )
                continue
            if fact.history.status(target) == "failed":
                problems.append(f"{host.name}: release {target} is recorded as failed; refusing to roll back to it")
                continue
        else:
            target = fact.previous_good
            if target is None:
                problems.append(f"{host.name}: no previous good release to roll back to (current: {before or 'none'})")
                continue
        if target == before:
            problems.append(f"{host.name}: {target} is already the current release")
            continue
        version = fact.history.version(target)
        host_plans.append(
            HostPlan(
                host=host.name,
                before=before,
                target=target,
                upload=False,
                prepare=None,
                activate=rc.activate(
                    layout,
                    spec,
                    release_id=target,
                    health=health,
                    stop_timeout=config.node.stop_timeout,
                    tmp_suffix=_tmp_suffix(),
                    success_record=_record(
                        release=target, event="rollback", outcome="success", version=version, previous=before, by=who
                    ),
                ),
                revert=_revert(
                    layout,
                    spec,
                    config.node.stop_timeout,
                    health,
                    before,
                    [
                        _record(
                            release=target,
                            event="rollback",
                            outcome="failed",
                            version=version,
                            previous=before,
                            by=who,
                            detail="not healthy; reverted",
                        ),
                    ],
                    who,
                    fact,
                ),
                abort=None,
            )
        )
    warnings.extend(schema_warnings(facts, {p.target for p in host_plans}))
    if problems:
        raise PlanError(
            "cannot roll back:\n  " + "\n  ".join(problems), hint="`invoke releases --env ENV` lists what each host has"
        )
    targets = {p.target for p in host_plans}
    names = [p.host for p in host_plans]
    return Plan(
        kind="rollback",
        env=inventory.env,
        release_id=targets.pop() if len(targets) == 1 else None,
        version=None,
        artifact=None,
        hosts=tuple(host_plans),
        batches=tuple(tuple(b) for b in batches(names, inventory, strategy)),
        warnings=tuple(warnings),
        max_fail=_max_fail(inventory, len(names), strategy),
        pause=float(inventory.config.strategy.model_copy(update=dict(strategy or {})).pause),
    )


def schema_warnings(facts: Mapping[str, HostFacts], targets: set[str]) -> list[str]:
    """Warn when rolling back to code older than the release that last migrated the schema."""
    warnings: list[str] = []
    for fact in facts.values():
        migration = fact.history.last_migration()
        if migration is None:
            continue
        for target in sorted(targets):
            if fact.history.newer_than(migration.release, target):
                version = migration.version or migration.release
                warnings.append(
                    f"the schema was last migrated by {migration.release} (version {version}), newer than "
                    f"{target}: the old code will run against the newer schema. Roll back the migration "
                    "yourself first if that code cannot cope with it."
                )
        if warnings:
            break
    return warnings


def _match_release(wanted: str, fact: HostFacts) -> str | None:
    """``--to`` accepts a release id or a version (the newest good release of that version)."""
    if wanted in fact.releases:
        return wanted
    matches = [r for r in fact.history.good(fact.releases) if fact.history.version(r) == wanted]
    return matches[-1] if matches else None


def plan_migrate(inventory: Inventory, facts: Mapping[str, HostFacts], *, who: str) -> Plan:
    """Plan running the current release's migration on the migrator host."""
    config = inventory.config
    migrator = inventory.migrator()
    if migrator is None or config.migrate is None:
        raise PlanError(f"{inventory.path}: no `migrate:` section, so there is nothing to run")
    fact = facts.get(migrator.name)
    if fact is None or fact.current_release is None:
        raise PlanError(f"{migrator.name}: no current release to migrate with", hint="deploy first")
    script = rc.migrate(
        layout_for(inventory),
        flavour(config.app.flavour),
        release_id=fact.current_release,
        expression=config.migrate.eval,
        timeout=config.migrate.timeout,
        record=_record(
            release=fact.current_release, event="migrate", outcome="success", version=fact.current_version, by=who
        ),
    )
    return Plan(
        kind="migrate",
        env=inventory.env,
        release_id=fact.current_release,
        version=fact.current_version,
        artifact=None,
        hosts=(),
        batches=(),
        migrator=migrator.name,
        migrate=script,
    )
