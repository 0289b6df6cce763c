defmodule HelloPg.JSON do
  @moduledoc """
  A tiny JSON encoder (Elixir 1.14 has no JSON module and this app has no
  dependencies).

  Supports maps with atom or string keys, lists, strings (must be valid UTF-8),
  integers, floats, booleans and `nil`.
  """

  @doc "Encodes `term` as JSON and returns a binary."
  @spec encode!(term()) :: String.t()
  def encode!(term), do: IO.iodata_to_binary(encode(term))

  defp encode(nil), do: "null"
  defp encode(true), do: "true"
  defp encode(false), do: "false"
  defp encode(n) when is_integer(n), do: Integer.to_string(n)
  defp encode(f) when is_float(f), do: Float.to_string(f)
  defp encode(a) when is_atom(a), do: string(Atom.to_string(a))
  defp encode(s) when is_binary(s), do: string(s)

  defp encode(l) when is_list(l),
    do: [?[, l |> Enum.map(&encode/1) |> Enum.intersperse(?,), ?]]

  defp encode(%{} = m) do
    pairs =
      m
      |> Enum.map(fn {k, v} -> {key(k), v} end)
      |> Enum.sort()
      |> Enum.map(fn {k, v} -> [string(k), ?:, encode(v)] end)

    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  defp encode(other), do: raise(ArgumentError, "cannot encode #{inspect(other)} as JSON")

  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k) when is_binary(k), do: k
  defp key(k), do: raise(ArgumentError, "JSON object keys must be strings, got #{inspect(k)}")

  defp string(s) do
    unless String.valid?(s), do: raise(ArgumentError, "JSON strings must be valid UTF-8")
    [?", escape(s, []), ?"]
  end

  defp escape(<<>>, acc), do: Enum.reverse(acc)
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, ["\\\"" | acc])
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, ["\\\\" | acc])
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, ["\\n" | acc])
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, ["\\r" | acc])
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, ["\\t" | acc])
  defp escape(<<?\b, rest::binary>>, acc), do: escape(rest, ["\\b" | acc])
  defp escape(<<?\f, rest::binary>>, acc), do: escape(rest, ["\\f" | acc])

  # Other control characters, DEL, and U+2028/U+2029 (invalid in JavaScript
  # string literals) as \uXXXX.
  defp escape(<<c::utf8, rest::binary>>, acc) when c < 0x20 or c == 0x7F or c in [0x2028, 0x2029],
    do: escape(rest, [unicode_escape(c) | acc])

  defp escape(<<c::utf8, rest::binary>>, acc), do: escape(rest, [<<c::utf8>> | acc])

  defp unicode_escape(c),
    do: "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0")
end
