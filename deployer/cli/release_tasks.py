"""The release tasks: deploy, rollback, migrate, history, unlock, config.

Thin: check the flags, load the inventory, call :mod:`deployer.operations.release`, print, exit non-zero on
failure. A project's ``tasks.py`` gets them (and every other task) with ``from deployer.tasks import ns``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from invoke.context import Context
from invoke.tasks import task
from rich.console import Console
from rich.markup import escape

from deployer import __version__
from deployer.build import builder as build
from deployer.build.provenance import git_source
from deployer.cli.build_progress import BuildProgress
from deployer.cli.common import consoles, fail, flag_help, load, write_stdout
from deployer.cli.render import history_document, print_history, print_json, print_plan
from deployer.cli.run import Common, Target, fleet_task, rollout_task
from deployer.core.artifact import Artifact, inspect_tarball, version_from_filename
from deployer.core.inventory import Inventory
from deployer.core.provenance import PREBUILT, Source
from deployer.errors import DeployerError
from deployer.operations import release as api
from deployer.remote.flavours import flavour


def load_release(run: Common, tarball: str | None) -> tuple[Inventory, Artifact]:
    """The inventory (secrets resolved) and the release a rollout ships: ``--tarball`` or a fresh build.

    A missing tarball is bad usage (exit 2), found before anything is loaded or built; a dry run resolves
    the secrets too, so a secret the real run would miss is reported now, with its key.
    """
    if tarball and not Path(tarball).is_file():
        raise fail(run.errors, DeployerError(f"--tarball {tarball}: no such file"), run.env, code=2)
    inventory = run.load(secrets=True)
    try:
        return inventory, release_artifact(inventory, tarball, run.human, verbose=run.verbose)
    except DeployerError as exc:
        raise fail(run.errors, exc, run.env) from None


def release_artifact(inventory: Inventory, tarball: str | None, console: Console, *, verbose: bool = False) -> Artifact:
    """The release to roll out: ``tarball`` inspected and checked against the app, or a fresh build."""
    app = inventory.config.app.name
    expected = None
    source = Source(note=PREBUILT)
    if tarball:
        path = Path(tarball)
    else:
        source = git_source(Path.cwd() / inventory.config.build.path)  # where build.build builds, read before it
        config = inventory.config
        what = config.build.command or flavour(config.app.flavour).default_build
        if config.build.strategy == "docker":
            engine = config.build.engine if config.build.engine != "auto" else "container"
            what = f"{engine} build -f {config.build.dockerfile}"
        console.print(f"[bold blue]==>[/] [bold]build[/] ({config.build.strategy}) {escape(what)}", highlight=False)
        with BuildProgress(console, what, config.build.strategy, verbose=verbose) as progress:
            path = build.build(inventory, log=progress.log, output=progress.output)
        # The build names the tarball after the version it built; the contents must agree.
        expected = version_from_filename(path, app)
    artifact = replace(inspect_tarball(path, app, expected_version=expected), source=source)
    console.print(
        f"    release {artifact.name} {artifact.version} sha256 {artifact.short_sha} ({artifact.size / 2**20:.1f} MiB)"
        f", built from {source.describe()}, deployer {__version__}",
        highlight=False,
    )
    return artifact


@rollout_task(
    tarball="Deploy this prebuilt release tarball instead of building.",
    force="Deploy even to hosts the release cannot run on (architecture, libc or OpenSSL mismatch).",
    restart="Restart hosts that already run this release, healthy, with the same environment (default: unchanged).",
)
def deploy(c: Context, run: Common, tarball: str | None = None, force: bool = False, restart: bool = False) -> None:
    """Build the release and ship it: upload, extract, migrate once, switch atomically, restart, health-check.

    Every host is locked first. Anything failing before a switch leaves every host on its old release;
    a host whose new node is unhealthy is reverted on its own and the rollout stops.
    Exit status 0 only when every host ended healthy on the new release. A host that already runs this
    release, healthy, with the same environment file is left alone and reported "unchanged" (--restart
    restarts it anyway).
    """
    inventory, artifact = load_release(run, tarball)
    run.execute(lambda options: api.deploy(inventory, artifact, options), print_plan, force=force, restart=restart)


@rollout_task(selection=False, strategy=False)
def migrate(c: Context, run: Common) -> None:
    """Run the current release's migration once, on the migrator host, under the deploy lock."""
    # The migration runs with the environment file already on the host: no secret is needed here.
    inventory = run.load()
    run.execute(lambda options: api.migrate(inventory, options), print_plan)


@rollout_task(to="Release id or version to roll back to (default: each host's previous good release).")
def rollback(c: Context, run: Common, to: str | None = None) -> None:
    """Switch hosts back to the previous good release (or --to), restart and health-check.

    Refuses when a host has nothing to roll back to or lacks the named release. Failed releases are
    never rollback targets.
    """
    inventory = run.load()
    run.execute(lambda options: api.rollback(inventory, to, options), print_plan)


@fleet_task(json_=True)
def history(c: Context, target: Target) -> None:
    """The deploy history of each host from revisions.log: when, what, who, outcome, commit, deployer version.

    Each record names the git commit the release was built from (dirty: uncommitted changes) or why there
    is none, and the deployer version that wrote it; records from before deployer kept these say unknown.
    """
    rows = api.status(target.inventory, target.options())
    if target.json_:
        print_json(history_document(rows, target.inventory.env))
    else:
        print_history(target.human, rows)


def _unlock_accepts_force() -> bool:
    """The engine's unlock gains ``force`` (remove a live lock too); older engines remove any lock."""
    return "force" in inspect.signature(api.unlock).parameters


@fleet_task(force="Also remove a lock whose holder still looks alive (only when you know that run is gone).")
def unlock(c: Context, target: Target, force: bool = False) -> None:
    """Remove a deploy lock: one taken by hand (`deployer lock`) or left behind by a killed run.

    Shows who held it, why (a manual lock's message) and for how long. A lock whose run may still be
    working is kept unless --force; a manual lock is lifted without it.
    """
    extra: dict[str, Any] = {"force": force} if _unlock_accepts_force() else {}
    options = target.options()
    options.force = force
    before = api.unlock(target.inventory, options, **extra)
    for name, info in before.items():
        target.human.print(
            f"  {name:<12} " + (f"removed lock held by {info.describe()}" if info else "was not locked"),
            highlight=False,
        )


_SECRET_LOOKING = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL|COOKIE|API_?KEY|DATABASE_URL", re.IGNORECASE)
MASK = "<masked>"


def masked_config(inventory: Inventory) -> tuple[dict[str, Any], list[str]]:
    """The merged inventory as data, secret-looking clear values masked; and the keys that were masked."""
    data = inventory.config.model_dump(mode="json")
    masked: list[str] = []
    clear = data.get("env", {}).get("clear") or {}
    for key in sorted(clear):
        if _SECRET_LOOKING.search(key):
            clear[key] = MASK
            masked.append(f"env.clear.{key}")
    return data, masked


@task(positional=[], auto_shortflags=False, help=flag_help("env", "inventory_dir"))
def config(c: Context, env: str | None = None, inventory_dir: str = "inventory") -> None:
    """Print the environment's merged inventory (defaults.yml under <env>.yml) as YAML on stdout.

    Secret values are never read: env.secret shows where each one comes from, and clear env values
    whose names look secret are masked (move them to env.secret).
    """
    inventory = load(env, inventory_dir)
    data, masked = masked_config(inventory)
    human, _ = consoles()
    human.print(f"# {escape(str(inventory.path))} merged over its defaults", highlight=False)
    write_stdout(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    for key in masked:
        human.print(f"[bold yellow]warning:[/] {key} looks secret: masked here; move it to env.secret", highlight=False)
