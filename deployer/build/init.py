"""``deployer init``: adopt deployer in an existing Mix or rebar3 project.

Run in the project's directory, it detects the application and its release (app name from
``mix.exs`` ``app:`` or ``rebar.config``'s ``relx`` release, flavour, release name, build command,
tarball glob; Phoenix and Ecto from the dependencies mix resolved in ``mix.lock``, else those declared in
mix.exs, and the endpoint's port from the config) and writes:

* ``inventory/defaults.yml``: everything the environments share, once (app, build, ssh, env, migrate,
  health); ``inventory/staging.yml`` and ``inventory/prod.yml``: only hosts, strategy and per-environment
  values, with placeholder hosts to replace; all validate as they are;
* Mix projects without one: ``lib/<app>/release.ex``, the release-tasks module with ``migrate/0``,
  ``rollback/2`` and ``load_app`` following the usual ``Ecto.Migrator`` pattern (the one
  ``mix phx.gen.release`` writes is used as it is), run by ``bin/<app> eval`` once per deploy;
* Phoenix: ``PHX_SERVER=true``, ``PORT``, ``SECRET_KEY_BASE`` (and ``DATABASE_URL``) as secrets, ``PHX_HOST``
  per environment, and an HTTP health check on the endpoint's port;
* rebar3: ``config/vm.args.src`` with ``-name ${RELEASE_NODE}`` and no ``-setcookie`` (relx's stock vm.args
  names the node itself and puts the cookie in argv), and rebar.config pointed at it;
* ``tasks.py`` only with ``--tasks-py`` (for teams that run ``invoke``).

A Mix project whose ``mix.exs`` declares no ``releases:`` gets one release with ``steps: [:assemble, :tar]``
added to its ``project/0`` keyword list (deployer ships the release's tarball). Those two edits (mix.exs,
rebar.config) only add or replace one entry; ``--no-edit-mix`` turns them off and prints what to change.

Existing files are never overwritten without ``--force``; with it the previous content is kept in
``<file>.bak`` and the result says "overwrote". Files that already say exactly this are left alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deployer import __version__
from deployer.build.dockerfile import DEFAULT_BASE_IMAGE, project_files, render_dockerfile
from deployer.core.config import APP_NAME_RE, DOCKER_REF_RE, DOCKER_REF_WORDS
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
    phoenix: bool = False
    """A Phoenix application (``:phoenix`` among the resolved or declared dependencies)."""
    http_port: int | None = None
    """The port the Phoenix endpoint listens on (from config; 4000 by default)."""
    phx_release: bool = False
    """``mix phx.gen.release`` ran: ``rel/overlays/bin/server`` and ``bin/migrate`` exist."""
    vm_args: str | None = None
    """rebar3: the relx ``vm_args``/``vm_args_src`` file named in rebar.config (None: relx's default)."""
    vm_args_src: bool = False
    """rebar3: that file is a ``vm_args_src`` (rendered with ${VAR} at each start)."""

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
    """What ``init_project`` did: files written, overwritten (``.bak`` kept), skipped, updated; notes."""

    project: Project
    written: list[Path] = field(default_factory=list)
    overwritten: list[Path] = field(default_factory=list)
    """Existing files replaced with ``--force``; the previous content is in ``<file>.bak``."""
    unchanged: list[Path] = field(default_factory=list)
    """Existing files that already had exactly what init would write."""
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


def mix_deps(root: Path, mix_exs: str) -> set[str]:
    """The project's dependencies: the resolved ones in ``mix.lock`` (what mix itself fetched), else the
    ``{:name, ...}`` entries of mix.exs (comments stripped), e.g. ``{"phoenix", "ecto_sql"}``."""
    lock = root / "mix.lock"
    if lock.is_file():
        names = set(re.findall(r'^\s*"([a-z][a-z0-9_]*)":\s*\{', lock.read_text(encoding="utf-8"), re.M))
        if names:
            return names
    return set(re.findall(r"\{\s*:([a-z][a-z0-9_]*)\s*,", _strip_comments(mix_exs, "#")))


def _config_text(root: Path, *names: str) -> str:
    texts = []
    for name in names:
        path = root / "config" / name
        if path.is_file():
            texts.append(_strip_comments(path.read_text(encoding="utf-8"), "#"))
    return "\n".join(texts)


def endpoint_port(root: Path) -> int:
    """The HTTP port of the Phoenix endpoint in production: runtime.exs/prod.exs/config.exs, else 4000."""
    text = _config_text(root, "runtime.exs", "prod.exs", "config.exs")
    patterns = (r'"PORT"\)\s*\|\|\s*"(\d{2,5})"', r'"PORT",\s*"(\d{2,5})"', r"\bhttp:\s*\[[^\]]*\bport:\s*(\d{2,5})")
    for pattern in patterns:
        found = re.search(pattern, text)
        if found:
            return int(found.group(1))
    return 4000


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
    deps = mix_deps(root, text)
    distillery = "distillery" in deps
    ecto = "ecto_sql" in deps or bool(re.search(r"\becto_repos:", _config_text(root, "config.exs")))
    phoenix = "phoenix" in deps
    phx_release = (root / "rel" / "overlays" / "bin" / "server").is_file()
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
        phoenix=phoenix,
        http_port=endpoint_port(root) if phoenix else None,
        phx_release=phx_release,
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
    vm_args = re.search(r"\{\s*(vm_args(?:_src)?)\s*,\s*\"([^\"]+)\"\s*\}", text)
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
        vm_args=vm_args.group(2) if vm_args else None,
        vm_args_src=bool(vm_args and vm_args.group(1) == "vm_args_src"),
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


def _secret_names(project: Project) -> list[str]:
    names = ["SECRET_KEY_BASE"] if project.phoenix else []
    return names + (["DATABASE_URL"] if project.ecto and project.phoenix else [])


def render_defaults(project: Project, *, docker: bool = False) -> str:
    """``inventory/defaults.yml``: everything the environments share, written once; with ``docker`` the
    build is ``strategy: docker`` with the Dockerfile ``deployer init --docker`` writes."""
    rel = project.release
    out = [
        f"# What every environment of {rel} shares, written by `deployer init` (deployer {__version__}).",
        "# inventory/<env>.yml is merged over this file (mappings key by key, lists replaced); keys are",
        "# documented in docs/inventory.md. `deployer config --env ENV` prints the merged result.",
        "",
        "app:",
        # (Not where the name came from: init's own mix.exs edit would change that, and the file with it.)
        _line(f"  name: {rel}", f"the release name: the tarball holds bin/{rel}"),
        _line(f"  flavour: {project.flavour}", "mix | rebar3 | distillery: how bin/" + rel + " is driven"),
        "",
        _line(f"deploy_to: /srv/{rel}", "on every host: releases/, current, shared/, revisions.log"),
        _line("keep_releases: 5", "successful releases kept on each host"),
        "",
        _line("build:", f"run on this machine; `deployer deploy --tarball PATH` skips it ({project.tool} project)"),
        _line("  path: .", "the project directory, relative to where you run deployer"),
    ]
    if docker:
        out += [
            _line("  strategy: docker", "build in a container (docker or podman): see docs/building.md"),
            _line("  dockerfile: Dockerfile", "written by `deployer init --docker`; only the tarball leaves it"),
            _line("  engine: auto", "docker or podman, whichever answers; or name one"),
            "  # image: debian:bookworm-slim   # the build stage's base (BUILDER_IMAGE): the targets' Debian release",
            "  # (command and tarball below are used by strategy local or host)",
        ]
    out.append(f"  command: {_q(project.build_command)}")
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
        _line("  known_hosts: known_hosts", "inventory/known_hosts: `deployer trust --env ENV` records keys"),
        "",
        *_runtime_comment(project),
        "env:",
    ]
    if project.phoenix:
        out += [
            "  clear:",
            _line('    PHX_SERVER: "true"', "start the endpoint (what rel/overlays/bin/server sets)"),
            _line(f'    PORT: "{project.http_port}"', "the endpoint's port (config/runtime.exs reads PORT)"),
            _line("  secret:", "values from your environment or secrets_file at deploy time, never here"),
            *[
                _line(
                    f"    - {name}", "mix phx.gen.secret" if name == "SECRET_KEY_BASE" else "ecto://USER:PASS@HOST/DB"
                )
                for name in _secret_names(project)
            ],
        ]
    else:
        port_example = "PORT" if project.tool == "mix" else "HTTP_PORT"
        out += [
            "  clear: {}",
            f'  #   {port_example}: "4000"',
            "  # secret:",
            "  #   - SECRET_KEY_BASE",
            "  #   - DATABASE_URL",
        ]
    out.append("")
    module = project.migrate_module
    if module:
        how = " (what rel/overlays/bin/migrate runs)" if project.phx_release else ""
        out += [
            _line("migrate:", f"bin/{rel} eval, once per deploy, before any host switches{how}"),
            f"  eval: {_q(f'{module}.migrate()')}",
        ]
    else:
        out += [
            f"# migrate:                        # a release with migrations: an expression for bin/{rel} eval,",
            '#   eval: "my_release_tasks:migrate()"   # run once per deploy before any host switches',
        ]
    out += ["", _line("health:", "checked on each host after its node starts; must pass before the next batch")]
    if project.phoenix:
        out.append(
            _line(
                f"  http: http://127.0.0.1:{project.http_port}/",
                "the endpoint answers (any 2xx); a /health route is better",
            )
        )
    else:
        out.append("  # http: http://127.0.0.1:4000/health   # preferred when the app serves HTTP: any 2xx is healthy")
        if project.flavour == "mix":
            out.append(_line('  rpc: "1 + 1"', f"the node answers bin/{rel} rpc (boots a VM per try)"))
        else:
            out.append(
                "  # rpc: ...                      # without http or rpc, healthy means the node's VM is running"
            )
    out.append(_line("  deadline: 60", "seconds for a started node to become healthy"))
    return "\n".join(out) + "\n"


def render_inventory(project: Project, env: str) -> str:
    """``inventory/<env>.yml``: only what differs per environment (hosts, strategy, host name, secrets file)."""
    rel = project.release
    prod = env == "prod"
    out = [
        f"# The {env} environment of {rel}, written by `deployer init` (deployer {__version__}), merged over",
        "# inventory/defaults.yml. Replace the example hosts (192.0.2.0/24 is a documentation range), then:",
        f"# `deployer trust --env {env}`, `deployer check --env {env}`, `deployer deploy --env {env} --dry-run`.",
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
    out += ["", "env:"]
    if project.phoenix:
        host = "example.com" if prod else "staging.example.com"
        out += ["  clear:", _line(f"    PHX_HOST: {host}", "the public host name the endpoint builds URLs with")]
    secrets_file = f"secrets_file: ~/.config/deployer/{rel}-{env}.env"
    if _secret_names(project):
        out.append(_line(f"  {secrets_file}", "the secrets' values: KEY=VALUE, outside the repository"))
    else:
        out += ["  clear: {}", _line(f"  # {secrets_file}", "once env.secret names secrets: their values")]
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


VM_ARGS_SRC = """\
## Rendered by bin/{release} from the environment at every start (relx vm_args_src), written by deployer init.
## The node name comes from RELEASE_NODE, which deployer sets ({node} by default). No -setcookie: the VM
## reads $HOME/.erlang.cookie, which deployer writes (0600), so the cookie never appears in argv or ps.
-name ${{RELEASE_NODE}}
"""

_NAME_OR_COOKIE = re.compile(r"^\s*-(?:s?name|setcookie)\b")


def render_vm_args_src(project: Project, existing: str | None = None) -> str:
    """``config/vm.args.src``: deployer's node name, no cookie, and the rest of an existing vm.args."""
    head = VM_ARGS_SRC.format(release=project.release, node=f"{project.release}@127.0.0.1")
    kept = [line for line in (existing or "").splitlines() if not _NAME_OR_COOKIE.match(line)]
    kept = [line for line in kept if line.strip() and not line.lstrip().startswith("##")]
    return head + ("\n".join(kept) + "\n" if kept else "+K true\n+A 4\n")


def use_vm_args_src(rebar_config: str, path: str) -> str | None:
    """rebar.config with relx reading ``path`` as vm_args_src (replacing a vm_args); None if unsure."""
    tuple_re = re.compile(r"\{\s*vm_args\s*,\s*\"[^\"]+\"\s*\}")
    if len(tuple_re.findall(rebar_config)) == 1:
        return tuple_re.sub(f'{{vm_args_src, "{path}"}}', rebar_config)
    if re.search(r"\bvm_args", rebar_config):
        return None
    relx = re.search(r"\{\s*relx\s*,\s*\[", rebar_config)
    if relx is None:
        return None
    return rebar_config[: relx.end()] + f'{{vm_args_src, "{path}"}},\n        ' + rebar_config[relx.end() :].lstrip()


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
    """Write a new file; an existing one is left alone, unless ``force``: then ``<file>.bak`` keeps it."""
    if path.exists():
        if path.read_text(encoding="utf-8", errors="replace") == content:
            result.unchanged.append(path)
            return
        if not force:
            result.skipped.append(path)
            return
        backup = path.with_name(path.name + ".bak")
        backup.write_bytes(path.read_bytes())
        path.write_text(content, encoding="utf-8")
        result.overwritten.append(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    result.written.append(path)


DOCKERIGNORE = "# Written by `deployer init --docker`: keep the build context small and local builds out.\n"
DOCKERIGNORE += "".join(f"{name}\n" for name in ("_build/", "deps/", ".git/", ".elixir_ls/", "inventory/", "*.tar.gz"))


def project_dockerfile(project: Project, base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The multi-stage Dockerfile of ``project`` (:func:`deployer.build.dockerfile.render_dockerfile`)."""
    if project.flavour == "distillery":
        raise InitError(
            "--docker: the rendered Dockerfile builds with mix release or rebar3, not Distillery",
            hint="write a Dockerfile of your own (docs/building.md, The Dockerfile), or drop --docker",
        )
    if not DOCKER_REF_RE.fullmatch(base_image):
        raise InitError(f"--base-image {base_image!r}: not an image reference ({DOCKER_REF_WORDS})")
    tool: Literal["mix", "rebar3"] = "rebar3" if project.tool == "rebar3" else "mix"
    files, dirs = project_files(project.root, tool)
    return render_dockerfile(
        tool=tool,
        release=project.release,
        dependency_files=files,
        source_dirs=dirs,
        base_image=base_image,
        build_args=[name for name, _ in project.build_env],
    )


def init_project(
    root: Path | str = ".",
    *,
    force: bool = False,
    edit_mix: bool = True,
    tasks_py: bool = False,
    docker: bool = False,
    base_image: str = DEFAULT_BASE_IMAGE,
) -> InitResult:
    """Write the inventories (shared part in defaults.yml), and what the release needs to be deployable:
    (Mix) the release-tasks module, (rebar3) a vm.args.src with deployer's node name and no cookie;
    ``tasks_py``: a tasks.py for ``invoke`` users; ``docker``: a multi-stage Dockerfile (builder stage
    from ``base_image``) and ``.dockerignore``, and ``build.strategy: docker`` in the inventory."""
    project = detect_project(root)
    result = InitResult(project=project)
    base = project.root
    dockerfile = project_dockerfile(project, base_image) if docker else None  # refused before writing anything
    if tasks_py:
        _write(result, base / "tasks.py", render_tasks_py(), force)
    if dockerfile is not None:
        _write(result, base / "Dockerfile", dockerfile, force)
        _write(result, base / ".dockerignore", DOCKERIGNORE, force)
    _write(result, base / "inventory" / "defaults.yml", render_defaults(project, docker=docker), force)
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
    if project.tool == "rebar3":
        _rebar_vm_args(result, force, edit=edit_mix)
    if project.phoenix:
        result.notes.append(
            f"phoenix: PHX_SERVER=true and PORT={project.http_port} in env.clear, SECRET_KEY_BASE"
            + (" and DATABASE_URL" if project.ecto else "")
            + " as secrets (values from your environment or the secrets_file), PHX_HOST per environment, "
            f"health check http://127.0.0.1:{project.http_port}/"
            + ("" if project.phx_release else "; `mix phx.gen.release` adds bin/server and bin/migrate (optional)")
        )
    result.notes.append(_runtime_note(project))
    return result


VM_ARGS_SRC_PATH = "config/vm.args.src"


def _rebar_vm_args(result: InitResult, force: bool, *, edit: bool) -> None:
    """relx's stock vm.args names the node itself and puts the cookie in argv: use a vm.args.src instead."""
    project = result.project
    base = project.root
    current = project.vm_args
    if project.vm_args_src and current is not None:
        text = (base / current).read_text(encoding="utf-8") if (base / current).is_file() else ""
        if "${RELEASE_NODE}" in text and not re.search(r"^\s*-setcookie\b", text, re.M):
            return
        if not force:
            result.notes.append(
                f"ACTION: {current} must say `-name ${{RELEASE_NODE}}` and have no -setcookie (deployer names the "
                "node and gives the VM its cookie through $HOME/.erlang.cookie); --force rewrites it (keeps .bak)"
            )
            return
    existing = (base / current).read_text(encoding="utf-8") if current and (base / current).is_file() else None
    target = current if project.vm_args_src and current else VM_ARGS_SRC_PATH
    _write(result, base / target, render_vm_args_src(project, existing), force)
    if project.vm_args_src:
        return
    rebar = base / "rebar.config"
    updated = use_vm_args_src(rebar.read_text(encoding="utf-8"), VM_ARGS_SRC_PATH) if edit else None
    was = f'{{vm_args, "{current}"}}' if current else "relx's default vm.args"
    if updated is None:
        result.notes.append(
            f'ACTION: in rebar.config, replace {was} with {{vm_args_src, "{VM_ARGS_SRC_PATH}"}}: the node must be '
            "named by deployer (-name ${RELEASE_NODE}) and take its cookie from $HOME/.erlang.cookie, not argv"
        )
        return
    rebar.write_text(updated, encoding="utf-8")
    result.updated.append(rebar)
    result.notes.append(
        f"rebar.config: relx now renders {VM_ARGS_SRC_PATH} (was {was}, which named the node itself and put "
        "the cookie in every ps listing): the node is deployer's RELEASE_NODE, the cookie stays off argv"
    )


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
