"""`deployer init`: project detection, the files it writes (inventories that validate), what it never overwrites."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deployer.build.init import (
    InitError,
    add_mix_release,
    camelize,
    detect_project,
    endpoint_port,
    init_project,
    mix_deps,
    render_defaults,
    render_inventory,
    render_release_module,
    use_vm_args_src,
)
from deployer.cli.program import main as cli_main
from deployer.core.inventory import load_inventory

# What `mix new demo_app --sup` writes (Elixir 1.14).
MIX_NEW = """\
defmodule DemoApp.MixProject do
  use Mix.Project

  def project do
    [
      app: :demo_app,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  # Run "mix help compile.app" to learn about applications.
  def application do
    [
      extra_applications: [:logger],
      mod: {DemoApp.Application, []}
    ]
  end

  # Run "mix help deps" to learn about dependencies.
  defp deps do
    [
      # {:dep_from_hexpm, "~> 0.3.0"},
      # {:dep_from_git, git: "https://github.com/elixir-lang/my_dep.git", tag: "0.1.0"}
    ]
  end
end
"""

# What `rebar3 new release relapp` writes (rebar 3.19), abridged.
REBAR_CONFIG = """\
{erl_opts, [debug_info]}.
{deps, []}.

{relx, [{release, {relapp, "0.1.0"},
         [relapp,
          sasl]},

        {mode, dev},
        %% {release, {commented_out, "9.9.9"}, []},
        {sys_config, "./config/sys.config"},
        {vm_args, "./config/vm.args"}
]}.

{profiles, [{prod, [{relx, [{mode, prod}]}]}]}.
"""


def mix_project(root: Path, mix_exs: str = MIX_NEW) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mix.exs").write_text(mix_exs)
    (root / "lib" / "demo_app").mkdir(parents=True, exist_ok=True)
    (root / "lib" / "demo_app" / "application.ex").write_text("defmodule DemoApp.Application do\nend\n")
    return root


def rebar_project(root: Path) -> Path:
    (root / "apps" / "relapp" / "src").mkdir(parents=True)
    (root / "rebar.config").write_text(REBAR_CONFIG)
    (root / "apps" / "relapp" / "src" / "relapp.app.src").write_text(
        '{application, relapp, [{description, "x"}, {vsn, "0.1.0"}]}.\n'
    )
    return root


def validate(root: Path) -> dict[str, object]:
    """Both generated inventories load with the real loader (secrets unresolved)."""
    configs = {}
    for env in ("staging", "prod"):
        configs[env] = load_inventory(env, root / "inventory", resolve_secrets=False).config
    return configs


# --- detection -----------------------------------------------------------------------------------------


def test_detects_a_fresh_mix_project(tmp_path: Path) -> None:
    project = detect_project(mix_project(tmp_path / "demo"))
    assert (project.tool, project.app, project.release, project.flavour) == ("mix", "demo_app", "demo_app", "mix")
    assert project.module == "DemoApp"
    assert project.version == "0.1.0"
    assert project.releases_config == "missing"
    assert not project.ecto
    assert project.tarball == "_build/prod/demo_app-*.tar.gz"
    assert project.build_command == "mix deps.get --only prod && mix release --overwrite"
    assert project.build_env == (("MIX_ENV", "prod"),)
    assert project.release_module is None and project.migrate_module == "DemoApp.Release"
    assert project.runtime_config is None


def test_release_name_comes_from_mix_releases(tmp_path: Path) -> None:
    inline = MIX_NEW.replace(
        "      deps: deps()\n",
        "      deps: deps(),\n      releases: [\n        web_rel: [steps: [:assemble, :tar]]\n      ]\n",
    )
    project = detect_project(mix_project(tmp_path / "a", inline))
    assert (project.app, project.release, project.releases_config) == ("demo_app", "web_rel", "ok")
    function = MIX_NEW.replace("      deps: deps()\n", "      deps: deps(),\n      releases: releases()\n").replace(
        "  defp deps do", "  defp releases do\n    [other: [include_erts: true]]\n  end\n\n  defp deps do"
    )
    project = detect_project(mix_project(tmp_path / "b", function))
    assert (project.release, project.releases_config) == ("other", "no_tar")


def test_detects_ecto_distillery_and_an_existing_release_module(tmp_path: Path) -> None:
    ecto = MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', '{:ecto_sql, "~> 3.10"}, {:postgrex, ">= 0.0.0"},')
    assert detect_project(mix_project(tmp_path / "ecto", ecto)).ecto
    root = mix_project(tmp_path / "tasks")
    (root / "lib" / "demo_app" / "tasks.ex").write_text(
        "defmodule DemoApp.ReleaseTasks do\n  def migrate, do: :ok\nend\n"
    )
    assert detect_project(root).migrate_module == "DemoApp.ReleaseTasks"
    distillery = MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', '{:distillery, "~> 2.1"},')
    root = mix_project(tmp_path / "dist", distillery)
    (root / "rel").mkdir()
    (root / "rel" / "config.exs").write_text("environment :prod do\nend\n\nrelease :shop do\nend\n")
    project = detect_project(root)
    assert (project.flavour, project.release) == ("distillery", "shop")
    assert project.tarball == "_build/prod/rel/shop/releases/*/shop.tar.gz"


def test_detects_a_rebar3_release(tmp_path: Path) -> None:
    project = detect_project(rebar_project(tmp_path / "relapp"))
    assert (project.tool, project.app, project.release, project.flavour) == ("rebar3", "relapp", "relapp", "rebar3")
    assert project.version == "0.1.0"
    assert project.build_command == "rebar3 as prod tar"
    assert project.tarball == "_build/prod/rel/relapp/relapp-*.tar.gz"
    assert project.migrate_module is None


def test_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"neither mix\.exs nor rebar\.config"):
        detect_project(tmp_path)
    (tmp_path / "rebar.config").write_text("{deps, []}.\n")
    with pytest.raises(InitError, match="no relx release"):
        detect_project(tmp_path)
    bad = mix_project(tmp_path / "bad", MIX_NEW.replace("app: :demo_app", "app: :DemoApp"))
    with pytest.raises(InitError, match="no `app: :name`"):
        detect_project(bad)
    upper = mix_project(tmp_path / "upper", MIX_NEW.replace("deps: deps()", "deps: deps(), releases: [Web: []]"))
    assert detect_project(upper).release == "demo_app"  # `Web:` is not a release key we can use: ignored


def test_camelize() -> None:
    assert camelize("demo_app") == "DemoApp"
    assert camelize("a_b__c") == "ABC"


# --- writing -------------------------------------------------------------------------------------------


def test_init_writes_valid_inventories_and_a_release_module(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "demo")
    result = init_project(root, tasks_py=True)
    written = {p.relative_to(root).as_posix() for p in result.written}
    assert written == {
        "tasks.py",
        "inventory/defaults.yml",
        "inventory/staging.yml",
        "inventory/prod.yml",
        "lib/demo_app/release.ex",
    }
    assert result.skipped == [] and result.updated == [root / "mix.exs"]

    configs = validate(root)
    staging, prod = configs["staging"], configs["prod"]
    for config in (staging, prod):
        assert config.app.name == "demo_app" and config.app.flavour == "mix"  # type: ignore[attr-defined]
        assert config.build.command == "mix deps.get --only prod && mix release --overwrite"  # type: ignore[attr-defined]
        assert config.build.env == {"MIX_ENV": "prod"}  # type: ignore[attr-defined]
        assert config.build.tarball == "_build/prod/demo_app-*.tar.gz"  # type: ignore[attr-defined]
        assert config.migrate.eval == "DemoApp.Release.migrate()"  # type: ignore[attr-defined]
        assert config.health.rpc == "1 + 1" and config.health.http is None  # type: ignore[attr-defined]
        assert config.deploy_to == "/srv/demo_app"  # type: ignore[attr-defined]
        assert config.ssh.known_hosts == "known_hosts"  # type: ignore[attr-defined]
    assert [h.name for h in staging.hosts] == ["staging1"]  # type: ignore[attr-defined]
    assert [h.name for h in prod.hosts] == ["web1", "web2"]  # type: ignore[attr-defined]
    assert prod.strategy.kind == "rolling" and prod.strategy.canary  # type: ignore[attr-defined]
    assert staging.strategy.kind == "parallel"  # type: ignore[attr-defined]

    # The shared part is written once: the environments hold only hosts, strategy and their own values.
    defaults = (root / "inventory" / "defaults.yml").read_text()
    assert "config/runtime.exs" in defaults  # the run-time configuration comment
    for env in ("staging", "prod"):
        text = (root / "inventory" / f"{env}.yml").read_text()
        assert "192.0.2." in text  # documentation addresses only
        assert "build:" not in text and "app:" not in text and "health:" not in text and "migrate:" not in text
        assert f"secrets_file: ~/.config/deployer/demo_app-{env}.env" in text

    # tasks.py: two lines that give the collection to invoke.
    tasks_py = (root / "tasks.py").read_text()
    assert len(tasks_py.splitlines()) == 2 and "from deployer.tasks import ns" in tasks_py
    scope: dict[str, object] = {}
    exec(compile(tasks_py, "tasks.py", "exec"), scope)
    assert "deploy" in scope["ns"].task_names  # type: ignore[attr-defined]

    # Without Ecto, migrate/0 has nothing to do; the Ecto version is there as a comment.
    release_ex = (root / "lib" / "demo_app" / "release.ex").read_text()
    assert "defmodule DemoApp.Release do" in release_ex and "@app :demo_app" in release_ex
    assert "no Ecto repos configured" in release_ex
    code_lines = [line for line in release_ex.splitlines() if not line.lstrip().startswith("#")]
    assert not any("Ecto.Migrator" in line for line in code_lines)
    assert "#         {:ok, _, _} = Ecto.Migrator.with_repo" in release_ex
    assert "def rollback(repo, version)" in release_ex and "defp load_app" in release_ex

    # mix.exs gained a release with the tarball step, and nothing else changed.
    mix_exs = (root / "mix.exs").read_text()
    entry = (
        "      releases: [\n        demo_app: [include_executables_for: [:unix], steps: [:assemble, :tar]]\n      ],\n"
    )
    assert "      app: :demo_app,\n" + entry in mix_exs
    assert mix_exs.replace(entry, "") == MIX_NEW
    assert detect_project(root).releases_config == "ok"
    assert any("runtime.exs" in note for note in result.notes)


def test_second_run_skips_everything_and_force_overwrites(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "demo")
    init_project(root)
    (root / "inventory" / "prod.yml").write_text("# mine\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    again = init_project(root)
    assert again.written == [] and again.updated == [] and again.overwritten == []
    assert [p.relative_to(root).as_posix() for p in again.skipped] == ["inventory/prod.yml"]  # edited: kept
    assert {p.relative_to(root).as_posix() for p in again.unchanged} == {
        "inventory/defaults.yml",
        "inventory/staging.yml",
        "lib/demo_app/release.ex",
    }
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (root / "tasks.py").exists()  # only with --tasks-py
    assert not any("tasks.py" in note for note in again.notes)
    # The existing release module is now the one the inventories use.
    assert any("DemoApp.Release.migrate()" in note for note in again.notes)

    forced = init_project(root, force=True)
    assert forced.overwritten == [root / "inventory" / "prod.yml"] and forced.written == []
    assert (root / "inventory" / "prod.yml").read_text() != "# mine\n"
    assert (root / "inventory" / "prod.yml.bak").read_text() == "# mine\n"  # the edited file is kept
    assert (root / "mix.exs").read_text().count("releases:") == 1


def test_mix_exs_is_left_alone_when_asked_or_when_releases_exist(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "no-edit")
    result = init_project(root, edit_mix=False)
    assert (root / "mix.exs").read_text() == MIX_NEW
    assert any(note.startswith("ACTION: add to project/0 in mix.exs") for note in result.notes)

    no_tar = MIX_NEW.replace("      deps: deps()\n", "      deps: deps(),\n      releases: [demo_app: []]\n")
    root = mix_project(tmp_path / "no-tar", no_tar)
    result = init_project(root)
    assert (root / "mix.exs").read_text() == no_tar
    assert any("without the :tar step" in note for note in result.notes)

    assert add_mix_release("defmodule X.MixProject do\n  def project, do: [app: :x]\nend\n", "x") is None


def test_ecto_project_gets_the_ecto_migrator_module(tmp_path: Path) -> None:
    ecto = MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', '{:ecto_sql, "~> 3.10"},')
    root = mix_project(tmp_path / "demo", ecto)
    init_project(root)
    release_ex = (root / "lib" / "demo_app" / "release.ex").read_text()
    assert "{:ok, _, _} = Ecto.Migrator.with_repo(repo, &Ecto.Migrator.run(&1, :up, all: true))" in release_ex
    assert "Ecto.Migrator.run(&1, :down, to: version)" in release_ex
    assert "Application.fetch_env!(@app, :ecto_repos)" in release_ex
    assert "no Ecto repos configured" not in release_ex
    validate(root)


def test_rebar3_and_distillery_inventories_validate(tmp_path: Path) -> None:
    root = rebar_project(tmp_path / "relapp")
    result = init_project(root)
    assert {p.relative_to(root).as_posix() for p in result.written} == {
        "inventory/defaults.yml",
        "inventory/staging.yml",
        "inventory/prod.yml",
        "config/vm.args.src",
    }
    for config in validate(root).values():
        assert config.app.flavour == "rebar3" and config.migrate is None  # type: ignore[attr-defined]
        assert config.build.tarball == "_build/prod/rel/relapp/relapp-*.tar.gz"  # type: ignore[attr-defined]
        assert config.health.rpc is None  # type: ignore[attr-defined]
    assert "sys.config.src" in (root / "inventory" / "defaults.yml").read_text()

    distillery = MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', '{:distillery, "~> 2.1"},')
    root = mix_project(tmp_path / "dist", distillery)
    init_project(root)
    assert (root / "mix.exs").read_text() == distillery  # no mix release for Distillery
    for config in validate(root).values():
        assert config.app.flavour == "distillery"  # type: ignore[attr-defined]


def test_every_generated_inventory_line_is_short_and_commented_where_detected(tmp_path: Path) -> None:
    project = detect_project(mix_project(tmp_path / "demo"))
    for env in ("staging", "prod"):
        text = render_inventory(project, env)
        assert all(len(line) <= 120 for line in text.splitlines()), env
    defaults = render_defaults(project)
    assert all(len(line) <= 120 for line in defaults.splitlines())
    assert "name: demo_app" in defaults and "the tarball holds bin/demo_app" in defaults


@pytest.mark.skipif(shutil.which("elixir") is None, reason="needs elixir")
def test_generated_release_modules_are_valid_elixir(tmp_path: Path) -> None:
    for ecto in ("", '{:ecto_sql, "~> 3.10"},'):
        mix_exs = MIX_NEW.replace('# {:dep_from_hexpm, "~> 0.3.0"},', ecto)
        source = tmp_path / f"release{len(ecto)}.ex"
        source.write_text(render_release_module(detect_project(mix_project(tmp_path / f"p{len(ecto)}", mix_exs))))
        done = subprocess.run(
            ["elixir", "-e", f"Code.string_to_quoted!(File.read!({str(source)!r}))"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_the_init_task_reports_written_and_skipped_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = mix_project(tmp_path / "demo")
    cli_main(["deployer", "init", "--path", str(root)])
    out = capsys.readouterr().err
    assert "mix project demo_app: release demo_app (mix)" in out
    assert "wrote     inventory/staging.yml" in out and "updated   mix.exs" in out
    cli_main(["deployer", "init", "--path", str(root)])
    out = capsys.readouterr().err
    assert "unchanged inventory/prod.yml" in out
    (root / "inventory" / "prod.yml").write_text("# mine\n")
    cli_main(["deployer", "init", "--path", str(root), "--force"])
    out = capsys.readouterr().err
    assert "overwrote inventory/prod.yml (the previous content is in inventory/prod.yml.bak)" in out
    with pytest.raises(SystemExit) as exited:
        cli_main(["deployer", "init", "--path", str(tmp_path / "nothing")])
    assert exited.value.code == 2


def test_an_unrelated_release_ex_is_kept_and_reported(tmp_path: Path) -> None:
    root = mix_project(tmp_path / "demo")
    (root / "lib" / "demo_app" / "release.ex").write_text("defmodule DemoApp.Other do\nend\n")
    result = init_project(root)
    assert root / "lib" / "demo_app" / "release.ex" in result.skipped
    assert (root / "lib" / "demo_app" / "release.ex").read_text() == "defmodule DemoApp.Other do\nend\n"
    assert any(note.startswith("ACTION: lib/demo_app/release.ex exists") for note in result.notes)


# --- rebar3: the node is deployer's, the cookie stays off argv ------------------------------------------

STOCK_VM_ARGS = """\
-sname relapp

-setcookie relapp_cookie

+K true
+A30
"""


def test_rebar3_stock_vm_args_becomes_a_vm_args_src_with_deployers_node_and_no_cookie(tmp_path: Path) -> None:
    root = rebar_project(tmp_path / "relapp")
    (root / "config").mkdir()
    (root / "config" / "vm.args").write_text(STOCK_VM_ARGS)
    result = init_project(root)
    src = (root / "config" / "vm.args.src").read_text()
    lines = [line for line in src.splitlines() if line and not line.startswith("##")]
    assert lines == ["-name ${RELEASE_NODE}", "+K true", "+A30"]  # the node's name from deployer; no cookie
    rebar = (root / "rebar.config").read_text()
    assert '{vm_args_src, "config/vm.args.src"}' in rebar and "{vm_args," not in rebar
    assert rebar == REBAR_CONFIG.replace('{vm_args, "./config/vm.args"}', '{vm_args_src, "config/vm.args.src"}')
    assert root / "rebar.config" in result.updated
    assert any("cookie in every ps listing" in note for note in result.notes)
    assert detect_project(root).vm_args_src

    # A second run finds a vm.args.src that already fits: nothing to do, nothing to say.
    again = init_project(root)
    assert again.written == [] and again.updated == []
    assert not any("rebar.config" in n or n.startswith("ACTION") for n in again.notes)


def test_rebar3_vm_args_src_that_names_the_node_itself_is_reported(tmp_path: Path) -> None:
    root = rebar_project(tmp_path / "relapp")
    (root / "config").mkdir()
    (root / "config" / "vm.args.src").write_text("-sname relapp\n-setcookie ${COOKIE}\n")
    (root / "rebar.config").write_text(
        REBAR_CONFIG.replace('{vm_args, "./config/vm.args"}', '{vm_args_src, "config/vm.args.src"}')
    )
    result = init_project(root)
    assert (root / "config" / "vm.args.src").read_text() == "-sname relapp\n-setcookie ${COOKIE}\n"
    assert any(note.startswith("ACTION: config/vm.args.src must say `-name ${RELEASE_NODE}`") for note in result.notes)
    forced = init_project(root, force=True)
    assert root / "config" / "vm.args.src" in forced.overwritten
    assert "-name ${RELEASE_NODE}" in (root / "config" / "vm.args.src").read_text()
    assert (root / "config" / "vm.args.src.bak").read_text() == "-sname relapp\n-setcookie ${COOKIE}\n"


def test_vm_args_src_edit_of_rebar_config() -> None:
    assert use_vm_args_src('{relx, [{release, {a, "1"}, [a]}]}.\n', "config/vm.args.src") == (
        '{relx, [{vm_args_src, "config/vm.args.src"},\n        {release, {a, "1"}, [a]}]}.\n'
    )
    two = '{relx, [{vm_args, "a"}]}.\n{profiles, [{prod, [{relx, [{vm_args, "b"}]}]}]}.\n'
    assert use_vm_args_src(two, "config/vm.args.src") is None  # unsure: say what to change instead
    assert use_vm_args_src("{deps, []}.\n", "config/vm.args.src") is None


# --- Phoenix ---------------------------------------------------------------------------------------------

PHOENIX_DEPS = """\
      {:phoenix, "~> 1.7.10"},
      {:phoenix_ecto, "~> 4.4"},
      {:ecto_sql, "~> 3.10"},
      {:postgrex, ">= 0.0.0"},
      # {:phoenix_live_dashboard, "~> 0.8"},"""

RUNTIME_EXS = """\
import Config

if config_env() == :prod do
  host = System.get_env("PHX_HOST") || "example.com"
  port = String.to_integer(System.get_env("PORT") || "4040")

  config :demo_app, DemoAppWeb.Endpoint,
    url: [host: host, port: 443, scheme: "https"],
    http: [ip: {0, 0, 0, 0, 0, 0, 0, 0}, port: port]
end
"""


def phoenix_project(root: Path, *, gen_release: bool = False) -> Path:
    mix_project(root, MIX_NEW.replace('      # {:dep_from_hexpm, "~> 0.3.0"},', PHOENIX_DEPS))
    (root / "config").mkdir()
    (root / "config" / "config.exs").write_text("import Config\nconfig :demo_app, ecto_repos: [DemoApp.Repo]\n")
    (root / "config" / "runtime.exs").write_text(RUNTIME_EXS)
    if gen_release:  # what `mix phx.gen.release` writes
        (root / "rel" / "overlays" / "bin").mkdir(parents=True)
        (root / "rel" / "overlays" / "bin" / "server").write_text("#!/bin/sh\nPHX_SERVER=true exec ./demo_app start\n")
        (root / "rel" / "overlays" / "bin" / "migrate").write_text(
            "#!/bin/sh\nexec ./demo_app eval DemoApp.Release.migrate\n"
        )
        (root / "lib" / "demo_app" / "release.ex").write_text(
            "defmodule DemoApp.Release do\n  @app :demo_app\n  def migrate do\n    :ok\n  end\nend\n"
        )
    return root


def test_phoenix_is_detected_from_the_dependencies_not_the_text(tmp_path: Path) -> None:
    root = phoenix_project(tmp_path / "demo")
    project = detect_project(root)
    assert project.phoenix and project.ecto and project.http_port == 4040
    assert "phoenix_live_dashboard" not in mix_deps(root, (root / "mix.exs").read_text())
    # mix.lock is what mix resolved: it wins over what mix.exs seems to say.
    (root / "mix.lock").write_text('%{\n  "jason": {:hex, :jason, "1.4.1"},\n}\n')
    assert not detect_project(root).phoenix
    # A word "phoenix" in a comment or a string is not a dependency.
    plain = mix_project(tmp_path / "plain", MIX_NEW.replace("# Run", '# {:phoenix, "~> 1.7"} someday\n  # Run'))
    assert not detect_project(plain).phoenix
    assert endpoint_port(plain) == 4000


def test_phoenix_inventories(tmp_path: Path) -> None:
    root = phoenix_project(tmp_path / "demo")
    result = init_project(root)
    configs = validate(root)
    for env, config in configs.items():
        assert config.env.clear["PHX_SERVER"] == "true" and config.env.clear["PORT"] == "4040"  # type: ignore[attr-defined]
        assert list(config.env.secret) == ["SECRET_KEY_BASE", "DATABASE_URL"]  # type: ignore[attr-defined]
        assert config.env.clear["PHX_HOST"] == ("example.com" if env == "prod" else "staging.example.com")  # type: ignore[attr-defined]
        assert config.health.http == "http://127.0.0.1:4040/"  # type: ignore[attr-defined]
        assert config.migrate.eval == "DemoApp.Release.migrate()"  # type: ignore[attr-defined]
    assert any(note.startswith("phoenix: PHX_SERVER=true") and "phx.gen.release" in note for note in result.notes)
    release_ex = (root / "lib" / "demo_app" / "release.ex").read_text()
    assert "Ecto.Migrator.with_repo" in release_ex


def test_a_phx_gen_release_app_keeps_its_release_module(tmp_path: Path) -> None:
    root = phoenix_project(tmp_path / "demo", gen_release=True)
    before = (root / "lib" / "demo_app" / "release.ex").read_text()
    result = init_project(root)
    assert (root / "lib" / "demo_app" / "release.ex").read_text() == before
    assert detect_project(root).phx_release
    for config in validate(root).values():
        assert config.migrate.eval == "DemoApp.Release.migrate()"  # type: ignore[attr-defined]
    assert "what rel/overlays/bin/migrate runs" in (root / "inventory" / "defaults.yml").read_text()
    assert not any("phx.gen.release" in note for note in result.notes)
