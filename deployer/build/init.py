"""``deployer init``: adopt deployer in an existing Mix or rebar3 project.

Run in the project's directory, it detects the application and its release (app name from
``mix.exs`` ``app:`` or ``rebar.config``'s ``relx`` release, flavour, release name, build command,
tarball glob) and writes:

* ``tasks.py``: two lines importing the collection, for ``invoke`` users;
* ``inventory/staging.yml`` and ``inventory/prod.yml``: every detected setting, commented, with
  placeholder hosts to replace; both validate as they are;
* Mix projects without one: ``lib/<app>/release.ex``, the release-tasks module with ``migrate/0``,
  ``rollback/2`` and ``load_app`` following the usual ``Ecto.Migrator`` pattern (without Ecto among
  the dependencies, a ``migrate/0`` that says there is nothing to migrate, with the Ecto version in
  a comment), run by ``bin/<app> eval`` once per deploy.

A Mix project whose ``mix.exs`` declares no ``releases:`` gets one release with
``steps: [:assemble, :tar]`` added to its ``project/0`` keyword list (deployer ships the release's
tarball, which ``mix release`` only writes with the ``:tar`` step). That insertion is the only change
ever made to an existing file, it adds a line and removes nothing, and ``--no-edit-mix`` turns it off;
a ``releases:`` entry without the ``:tar`` step is reported with the line to add, never edited.

Existing files are never overwritten without ``--force``; the result names every file skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deployer import __version__
from deployer.core.config import APP_NAME_RE
from deployer.errors import DeployerError
from deployer.remote.flavours import flavour as flavour_spec

ENVIRONMENTS = ("staging", "prod")
TAR_STEPS = "steps: [:assemble, :tar]"


class InitError(DeployerError):
    """The directory is not a project ``deployer init`` understands."""


@dataclass(frozen=True)
class Project:
    """What ``deployer init`` found out about a project."""

    root: Path
    tool: Literal["mix", "rebar3"]
    app: str
    """The OTP application (``app: :name`` in mix.exs, the ``.app.src`` name for rebar3)."""
    release: str
    """The release name: the tarball holds ``bin/<release>``; becomes ``app.name`` in the inventory."""
    flavour: Literal["mix", "rebar3", "distillery"]
    build_command: str
    build_env: tuple[tuple[str, str], ...]
    tarball: str
    release_source: str
    """Where the release name came from, for the generated comments."""
    module: str | None = None
    """The Elixir namespace (``DemoApp`` for ``DemoApp.MixProject``)."""
    version: str | None = None
    ecto: bool = False
    releases_config: Literal["ok", "missing", "no_tar", "n/a"] = "n/a"
    release_module: str | None = None
    """An existing module with ``migrate/0`` (``MyApp.Release``), or None."""
    runtime_config: str | None = None
    """The run-time configuration file found (``config/runtime.exs``, ``config/sys.config.src``)."""
    umbrella: bool = False

    @property
    def migrate_module(self) -> str | None:
        """The module whose ``migrate()`` the inventory's migration calls (existing or generated)."""
        if self.release_module:
            return self.release_module
        if self.tool == "mix" and self.module and not self.umbrella:
            return f"{self.module}.Release"
        return None


@dataclass
class InitResult:
    """What ``init_project`` did: files written, skipped (they existed), updated; notes for the user."""

    project: Project
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    updated: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- detection -----------------------------------------------------------------------------------------


def _strip_comments(text: str, marker: str) -> str:
    """Drop whole-line comments (``#`` for Elixir, ``%`` for Erlang); enough for the keys we look for."""
    return "\n".join("" if line.lstrip().startswith(marker) else line for line in text.splitlines())


def camelize(name: str) -> str:
    """``demo_app`` -> ``DemoApp`` (Macro.camelize for plain application names)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def _check_release_name(name: str, where: str) -> str:
    if not APP_NAME_RE.fullmatch(name):
        raise InitError(
            f"{where}: release name {name!r} is not usable as app.name (lowercase letters, digits, _)",
            hint="rename the release, or write the inventory by hand (see docs/inventory.md)",
        )
    return name


def detect_project(root: Path | str = ".") -> Project:
    """Inspect ``root`` (a Mix or rebar3 project). Raises :class:`InitError` when it is neither."""
    root = Path(root).resolve()
    if (root / "mix.exs").is_file():
        return _detect_mix(root)
    if (root / "rebar.config").is_file():
        return _detect_rebar3(root)
    raise InitError(
        f"{root}: neither mix.exs nor rebar.config here",
        hint="run `deployer init` in the root of your Mix or rebar3 project (or pass --path DIR)",
    )


def _mix_release_name(text: str) -> tuple[str | None, str]:
    """The first release declared under ``releases:`` (inline or in a ``releases/0`` function)."""
    inline = re.search(r"\breleases:\s*\[\s*([a-z][A-Za-z0-9_]*):", text)
    if inline:
        return inline.group(1), "mix.exs `releases:`"
    function = re.search(r"\bdefp?\s+releases(?:\(\))?\s*,?\s*do:?\s*\[\s*([a-z][A-Za-z0-9_]*):", text)
    if function:
        return function.group(1), "mix.exs `releases/0`"
    return None, ""


def _detect_mix(root: Path) -> Project:
    text = _strip_comments((root / "mix.exs").read_text(encoding="utf-8"), "#")
    app_match = re.search(r"\bapp:\s*:([a-z][A-Za-z0-9_]*)", text)
    umbrella = bool(re.search(r"\bapps_path:", text))
    release, source = _mix_release_name(text)
    if app_match is None and release is None:
        raise InitError(
            f"{root / 'mix.exs'}: no `app: :name` and no `releases:` found",
            hint="an umbrella project needs a release in its root mix.exs: releases: [my_rel: [applications: ...]]",
        )
    app = app_match.group(1) if app_match else str(release)
    if release is None:
        release, source = app, f"mix.exs `app: :{app}`"
    _check_release_name(release, str(root / "mix.exs"))
    module_match = re.search(r"defmodule\s+([A-Z][A-Za-z0-9_.]*?)\.Mix(?:Project|file)\s+do", text)
    module = module_match.group(1) if module_match else camelize(app)
    version_match = re.search(r"\bversion:\s*\"([^\"]+)\"", text)
    distillery = bool(re.search(r"\{\s*:distillery\b", text))
    ecto = bool(re.search(r"\{\s*:ecto_sql\b", text))
    if re.search(r"\breleases\b", text) is None:
        releases_config: Literal["ok", "missing", "no_tar", "n/a"] = "missing"
    elif re.search(r"steps:\s*\[[^\]]*:tar\b", text):
        releases_config = "ok"
    else:
        releases_config = "no_tar"
    runtime = "config/runtime.exs" if (root / "config" / "runtime.exs").is_file() else None
    if distillery:
        spec = flavour_spec("distillery")
        rel_config = root / "rel" / "config.exs"
        if rel_config.is_file():
            found = re.search(r"^\s*release\s+:([a-z][A-Za-z0-9_]*)", rel_config.read_text(encoding="utf-8"), re.M)
            if found:
                release, source = _check_release_name(found.group(1), str(rel_config)), "rel/config.exs `release`"
        return Project(
            root=root,
            tool="mix",
            app=app,
            release=release,
            flavour="distillery",
            build_command=spec.default_build,
            build_env=(),
            tarball=spec.default_tarball.format(app=release),
            release_source=source,
            module=module,
            version=version_match.group(1) if version_match else None,
            ecto=ecto,
            release_module=_find_release_module(root),
            runtime_config=runtime,
            umbrella=umbrella,
        )
    return Project(
        root=root,
        tool="mix",
        app=app,
        release=release,
        flavour="mix",
        # Fetching (only prod) dependencies first makes a fresh checkout or CI workspace build as is.
        build_command="mix deps.get --only prod && mix release --overwrite",
        build_env=(("MIX_ENV", "prod"),),
        tarball=f"_build/prod/{release}-*.tar.gz",
        release_source=source,
        module=module,
        version=version_match.group(1) if version_match else None,
        ecto=ecto,
        releases_config=releases_config,
        release_module=_find_release_module(root),
        runtime_config=runtime,
        umbrella=umbrella,
    )


def _find_release_module(root: Path) -> str | None:
    """An existing release-tasks module (``X.Release`` / ``X.ReleaseTasks`` defining ``migrate``)."""
    candidates = sorted(root.glob("lib/**/*.ex")) + sorted(root.glob("apps/*/lib/**/*.ex"))
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found = re.search(r"defmodule\s+([A-Z][A-Za-z0-9_.]*\.Release(?:Tasks)?)\s+do", text)
        if found and re.search(r"\bdef\s+migrate\b", text):
            return found.group(1)
    return None


def _detect_rebar3(root: Path) -> Project:
    path = root / "rebar.config"
    text = _strip_comments(path.read_text(encoding="utf-8"), "%")
    found = re.search(r"\{\s*release\s*,\s*\{\s*'?([A-Za-z][A-Za-z0-9_@]*)'?\s*,\s*(\"[^\"]*\"|'?[a-z]\w*'?)", text)
    if found is None:
        raise InitError(
            f"{path}: no relx release ({{relx, [{{release, {{Name, Vsn}}, [...]}}]}})",
            hint="add a relx release to rebar.config (`rebar3 new release NAME` shows one), then run init again",
        )
    release = _check_release_name(found.group(1), str(path))
    version = found.group(2).strip("\"'")
    app = release
    app_srcs = sorted(root.glob("src/*.app.src")) + sorted(root.glob("apps/*/src/*.app.src"))
    for app_src in app_srcs:
        match = re.search(r"\{\s*application\s*,\s*'?([a-z][A-Za-z0-9_]*)'?", app_src.read_text(encoding="utf-8"))
        if match and (match.group(1) == release or len(app_srcs) == 1):
            app = match.group(1)
            break
    runtime = next((name for name in ("config/sys.config.src", "config/vm.args.src") if (root / name).is_file()), None)
    spec = flavour_spec("rebar3")
    return Project(
        root=root,
        tool="rebar3",
        app=app,
        release=release,
        flavour="rebar3",
        build_command=spec.default_build,
        build_env=(),
        tarball=spec.default_tarball.format(app=release),
        release_source="rebar.config `relx` release",
        version=version if re.fullmatch(r"\d[\w.+-]*", version) else None,
        runtime_config=runtime,
    )


# --- rendering -----------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _line(text: str, comment: str, width: int = 34) -> str:
    return f"{text:<{max(width, len(text) + 2)}}# {comment}" if comment else text


TASKS_PY = (
    '"""Deploy tasks: `invoke --list` (the same as `deployer --list`)."""\n'
    "from deployer.tasks import ns  # noqa: F401\n"
)


def render_tasks_py() -> str:
    return TASKS_PY


def _runtime_comment(project: Project) -> list[str]:
    if project.tool == "rebar3":
        return [
            "# Runtime configuration: the same tarball is deployed to every environment, so the release reads its",
            "# settings when it boots: config/sys.config.src and config/vm.args.src may use ${VAR}, replaced from",
            "# the node's environment (below) at start. A plain sys.config is fixed at build time.",
        ]
    return [
        "# Runtime configuration: the same tarball is deployed to every environment, so the release must read",
        "# its settings when it boots, in config/runtime.exs (System.fetch_env!/1, System.get_env/2), not at",
        "# build time in config/prod.exs. The values come from here: `clear` for plain values, `secret` for",
        "# names whose values are read from your environment or secrets_file at deploy time (never this file).",
    ]


def render_inventory(project: Project, env: str) -> str:
    """``inventory/<env>.yml`` for ``project``: valid as written, every detected setting commented."""
    rel = project.release
    prod = env == "prod"
    out = [
        f"# The {env} environment of {rel}, written by `deployer init` (deployer {__version__}).",
        "# Every key is documented in docs/inventory.md. Replace the example hosts (192.0.2.0/24 is a",
        f"# documentation range), then: `deployer trust --env {env}`, `deployer deploy --env {env} --dry-run`.",
        "",
        "app:",
        _line(f"  name: {rel}", f"release name, from {project.release_source}: the tarball holds bin/{rel}"),
        _line(f"  flavour: {project.flavour}", "mix | rebar3 | distillery: how bin/" + rel + " is driven"),
        "",
        _line(f"deploy_to: /srv/{rel}", "on every host: releases/, current, shared/, revisions.log"),
        _line("keep_releases: 5", "successful releases kept on each host"),
        "",
        _line("build:", f"run on this machine; `deployer deploy --tarball PATH` skips it ({project.tool} project)"),
        _line("  path: .", "the project directory, relative to where you run deployer"),
        f"  command: {_q(project.build_command)}",
    ]
    if project.build_env:
        out.append("  env:")
        out.extend(f"    {name}: {_q(value)}" for name, value in project.build_env)
    tar_note = {
        "mix": f"mix release writes it with {TAR_STEPS} (mix.exs releases:)",
        "rebar3": "written by `rebar3 as prod tar`",
        "distillery": "written by `mix distillery.release`",
    }[project.flavour]
    out += [
        _line(f"  tarball: {_q(project.tarball)}", tar_note),
        "",
        "ssh:",
        _line("  user: deploy", "the user owning deploy_to on the hosts"),
        "  # identity_file: ~/.ssh/id_ed25519   # default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa",
        _line("  known_hosts: known_hosts", f"inventory/known_hosts: `deployer trust --env {env}` records keys"),
        "",
        "hosts:",
    ]
    if prod:
        out += [
            "  - name: web1",
            "    address: 192.0.2.21",
            _line("    roles: [app, migrator]", "the migration runs once per deploy, on the first migrator"),
            "  - name: web2",
            "    address: 192.0.2.22",
        ]
    else:
        out += [
            "  - name: staging1",
            "    address: 192.0.2.11",
            _line("    roles: [app, migrator]", "the migration runs once per deploy, on the first migrator"),
        ]
    port_example = "PORT" if project.tool == "mix" else "HTTP_PORT"
    out += [
        "",
        *_runtime_comment(project),
        "env:",
        "  clear: {}",
        f'  #   {port_example}: "4000"',
        "  # secret:",
        "  #   - SECRET_KEY_BASE",
        "  #   - DATABASE_URL",
        f"  # secrets_file: ~/.config/deployer/{rel}-{env}.env",
        "",
    ]
    module = project.migrate_module
    if module:
        out += [
            _line("migrate:", f"bin/{rel} eval, once per deploy, before any host switches"),
            f"  eval: {_q(f'{module}.migrate()')}",
        ]
    else:
        out += [
            f"# migrate:                        # a release with migrations: an expression for bin/{rel} eval,",
            '#   eval: "my_release_tasks:migrate()"   # run once per deploy before any host switches',
        ]
    out += ["", _line("health:", "checked on each host after its node starts; must pass before the next batch")]
    out.append("  # http: http://127.0.0.1:4000/health   # preferred when the app serves HTTP: any 2xx is healthy")
    if project.flavour == "mix":
        out.append(_line('  rpc: "1 + 1"', f"the node answers bin/{rel} rpc (boots a VM per try)"))
    else:
        out.append("  # rpc: ...                      # without http or rpc, healthy means the node's VM is running")
    out.append(_line("  deadline: 60", "seconds for a started node to become healthy"))
    out += ["", "strategy:"]
    if prod:
        out += [
            _line("  kind: rolling", "hosts switch batch by batch"),
            _line("  batch_size: 1", "hosts per batch: a count or a percentage like 25%"),
            _line("  canary: true", "the first batch is one host that must be healthy first"),
            _line("  max_fail: 0", "stop the rollout at the first failed host"),
        ]
    else:
        out.append(_line("  kind: parallel", "every host at once"))
    return "\n".join(out) + "\n"


_ECTO_MIGRATE = """\
  @doc "Runs every pending migration of every repo in `:ecto_repos`."
  def migrate do
    load_app()

    for repo <- repos() do
      {:ok, _, _} = Ecto.Migrator.with_repo(repo, &Ecto.Migrator.run(&1, :up, all: true))
    end

    :ok
  end

  @doc "Rolls `repo` back to the migration `version`."
  def rollback(repo, version) do
    load_app()
    {:ok, _, _} = Ecto.Migrator.with_repo(repo, &Ecto.Migrator.run(&1, :down, to: version))
    :ok
  end

  defp repos do
    Application.fetch_env!(@app, :ecto_repos)
  end

  defp load_app do
    # Many platforms require SSL when connecting to the database.
    Application.ensure_all_started(:ssl)

    case Application.load(@app) do
      :ok -> :ok
      {:error, {:already_loaded, @app}} -> :ok
    end
  end
"""

_PLAIN_MIGRATE = """\
  # This project does not depend on :ecto_sql, so there is nothing to migrate yet. Once it does, replace
  # migrate/0 and rollback/2 with the usual Ecto.Migrator version:
  #
  #     def migrate do
  #       load_app()
  #
  #       for repo <- Application.fetch_env!(@app, :ecto_repos) do
  #         {:ok, _, _} = Ecto.Migrator.with_repo(repo, &Ecto.Migrator.run(&1, :up, all: true))
  #       end
  #
  #       :ok
  #     end
  #
  #     def rollback(repo, version) do
  #       load_app()
  #       {:ok, _, _} = Ecto.Migrator.with_repo(repo, &Ecto.Migrator.run(&1, :down, to: version))
  #       :ok
  #     end

  @doc "Runs pending migrations: none without Ecto."
  def migrate do
    load_app()
    IO.puts("#{@app}: no Ecto repos configured, nothing to migrate")
    :ok
  end

  @doc "Rolls `repo` back to the migration `version`: nothing to do without Ecto."
  def rollback(repo, version) do
    load_app()
    IO.puts("#{@app}: no Ecto repos configured, cannot roll #{inspect(repo)} back to #{version}")
    :ok
  end

  defp load_app do
    case Application.load(@app) do
      :ok -> :ok
      {:error, {:already_loaded, @app}} -> :ok
    end
  end
"""


def render_release_module(project: Project) -> str:
    """``lib/<app>/release.ex``: release tasks run by ``bin/<release> eval`` (no Mix in a release)."""
    module = f"{project.module}.Release"
    body = _ECTO_MIGRATE if project.ecto else _PLAIN_MIGRATE
    return (
        f"defmodule {module} do\n"
        '  @moduledoc """\n'
        "  Release tasks: Mix is not available in a release, so migrations run from here, in a fresh VM that\n"
        "  loads the application without starting it. deployer runs it once per deploy, before any host\n"
        "  switches to the new release (`migrate:` in inventory/<env>.yml):\n"
        "\n"
        f'      bin/{project.release} eval "{module}.migrate()"\n'
        f'      bin/{project.release} eval "{module}.rollback({project.module}.Repo, 20240101000000)"\n'
        '  """\n'
        "\n"
        f"  @app :{project.app}\n"
        "\n"
        f"{body}"
        "end\n"
    )


def add_mix_release(text: str, release: str) -> str | None:
    """``mix.exs`` with a ``releases:`` entry (tarball step) after ``app:`` in ``project/0``; None if unsure."""
    project_def = re.search(r"^\s*def\s+project\s+do\s*$", text, re.M)
    if project_def is None or re.search(r"\breleases\b", text):
        return None
    app_line = re.compile(r"^([ \t]*)app:\s*:[a-z][A-Za-z0-9_]*,[ \t]*\n", re.M).search(text, project_def.end())
    if app_line is None:
        return None
    indent = app_line.group(1)
    entry = f"{indent}releases: [\n{indent}  {release}: [include_executables_for: [:unix], {TAR_STEPS}]\n{indent}],\n"
    return text[: app_line.end()] + entry + text[app_line.end() :]


# --- the operation -------------------------------------------------------------------------------------


def _write(result: InitResult, path: Path, content: str, force: bool) -> None:
    if path.exists() and not force:
        result.skipped.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    result.written.append(path)


def init_project(root: Path | str = ".", *, force: bool = False, edit_mix: bool = True) -> InitResult:
    """Write tasks.py, the inventories and (Mix) the release module into the project at ``root``."""
    project = detect_project(root)
    result = InitResult(project=project)
    base = project.root
    _write(result, base / "tasks.py", render_tasks_py(), force)
    if base / "tasks.py" in result.skipped:
        result.notes.append(
            "tasks.py exists: to get deployer's tasks from `invoke`, add `from deployer.tasks import ns` "
            "(or add its tasks to your collection: `ns.add_collection(deployer_ns, 'deploy')`); "
            "`deployer <task>` works without it"
        )
    for env in ENVIRONMENTS:
        _write(result, base / "inventory" / f"{env}.yml", render_inventory(project, env), force)

    if project.tool == "mix" and project.flavour == "mix":
        _mix_notes(result, edit_mix)
    if project.tool == "mix" and project.module and not project.umbrella:
        _release_module(result, force)
    elif project.umbrella:
        result.notes.append(
            "umbrella project: no release module was generated; add one to the app owning the repos and set "
            "migrate.eval in the inventories"
        )
    result.notes.append(_runtime_note(project))
    return result


def _release_module(result: InitResult, force: bool) -> None:
    project = result.project
    release_ex = project.root / "lib" / project.app / "release.ex"
    if project.release_module and not release_ex.exists():
        result.notes.append(f"migrations: the inventories call the existing {project.release_module}.migrate()")
        return
    _write(result, release_ex, render_release_module(project), force)
    where = release_ex.relative_to(project.root)
    if release_ex in result.written:
        what = (
            "Ecto.Migrator for every repo in :ecto_repos"
            if project.ecto
            else "no Ecto dependency, so migrate/0 has nothing to do; the Ecto version is in a comment"
        )
        result.notes.append(f"migrations: {where} defines {project.module}.Release ({what})")
    elif project.release_module:
        result.notes.append(f"migrations: the inventories call the existing {project.release_module}.migrate()")
    else:
        result.notes.append(
            f"ACTION: {where} exists but defines no release module with migrate/0: the inventories call "
            f"{project.migrate_module}.migrate(); define it, or change migrate.eval (--force replaces {where})"
        )


def _mix_notes(result: InitResult, edit_mix: bool) -> None:
    project = result.project
    mix_exs = project.root / "mix.exs"
    snippet = f"releases: [{project.release}: [include_executables_for: [:unix], {TAR_STEPS}]]"
    if project.releases_config == "missing":
        updated = add_mix_release(mix_exs.read_text(encoding="utf-8"), project.release) if edit_mix else None
        if updated is not None:
            mix_exs.write_text(updated, encoding="utf-8")
            result.updated.append(mix_exs)
            result.notes.append(
                f"mix.exs: added `{snippet}` to project/0 (deployer ships the release tarball, which "
                "mix release writes only with the :tar step)"
            )
        else:
            result.notes.append(f"ACTION: add to project/0 in mix.exs: `{snippet}` (deployer ships the tarball)")
    elif project.releases_config == "no_tar":
        result.notes.append(
            f"ACTION: mix.exs declares releases without the :tar step: add `{TAR_STEPS}` to release "
            f"{project.release} (deployer ships the tarball)"
        )


def _runtime_note(project: Project) -> str:
    if project.tool == "rebar3":
        found = f" ({project.runtime_config} found)" if project.runtime_config else ""
        return (
            "runtime configuration: one tarball goes to every environment; read settings at boot with "
            f"config/sys.config.src / vm.args.src and ${{VAR}}{found}, values from env: in the inventories"
        )
    if project.runtime_config:
        return (
            "runtime configuration: config/runtime.exs found; read every per-environment setting there "
            "(System.fetch_env!/1), with the values in env: of inventory/<env>.yml"
        )
    return (
        "runtime configuration: one tarball goes to every environment, so read per-environment settings "
        'at boot: create config/runtime.exs (import Config; config :app, key: System.fetch_env!("KEY")) '
        "and set the values in env: of inventory/<env>.yml"
    )
