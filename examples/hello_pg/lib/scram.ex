defmodule :scram do
  @moduledoc """
  The SCRAM (RFC 5802) arithmetic `:p1_pgsql` calls during SCRAM-SHA-256
  authentication.

  Debian's `erlang-p1-pgsql` takes these six functions from the `scram` module
  of `erlang-p1-xmpp`, a whole XMPP library with C NIFs (stringprep, fast_xml,
  fast_tls). This release does not ship that library; it provides the same
  functions, with the same arity and argument order, from `:crypto` alone.
  The password is not SASLprep-normalised: use ASCII passwords (as the test
  fleet's random ones are).
  """

  @doc "Hi(password, salt, i): PBKDF2 with HMAC-`hash`, one hash length."
  @spec salted_password(atom(), binary(), binary(), pos_integer()) :: binary()
  def salted_password(hash, password, salt, iterations),
    do: :crypto.pbkdf2_hmac(hash, password, salt, iterations, byte_size(:crypto.hash(hash, "")))

  @doc "ClientKey = HMAC(SaltedPassword, \"Client Key\")."
  @spec client_key(atom(), binary()) :: binary()
  def client_key(hash, salted_password), do: hmac(hash, salted_password, "Client Key")

  @doc "StoredKey = H(ClientKey)."
  @spec stored_key(atom(), binary()) :: binary()
  def stored_key(hash, client_key), do: :crypto.hash(hash, client_key)

  @doc "ClientSignature = HMAC(StoredKey, AuthMessage)."
  @spec client_signature(atom(), binary(), iodata()) :: binary()
  def client_signature(hash, stored_key, auth_message), do: hmac(hash, stored_key, auth_message)

  @doc "ServerKey = HMAC(SaltedPassword, \"Server Key\")."
  @spec server_key(atom(), binary()) :: binary()
  def server_key(hash, salted_password), do: hmac(hash, salted_password, "Server Key")

  @doc "ServerSignature = HMAC(ServerKey, AuthMessage)."
  @spec server_signature(atom(), binary(), iodata()) :: binary()
  def server_signature(hash, server_key, auth_message), do: hmac(hash, server_key, auth_message)

  defp hmac(hash, key, data), do: :crypto.mac(:hmac, hash, key, data)
end
