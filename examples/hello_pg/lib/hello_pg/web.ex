defmodule HelloPg.Web do
  @moduledoc """
  The HTTP interface: an `:httpd` callback module (`do/1`).

    * `GET /health` - 200 `{"status":"ok","database":"ok",...}` when `SELECT 1`
      answers, else 503 `{"status":"unavailable","database":"<cause>"}`
    * `GET /version` - `{"version":...,"variant":...,"migrations_known":N}`
    * `GET /items/<key>` - `{"key":...,"value":...,"written_by":...}` or 404
    * `PUT /items/<key>` - stores the request body as the value (upsert)
    * `GET /` - `"hello_pg <vsn>\\n"`

  Every request opens its own database connection (see `HelloPg.Repo`).
  """

  require Record
  require Logger
  alias HelloPg.Repo

  Record.defrecordp(:mod, Record.extract(:mod, from_lib: "inets/include/httpd.hrl"))

  @key ~r/\A[A-Za-z0-9_.-]{1,64}\z/

  @doc "The `:httpd` configuration for the current environment."
  @spec httpd_config() :: keyword()
  def httpd_config do
    root = Application.app_dir(:hello_pg, "priv/www") |> String.to_charlist()
    bind = HelloPg.Config.bind()

    [
      port: HelloPg.Config.port(),
      bind_address: bind_address(bind),
      ipfamily: if(String.contains?(bind, ":"), do: :inet6, else: :inet),
      server_name: ~c"hello_pg",
      server_root: root,
      document_root: root,
      modules: [__MODULE__]
    ]
  end

  defp bind_address("0.0.0.0"), do: :any

  defp bind_address(addr) do
    case :inet.parse_address(String.to_charlist(addr)) do
      {:ok, ip} -> ip
      {:error, _} -> raise ArgumentError, "HELLO_PG_BIND is not an IP address: #{inspect(addr)}"
    end
  end

  @doc false
  # :httpd callback.
  def unquote(:do)(request) do
    method = mod(request, :method)
    path = request |> mod(:request_uri) |> to_string() |> String.split("?", parts: 2) |> hd()

    {code, type, body} =
      try do
        route(method, path, request)
      rescue
        e ->
          # The message may name the database error; never the request or the URL.
          Logger.error("hello_pg: #{method} #{path} failed: #{Exception.message(e)}")
          json(500, %{status: "error", error: Exception.message(e)})
      end

    head = [code: code, content_type: type, content_length: Integer.to_charlist(byte_size(body))]
    {:proceed, [response: {:response, head, body}]}
  end

  defp route(~c"GET", "/health", _), do: health()
  defp route(~c"GET", "/version", _), do: json(200, version())

  defp route(~c"GET", "/", _),
    do: {200, ~c"text/plain; charset=utf-8", "hello_pg #{HelloPg.Build.version()}\n"}

  defp route(method, "/items/" <> key, request) do
    cond do
      not Regex.match?(@key, key) -> json(400, %{status: "bad key"})
      method == ~c"GET" -> get_item(key)
      method == ~c"PUT" -> put_item(key, request |> mod(:entity_body) |> to_string())
      true -> json(405, %{status: "method not allowed"})
    end
  end

  defp route(_, path, _) when path in ["/health", "/version", "/"],
    do: json(405, %{status: "method not allowed"})

  defp route(_, _, _), do: json(404, %{status: "not found"})

  defp version do
    %{
      version: HelloPg.Build.version(),
      variant: HelloPg.Build.variant(),
      migrations_known: HelloPg.Build.migrations()
    }
  end

  defp health do
    base = Map.merge(version(), %{os_pid: System.pid(), node: Atom.to_string(node())})

    case Repo.connect() do
      {:ok, conn} ->
        try do
          [["1"]] = Repo.rows!(conn, "SELECT 1")

          json(
            200,
            Map.merge(base, %{
              status: "ok",
              database: "ok",
              migrations: HelloPg.Release.applied(conn)
            })
          )
        rescue
          e ->
            json(503, Map.merge(base, %{status: "unavailable", database: Exception.message(e)}))
        after
          Repo.close(conn)
        end

      {:error, cause} ->
        json(503, Map.merge(base, %{status: "unavailable", database: cause}))
    end
  end

  defp get_item(key) do
    Repo.with_connection(fn conn ->
      case Repo.rows!(conn, "SELECT value, written_by FROM items WHERE key = #{Repo.quote(key)}") do
        [[value, by]] -> json(200, %{key: key, value: value, written_by: by})
        [] -> json(404, %{status: "not found", key: key})
      end
    end)
  end

  defp put_item(key, value) do
    unless String.valid?(value), do: raise(ArgumentError, "the value must be UTF-8")
    by = HelloPg.Build.version()

    Repo.with_connection(fn conn ->
      Repo.query!(
        conn,
        "INSERT INTO items (key, value, written_by) " <>
          "VALUES (#{Repo.quote(key)}, #{Repo.quote(value)}, #{Repo.quote(by)}) " <>
          "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, " <>
          "written_by = EXCLUDED.written_by, updated_at = now()"
      )
    end)

    json(200, %{key: key, value: value, written_by: by})
  end

  defp json(code, term), do: {code, ~c"application/json", HelloPg.JSON.encode!(term) <> "\n"}
end
