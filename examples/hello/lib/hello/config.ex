defmodule Hello.Config do
  @moduledoc """
  Run-time configuration, read from the OS environment on every call.

  Nothing here is baked in at build time. `HELLO_SECRET` is never stored in
  the application environment, printed or logged: only its SHA-256 and its
  byte length are ever exposed (by `GET /config`).
  """

  @doc "HTTP port (`HELLO_PORT`, default 4000)."
  @spec port() :: :inet.port_number()
  def port, do: String.to_integer(System.get_env("HELLO_PORT", "4000"))

  @doc "Bind address as a string (`HELLO_BIND`, default `0.0.0.0`)."
  @spec bind() :: String.t()
  def bind, do: System.get_env("HELLO_BIND", "0.0.0.0")

  @doc "Absolute data directory (`HELLO_DATA_DIR`, default `./data`)."
  @spec data_dir() :: String.t()
  def data_dir, do: Path.expand(System.get_env("HELLO_DATA_DIR", "data"))

  @doc "Greeting (`HELLO_GREETING`, default `hello`)."
  @spec greeting() :: String.t()
  def greeting, do: System.get_env("HELLO_GREETING", "hello")

  @doc """
  `{sha256_hex, byte_size}` of `HELLO_SECRET`, or `nil` when it is unset.

  A test can compare the digest with the value it sent to prove the secret
  arrived byte for byte. (The VM decodes environment values as UTF-8, so this
  is exact for any UTF-8 secret; a secret that is not valid UTF-8 reaches the
  VM as raw bytes and is hashed UTF-8 re-encoded.)
  """
  @spec secret_digest() :: {String.t(), non_neg_integer()} | nil
  def secret_digest do
    case System.get_env("HELLO_SECRET") do
      nil -> nil
      secret -> {Base.encode16(:crypto.hash(:sha256, secret), case: :lower), byte_size(secret)}
    end
  end
end
