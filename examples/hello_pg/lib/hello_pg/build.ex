defmodule HelloPg.Build do
  @moduledoc """
  Values baked in at compile time from the build environment.

  `HELLO_PG_VARIANT` selects a deliberately broken build for deployer's tests
  (`""` or `"bad_migration"`: the newest migration raises after doing its
  work, inside its transaction); `HELLO_PG_MIGRATIONS` is how many of the
  migrations in `HelloPg.Migrations` this build knows (the first N).
  """

  @variant System.get_env("HELLO_PG_VARIANT", "")
  @migrations String.to_integer(System.get_env("HELLO_PG_MIGRATIONS", "2"))

  unless @variant in ["", "bad_migration"] do
    raise ArgumentError, "unknown HELLO_PG_VARIANT #{inspect(@variant)}"
  end

  @doc "The build variant (`\"\"` for a normal build)."
  @spec variant() :: String.t()
  def variant, do: @variant

  @doc "Number of migrations known to this build."
  @spec migrations() :: non_neg_integer()
  def migrations, do: @migrations

  @doc "The application version (the release's `vsn`)."
  @spec version() :: String.t()
  def version do
    case Application.spec(:hello_pg, :vsn) do
      nil ->
        _ = Application.load(:hello_pg)
        to_string(Application.spec(:hello_pg, :vsn))

      vsn ->
        to_string(vsn)
    end
  end
end
