defmodule Hello.Web do
  @moduledoc """
  The HTTP interface: an `:httpd` callback module (`do/1`).

    * `GET /health` - 200 `{"status":"ok",...}` (503 `"unavailable"` in the
      `crash` and `unhealthy` variants)
    * `GET /` - `"<greeting> from hello <vsn>\\n"`
    * `GET /config` - greeting, port, and the SHA-256 and byte length of the
      secret (never the secret itself)
  """

  require Record
  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @doc "The `:httpd` configuration for the current environment."
  @spec httpd_config() :: keyword()
  def httpd_config do
    root = Application.app_dir(:hello, "priv/www") |> String.to_charlist()

    [
      port: Hello.Config.port(),
      bind_address: bind_address(Hello.Config.bind()),
      ipfamily: ipfamily(Hello.Config.bind()),
      server_name: ~c"hello",
      server_root: root,
      document_root: root,
      modules: [__MODULE__]
    ]
  end

  defp bind_address("0.0.0.0"), do: :any

  defp bind_address(addr) do
    case :inet.parse_address(String.to_charlist(addr)) do
      {:ok, ip} -> ip
      {:error, _} -> raise ArgumentError, "HELLO_BIND is not an IP address: #{inspect(addr)}"
    end
  end

  defp ipfamily(addr), do: if(String.contains?(addr, ":"), do: :inet6, else: :inet)

  @doc false
  # :httpd callback.
  def unquote(:do)(request) do
    method = mod(request, :method)
    path = request |> mod(:request_uri) |> to_string() |> String.split("?", parts: 2) |> hd()

    {code, type, body} =
      try do
        route(method, path)
      rescue
        e ->
          # Never include request data or the environment in the message.
          require Logger
          Logger.error("hello: #{method} #{path} failed: #{Exception.message(e)}")
          json(500, %{status: "error"})
      end

    head = [code: code, content_type: type, content_length: Integer.to_charlist(byte_size(body))]
    {:proceed, [response: {:response, head, body}]}
  end

  defp route(~c"GET", "/health"), do: health()

  defp route(~c"GET", "/"),
    do:
      {200, ~c"text/plain; charset=utf-8",
       "#{Hello.Config.greeting()} from hello #{Hello.Build.version()}\n"}

  defp route(~c"GET", "/config"), do: config()
  defp route(_, "/health"), do: json(405, %{status: "method not allowed"})
  defp route(_, "/config"), do: json(405, %{status: "method not allowed"})
  defp route(_, "/"), do: json(405, %{status: "method not allowed"})
  defp route(_, _), do: json(404, %{status: "not found"})

  defp health do
    migrations =
      case Hello.Store.read() do
        {:ok, records} -> Enum.map(records, &elem(&1, 0))
        {:error, _} -> []
      end

    healthy = Hello.Build.variant() not in ["crash", "unhealthy"]
    if Hello.Build.variant() == "dies_after_health", do: Hello.Application.die_later()

    json(if(healthy, do: 200, else: 503), %{
      status: if(healthy, do: "ok", else: "unavailable"),
      version: Hello.Build.version(),
      variant: Hello.Build.variant(),
      migrations: migrations,
      os_pid: System.pid(),
      node: Atom.to_string(node())
    })
  end

  defp config do
    {sha, bytes} = Hello.Config.secret_digest() || {nil, 0}

    json(200, %{
      greeting: Hello.Config.greeting(),
      secret_sha256: sha,
      secret_bytes: bytes,
      port: Hello.Config.port()
    })
  end

  defp json(code, term), do: {code, ~c"application/json", Hello.JSON.encode!(term) <> "\n"}
end
