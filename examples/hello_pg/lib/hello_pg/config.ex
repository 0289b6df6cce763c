defmodule HelloPg.Config do
  @moduledoc """
  Run-time settings read from the OS environment (the database URL is read by
  `config/runtime.exs`, see `HelloPg.Repo`).
  """

  @doc "HTTP port (`PORT`, default 4000, as in a Phoenix release)."
  @spec port() :: :inet.port_number()
  def port, do: String.to_integer(System.get_env("PORT", "4000"))

  @doc "Bind address as a string (`HELLO_PG_BIND`, default `0.0.0.0`)."
  @spec bind() :: String.t()
  def bind, do: System.get_env("HELLO_PG_BIND", "0.0.0.0")
end
