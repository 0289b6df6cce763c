defmodule HelloPg.MixProject do
  use Mix.Project

  # Build-time knobs (see HelloPg.Build). Mix does not track environment
  # variables, so every (version, variant, migrations) combination gets its own
  # build directory and `mix release` always recompiles (see aliases/0).
  @version System.get_env("HELLO_PG_VERSION", "0.1.0")
  @variant System.get_env("HELLO_PG_VARIANT", "")
  @migrations System.get_env("HELLO_PG_MIGRATIONS", "2")

  def project do
    [
      app: :hello_pg,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      build_path: "_build/#{@version}-#{variant_tag()}-#{@migrations}",
      deps: [],
      aliases: aliases(),
      releases: [
        hello_pg: [
          include_executables_for: [:unix],
          include_erts: true,
          steps: [:assemble, :tar]
        ]
      ]
    ]
  end

  def application do
    [
      # :p1_pgsql is Debian's erlang-p1-pgsql, a pure-Erlang PostgreSQL client
      # installed in the system OTP lib dir: no Hex needed, and `mix release`
      # copies it into the release like any OTP application.
      extra_applications: [:logger, :inets, :crypto, :p1_pgsql],
      mod: {HelloPg.Application, []}
    ]
  end

  # Without --force, a rebuild in the same build path keeps the old .app file
  # (and so the old vsn) and the old compiled variant.
  defp aliases, do: [release: ["compile --force", "release"]]

  defp variant_tag, do: if(@variant == "", do: "normal", else: @variant)
end
