defmodule Hello.Build do
  @moduledoc """
  Values baked in at compile time from the build environment.

  `HELLO_VARIANT` selects a deliberately broken build for deployer's tests
  (`""`, `"crash"`, `"unhealthy"`, `"bad_migration"`); `HELLO_MIGRATIONS` is
  the number of migrations (numbered `1..N`) this build knows about.
  """

  @variant System.get_env("HELLO_VARIANT", "")
  @migrations String.to_integer(System.get_env("HELLO_MIGRATIONS", "2"))

  unless @variant in ["", "crash", "unhealthy", "bad_migration", "dies_after_health"] do
    raise ArgumentError, "unknown HELLO_VARIANT #{inspect(@variant)}"
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
    case Application.spec(:hello, :vsn) do
      nil ->
        _ = Application.load(:hello)
        to_string(Application.spec(:hello, :vsn))

      vsn ->
        to_string(vsn)
    end
  end
end
