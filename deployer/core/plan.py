"""Plans: what deploy, migrate, rollback, start, stop and restart will do on each host, decided first.

A plan is built from the inventory, the artifact and the probed host facts, and
holds the exact scripts the executor will run. ``--dry-run`` renders the same
object (secrets masked) and stops.
"""

from __future__ import annotations

import hashlib
import re
import secrets as random_secrets
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal

from pydantic import SecretStr

from deployer import __version__
from deployer.core.artifact import Artifact
from deployer.core.config import HostConfig, parse_count
from deployer.core.facts import HostFacts
from deployer.core.history import History
from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout, make_release_id
from deployer.core.provenance import Source
from deployer.errors import PlanError
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import Fragment, expand_placeholders
from deployer.remote.shell import Script, Secret, SecretText, env_file_text
from deployer.remote.systemd import Service, unit_name

COOKIE_ALPHABET = string.ascii_uppercase + string.digits


def generate_cookie() -> SecretStr:
    """A strong Erlang cookie (~206 bits) from the OS's CSPRNG."""
    return SecretStr("".join(random_secrets.choice(COOKIE_ALPHABET) for _ in range(40)))


def layout_for(inventory: Inventory) -> RemoteLayout:
    config = inventory.config
    return RemoteLayout(config.deploy_to, config.app.name, config.node_user)


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


def service_for(inventory: Inventory, *, user: str | None = None) -> Service | None:
    """The node's systemd unit with ``node.service: systemd``; None in daemon mode (``user``: see
    :attr:`Service.user`)."""
    config = inventory.config
    if config.node.service != "systemd":
        return None
    return Service(
        layout_for(inventory),
        flavour(config.app.flavour),
        unit_name(config.app.name, inventory.env),
        stop_timeout=config.node.stop_timeout,
        limit_nofile=config.node.limit_nofile,
        user=user,
        node_user=config.node_user,
    )


def node_env(inventory: Inventory, host: HostConfig) -> dict[str, str | Secret]:
    """The node's environment on ``host``: inventory values, secrets, and what deployer owns.

    The same for every release (the launcher adds ``DEPLOYER_RELEASE_ID``): the file lives with the
    environment, so a restart or a rollback runs with today's values.
    """
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)

    def expand(value: str) -> str:
        return value.replace("${shared}", layout.shared).replace("${deploy_to}", layout.deploy_to)

    env: dict[str, str | Secret] = {}
    env.update({k: expand(v) for k, v in config.env.clear.items()})
    env.update({k: expand(v) for k, v in host.env.items()})
    for name, value in inventory.secrets_for(host).items():
        env[name] = Secret(name, value)
    env.update({k: expand(v) for k, v in spec.runtime_env})
    env["RELEASE_TMP"] = layout.release_tmp
    env["RELEASE_NODE"] = config.node_name
    env["RELEASE_DISTRIBUTION"] = config.node.distribution
    env["DEPLOYER_SHARED_DIR"] = layout.shared
    if config.node.loopback_only:
        # EPMD and the distribution port must not face the network; observe through an SSH tunnel.
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        previous = env.get("ERL_AFLAGS")
        flags = "-kernel inet_dist_use_interface {127,0,0,1}"
        env["ERL_AFLAGS"] = f"{previous} {flags}" if isinstance(previous, str) and previous else flags
    return env


def node_env_file(inventory: Inventory, host: HostConfig) -> SecretText:
    """The text of ``host``'s environment file (secrets kept as masked parts)."""
    return env_file_text(node_env(inventory, host))


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


StepRole = Literal["before_stop", "activate", "after_healthy", "revert"]
STEP_ROLES: tuple[StepRole, ...] = ("before_stop", "activate", "after_healthy", "revert")

LOCAL = "local"
"""``HostStep.on`` for a step that runs on the control machine (a local hook, a cloud balancer's CLI)."""


@dataclass(frozen=True)
class HostStep:
    """One remote step of a host's publishing phase, and where it runs (its ``role``):

    * ``before_stop``: before the host's activation step, i.e. before its node is stopped (and again
      before a revert stops the failed node);
    * ``activate``: the step that changes what the host runs (switch + restart + health gate for deploy
      and rollback; the start, stop or restart itself for node operations);
    * ``after_healthy``: after the activation step succeeded, i.e. once the new node passed the health
      gate (after a stop: once the node is down), and again after a successful revert;
    * ``revert``: run when the activation failed and the host must be put back.

    ``notice`` turns the step's stdout into a line for the operator when the step had nothing to do
    (e.g. "no node was running"), or None. ``on`` runs the step elsewhere than on the host it is
    about: another machine reached over SSH (a load balancer) or :data:`LOCAL` (the control machine).
    """

    role: StepRole
    script: Script
    notice: Callable[[str], str | None] | None = field(default=None, compare=False)
    on: HostConfig | str | None = None
    undo_on_failure: bool = False
    """``after_healthy`` only: when this step fails, the host is reverted (or, with nothing to revert to,
    reported failed) instead of being left healthy with the failure reported."""

    @property
    def name(self) -> str:
        return self.script.name

    @classmethod
    def shell(cls, role: StepRole, name: str, command: str, *, timeout: float | None = None) -> HostStep:
        """A step that runs ``command`` (POSIX sh, ``set -eu``) on each host at ``role``'s seam.

        ``command`` is taken as written, like a hook in a config file: quote what needs quoting.
        """
        if role not in STEP_ROLES:
            raise ValueError(f"unknown step role {role!r} (one of {', '.join(STEP_ROLES)})")
        return cls(role, Script(name=name, parts=("set -eu\n", command, "\n"), timeout=timeout))


def _by_role(steps: Iterable[HostStep]) -> tuple[HostStep, ...]:
    # Stable: steps of one role keep the order they were given in.
    return tuple(sorted(steps, key=lambda s: STEP_ROLES.index(s.role)))


@dataclass(frozen=True)
class HostPlan:
    """One host's part of an operation: what it runs now, what it will run, and every step on it.

    ``upload``/``prepare``/``abort`` belong to the updating phase of a deploy; ``steps`` to the
    publishing phase, in the order :data:`STEP_ROLES` gives.
    """

    host: str
    before: str | None
    target: str | None
    steps: tuple[HostStep, ...]
    upload: bool = False
    prepare: Script | None = None
    abort: Script | None = None
    notes: tuple[str, ...] = ()
    version: str | None = None
    """The version the host runs now (node operations show it)."""
    node_pids: tuple[int, ...] = ()
    unchanged: bool = False
    """A re-deploy of what the host already runs, healthy, with the same environment: nothing to do there."""

    def scripts(self, role: StepRole) -> tuple[HostStep, ...]:
        return tuple(step for step in self.steps if step.role == role)

    @property
    def activate(self) -> Script:
        return self.scripts("activate")[0].script

    @property
    def revert(self) -> Script | None:
        reverts = self.scripts("revert")
        return reverts[0].script if reverts else None


# What each operation's report says about hosts it did not reach ("not restarted: web3").
_DONE = {
    "deploy": "deployed",
    "rollback": "rolled back",
    "start": "started",
    "stop": "stopped",
    "restart": "restarted",
    "upgrade": "upgraded",
}


@dataclass(frozen=True)
class Plan:
    """A whole operation, decided before anything changes. ``kind`` is deploy, rollback, migrate,
    start, stop or restart (upgrade: a hot upgrade, see :mod:`deployer.operations.upgrade`); every one of
    them runs through the same executor path."""

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
    health_gated: bool = True
    """False for ``stop``: a host that succeeded has no node to call healthy."""

    def host(self, name: str) -> HostPlan:
        for plan in self.hosts:
            if plan.host == name:
                return plan
        raise KeyError(name)

    @property
    def label(self) -> str:
        """The name of the publishing phase in the operator's output (``restart batch 1/3``)."""
        return "activate" if self.kind in ("deploy", "rollback", "upgrade") else self.kind

    @property
    def done(self) -> str:
        return _DONE.get(self.kind, self.kind + "ed")

    def with_warnings(self, warnings: Sequence[str]) -> Plan:
        return replace(self, warnings=(*self.warnings, *warnings)) if warnings else self

    def with_steps(self, steps: Sequence[HostStep]) -> Plan:
        """The same plan with ``steps`` added on every host at their roles' seams."""
        if not steps:
            return self
        hosts = tuple(replace(h, steps=_by_role([*h.steps, *steps])) for h in self.hosts)
        return replace(self, hosts=hosts)

    def listing(self, host_plan: HostPlan) -> list[tuple[str, Script]]:
        """Every script of ``host_plan`` in the order they may run, labelled for ``--dry-run``."""
        out: list[tuple[str, Script]] = []
        if host_plan.upload and host_plan.host in self.upload_scripts:
            out.append(("upload (tarball on stdin)", self.upload_scripts[host_plan.host]))
        if host_plan.prepare is not None:
            out.append(("prepare", host_plan.prepare))
        if self.migrate is not None and self.migrator == host_plan.host:
            out.append(("migrate (once, before any switch)", self.migrate))
        labels = {
            "before_stop": "before the node stops",
            "activate": self.label,
            "after_healthy": "after the node is healthy",
            "revert": "on failure: revert",
        }
        for step in host_plan.steps:
            label = labels[step.role]
            if step.role in ("before_stop", "after_healthy") or step.name != step.role:
                label = f"{label}: {step.name}" if step.role != "activate" else label
            out.append((label, step.script))
        return out


def _record(**fields: str | None) -> str:
    # Every record says which deployer wrote it (who deployed which commit: see deployer.core.provenance).
    return rc.revision_record({**fields, "deployer": __version__})


def provenance_record(fields: Mapping[str, str | None], source: Source | None = None) -> str:
    """A ``revisions.log`` record of ``fields`` with the provenance every record of deployer carries: the
    deployer version, and ``source``'s commit and dirty flag (or why there is none) when it is known."""
    return _record(**{**fields, **_source_fields(source)})


def _source_fields(source: Source | None) -> dict[str, str | None]:
    """A release's commit/dirty/source record fields (none when nobody recorded them)."""
    return source.fields() if source is not None else {}


def _tmp_suffix() -> str:
    return random_secrets.token_hex(4)


RUNNING_CHECK_LIMIT = 5.0
"""Seconds the probe's one health check of a running node may take (a re-deploy's \"unchanged\" test)."""


def running_probe(inventory: Inventory, host: HostConfig, nonce: str) -> Fragment:
    """The probe's extra facts for a deploy: is the current node healthy, and its env file's digest."""
    health = health_check(inventory, host)
    health = replace(health, deadline=min(health.deadline, RUNNING_CHECK_LIMIT))
    return rc.running_state(layout_for(inventory), flavour(inventory.config.app.flavour), health, nonce)


def env_digest(inventory: Inventory, host: HostConfig, nonce: str) -> str:
    """What :func:`~deployer.remote.release.running_state` prints for ``host``'s environment file as
    deployer would write it (:func:`node_env_file`: the one a deploy stages and ``env push`` writes)."""
    rendered = node_env_file(inventory, host).render(reveal=True)
    return hashlib.sha256(nonce.encode() + rendered.encode()).hexdigest()


def unchanged_on(fact: HostFacts, artifact: Artifact, env_sha256: str | None) -> bool:
    """Whether a deploy of ``artifact`` may leave this host alone: it runs a release made from that very
    artifact (revisions.log's sha256), its node is healthy right now, and its environment file is the one this
    deploy would write (``env_sha256``: :func:`env_digest`, None when unknown)."""
    current = fact.current_release
    return (
        current is not None
        and current in fact.releases
        and fact.history.sha256(current) == artifact.sha256
        and fact.health == "ok"
        and bool(fact.node_pids)
        and env_sha256 is not None
        and fact.env_sha256 == env_sha256
    )


def plan_deploy(
    inventory: Inventory,
    artifact: Artifact,
    facts: Mapping[str, HostFacts],
    *,
    who: str,
    cookie: SecretStr | None,
    now: datetime | None = None,
    strategy: Mapping[str, object] | None = None,
    migrations: Sequence[str] | None = None,
    env_nonce: str | None = None,
    restart: bool = False,
) -> Plan:
    """Plan a deploy of ``artifact`` to every host in ``facts`` (which are the selected hosts, in order).

    ``migrations`` (the migration files the release ships) is recorded with the migration, so a later
    rollback can tell whether its target lacks migrations that were applied.

    A host that already runs this artifact, healthy, with the same environment file (the probe ran
    :func:`running_probe` with ``env_nonce``), is left alone: its plan is *unchanged* (no upload, no new
    release, no restart), unless ``restart``. When every host is unchanged there is no migration either.
    """
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    now = now or datetime.now(timezone.utc)
    taken = {r for f in facts.values() for r in f.releases}
    release_id = make_release_id(now, artifact.version, taken)
    selected = [h for h in inventory.hosts if h.name in facts]
    host_plans: list[HostPlan] = []
    uploads: dict[str, Script] = {}
    for host in selected:
        fact = facts[host.name]
        current = fact.current_release
        if (
            not restart
            and env_nonce is not None
            and current is not None
            and unchanged_on(fact, artifact, env_digest(inventory, host, env_nonce))
        ):
            host_plans.append(
                HostPlan(
                    host=host.name,
                    before=current,
                    target=current,
                    steps=(),
                    notes=(f"unchanged: already runs {current} (this artifact), healthy, same environment",),
                    version=fact.current_version,
                    node_pids=fact.node_pids,
                    unchanged=True,
                )
            )
            continue
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
        common = dict(version=artifact.version, sha256=artifact.sha256, by=who, **_source_fields(artifact.source))
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
                    env_file=node_env_file(inventory, host),
                    cookie=Secret("erlang cookie", cookie) if cookie is not None and not fact.has_cookie else None,
                ),
                steps=_switch_steps(inventory, "deploy", release_id, fact, common, who, health, prune, prune_artifacts),
                abort=rc.abort_prepared(layout, release_id),
                notes=tuple(f"remove old release {r}" for r in prune)
                + tuple(
                    f"keep release {r}: revisions.log (as read) does not account for it, so it is never pruned"
                    for r in fact.history.unaccounted(fact.releases)
                ),
                version=fact.current_version,
                node_pids=fact.node_pids,
            )
        )
    migrator = inventory.migrator()
    migrate_script = None
    unchanged = {p.host for p in host_plans if p.unchanged}
    if host_plans and len(unchanged) == len(host_plans):
        # Nothing new anywhere: the release every host runs was migrated when it was deployed.
        ids = {p.target for p in host_plans if p.target is not None}
        if len(ids) == 1:
            release_id = ids.pop()
    elif migrator is not None and migrator.name in unchanged:
        # The migrator already runs this very artifact: its migrations ran before it was switched to it (a
        # failed migration switches no host), and the new release is not extracted there to run them again.
        pass
    elif migrator is not None and config.migrate is not None:
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
            record=_record(
                release=release_id,
                event="migrate",
                outcome="success",
                version=artifact.version,
                by=who,
                migrations=" ".join(migrations) if migrations else None,
                **_source_fields(artifact.source),
            ),
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


def failed_record(release: str, event: str, previous: str | None, common: Mapping[str, str | None]) -> str:
    """The revisions.log entry of an activation whose node was not healthy (written by the revert)."""
    return _record(
        release=release, event=event, outcome="failed", previous=previous, detail="not healthy; reverted", **common
    )


def _switch_steps(
    inventory: Inventory,
    event: str,
    release: str,
    fact: HostFacts,
    common: Mapping[str, str | None],
    who: str,
    health: rc.HealthCheck,
    prune_releases: Sequence[str] = (),
    prune_artifacts: Sequence[str] = (),
) -> tuple[HostStep, ...]:
    """The activation of ``release`` on one host (switch, restart, health gate, record) and its revert."""
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    before = fact.current_release
    activate = rc.activate(
        layout,
        spec,
        release_id=release,
        health=health,
        stop_timeout=config.node.stop_timeout,
        tmp_suffix=_tmp_suffix(),
        success_record=_record(release=release, event=event, outcome="success", previous=before, **common),
        prune_releases=prune_releases,
        prune_artifacts=prune_artifacts,
        service=service_for(inventory),
    )
    # The failed release's entry goes first (its health gate has failed); the revert's own entry is written
    # on the host only once the previous release is healthy again.
    failure = [failed_record(release, event, before, common)]
    done = []
    if before is not None:
        done.append(
            _record(
                release=before,
                event="revert",
                outcome="success",
                version=fact.history.version(before),
                by=who,
                **_source_fields(fact.history.built_from(before)),
            )
        )
    revert = rc.revert(
        layout,
        spec,
        previous_id=before,
        health=health,
        stop_timeout=config.node.stop_timeout,
        tmp_suffix=_tmp_suffix(),
        records=done,
        failure_records=failure,
        service=service_for(inventory),
    )
    return HostStep("activate", activate), HostStep("revert", revert)


def plan_rollback(
    inventory: Inventory,
    facts: Mapping[str, HostFacts],
    *,
    who: str,
    to: str | None = None,
    strategy: Mapping[str, object] | None = None,
) -> Plan:
    """Plan switching every host back to its previous good release, or to release ``to``."""
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
        common = dict(version=version, by=who, **_source_fields(fact.history.built_from(target)))
        host_plans.append(
            HostPlan(
                host=host.name,
                before=before,
                target=target,
                steps=_switch_steps(inventory, "rollback", target, fact, common, who, health),
                version=fact.current_version,
                node_pids=fact.node_pids,
            )
        )
    warnings.extend(schema_warnings(facts, {p.target for p in host_plans if p.target}))
    if problems:
        raise PlanError(
            "cannot roll back:\n  " + "\n  ".join(problems),
            hint="`deployer releases --env ENV` lists what each host has",
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


def _migration_set(history: History, release: str) -> set[str] | None:
    """The migrations ``release`` ships, as its latest migration record says; None when not recorded."""
    for rev in reversed(history.revisions):
        if rev.release == release and rev.event == "migrate" and rev.migrations is not None:
            return set(rev.migrations.split())
    return None


def schema_warnings(facts: Mapping[str, HostFacts], targets: set[str]) -> list[str]:
    """Warn when rolling back to a release that lacks migrations applied by a newer one.

    The migrations each release ships are recorded with each migration run: a target that has every
    applied migration gets no warning. Where a set was not recorded (histories written before it was),
    any migration by a newer release warns, saying that deployer cannot tell.
    """
    warnings: list[str] = []
    for fact in facts.values():
        history = fact.history
        for target in sorted(targets):
            newer = [
                r for r in history.revisions if r.event == "migrate" and r.ok and history.newer_than(r.release, target)
            ]
            if not newer:
                continue
            last = newer[-1]
            version = last.version or last.release
            sets = [_migration_set(history, r.release) for r in newer]
            have = _migration_set(history, target)
            if have is not None and all(s is not None for s in sets):
                missing = sorted(set().union(*(s for s in sets if s is not None)) - have)
                if missing:
                    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    warnings.append(
                        f"{target} lacks migration(s) applied by newer releases (last by {last.release}, version "
                        f"{version}): {shown}. The old code will run against the newer schema; roll those back "
                        "yourself first if that code cannot cope with it."
                    )
                continue
            warnings.append(
                f"the schema was last migrated by {last.release} (version {version}), newer than {target}, and "
                "deployer cannot tell whether it applied migrations that release lacks: the old code may run "
                "against a newer schema. Roll back the migration yourself first if that code cannot cope with it."
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


# --- node operations ---------------------------------------------------------------------------------------

Lifecycle = Literal["start", "stop", "restart"]
LIFECYCLE: tuple[Lifecycle, ...] = ("start", "stop", "restart")


def _stdout_value(output: str, key: str) -> str | None:
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep and name == key:
            return value.strip()
    return None


def _stop_notice(output: str) -> str | None:
    return "no node was running" if _stdout_value(output, "stopped") == "none" else None


def _start_notice(output: str) -> str | None:
    return "the node was already running; it is healthy" if _stdout_value(output, "already_running") else None


def plan_lifecycle(
    inventory: Inventory,
    operation: Lifecycle,
    facts: Mapping[str, HostFacts],
    *,
    strategy: Mapping[str, object] | None = None,
) -> Plan:
    """Plan starting, stopping or restarting the node on every host in ``facts`` (the selected hosts).

    Starting needs a deployed release on every host; stopping a host where nothing runs is a no-op.
    The release does not change, so there is nothing to revert to: a host whose node fails the
    health gate is reported failed, with what it runs now.
    """
    if operation not in LIFECYCLE:
        raise ValueError(f"unknown node operation {operation!r}")
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)

    service = service_for(inventory)

    def step_for(host: HostConfig) -> HostStep:
        # Each host's own health URL: `${PORT}` may be a per-host value (hosts[].env).
        health = health_check(inventory, host)
        if operation == "stop":
            return HostStep(
                "activate", oc.stop(layout, stop_timeout=config.node.stop_timeout, service=service), _stop_notice
            )
        if operation == "start":
            return HostStep("activate", oc.start(layout, spec, health=health, service=service), _start_notice)
        return HostStep(
            "activate",
            oc.restart(layout, spec, health=health, stop_timeout=config.node.stop_timeout, service=service),
        )

    selected = {h.name: h for h in inventory.hosts if h.name in facts}
    names = list(selected)
    if operation != "stop":
        missing = [n for n in names if facts[n].current_release is None]
        if missing:
            raise PlanError(
                f"cannot {operation}: nothing is deployed on {', '.join(missing)}",
                hint="deploy first (`deployer deploy`), or leave those hosts out with --hosts/--roles",
            )
    hosts = tuple(
        HostPlan(
            host=n,
            before=facts[n].current_release,
            target=facts[n].current_release,
            steps=(step_for(selected[n]),),
            version=facts[n].current_version,
            node_pids=facts[n].node_pids,
        )
        for n in names
    )
    releases = {h.before for h in hosts}
    common = hosts[0] if len(releases) == 1 and hosts else None
    return Plan(
        kind=operation,
        env=inventory.env,
        release_id=common.before if common else None,
        version=common.version if common else None,
        artifact=None,
        hosts=hosts,
        batches=tuple(tuple(b) for b in batches(names, inventory, strategy)),
        max_fail=_max_fail(inventory, len(names), strategy),
        pause=float(inventory.config.strategy.model_copy(update=dict(strategy or {})).pause),
        health_gated=operation != "stop",
    )
