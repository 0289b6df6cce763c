defmodule Hello.MixProject do
  use Mix.Project

  # Build-time knobs. Mix does not track environment variables, so every
  # (version, variant, migrations) combination gets its own build directory,
  # and `mix release` always recompiles (see aliases/0; the app is tiny):
  # switching HELLO_VERSION / HELLO_VARIANT / HELLO_MIGRATIONS and running
  # `mix release --overwrite` always compiles and packs that combination, even
  # when MIX_BUILD_PATH points every build at the same directory.
  @version System.get_env("HELLO_VERSION", "0.1.0")
  @variant System.get_env("HELLO_VARIANT", "")
  @migrations System.get_env("HELLO_MIGRATIONS", "2")

  def project do
    [
      app: :hello,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      build_path: "_build/#{@version}-#{variant_tag()}-#{@migrations}",
      deps: [],
      aliases: aliases(),
      releases: [
        hello: [
          include_executables_for: [:unix],
          include_erts: true,
          steps: [:assemble, :tar]
        ]
      ]
    ]
  end

  def application do
    [
      extra_applications: [:logger, :inets, :crypto],
      mod: {Hello.Application, []}
    ]
  end

  # Without --force, a rebuild in the same build path keeps the old .app file
  # (and so the old vsn) and the old compiled variant.
  defp aliases, do: [release: ["compile --force", "release"]]

  defp variant_tag, do: if(@variant == "", do: "normal", else: @variant)
end
