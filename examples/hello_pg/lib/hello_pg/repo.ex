defmodule HelloPg.Repo do
  @moduledoc """
  The PostgreSQL database, through Debian's pure-Erlang driver `:p1_pgsql`.

  The URL comes from `DATABASE_URL` (a secret, read by `config/runtime.exs`).
  Each unit of work opens one connection and closes it afterwards: there is no
  pool to keep alive while the database is away.

  Failures are reported the way Ecto and DBConnection report them, on purpose:
  the cause (connection refused, timeout, `FATAL 28P01 (invalid_password)`, ...)
  is *logged* by `Logger` - which writes to standard output - and the exception
  raised by `with_connection/1` is DBConnection's generic "connection not
  available and request was dropped from queue". A deploy tool that only shows
  standard error loses the cause, as it does with a real Phoenix app.

  The password is never printed: `describe/0` shows `user@host:port/database`,
  and `install_log_filter/0` redacts it from every log event (the driver's
  process state, which holds it, appears in OTP crash reports).
  """

  require Logger

  defmodule ConnectionError do
    @moduledoc "No connection could be made (the cause is in the log)."
    defexception [:message]
  end

  defmodule Error do
    @moduledoc "A statement failed: PostgreSQL's severity, SQLSTATE and message, as Postgrex shows them."
    defexception [:message, :code]
  end

  @connect_timeout 5_000
  @query_timeout 15_000
  @redacted "[REDACTED]"

  # The SQLSTATE names of the errors this example is likely to meet.
  @codes %{
    "08006" => "connection_failure",
    "0A000" => "feature_not_supported",
    "22012" => "division_by_zero",
    "23505" => "unique_violation",
    "28000" => "invalid_authorization_specification",
    "28P01" => "invalid_password",
    "3D000" => "invalid_catalog_name",
    "42501" => "insufficient_privilege",
    "42601" => "syntax_error",
    "42703" => "undefined_column",
    "42P01" => "undefined_table",
    "42P07" => "duplicate_table",
    "42701" => "duplicate_column",
    "53300" => "too_many_connections",
    "57P01" => "admin_shutdown",
    "57P03" => "cannot_connect_now"
  }

  @type config :: %{
          host: String.t(),
          port: :inet.port_number(),
          user: String.t(),
          password: String.t(),
          database: String.t()
        }

  @doc "The parsed `DATABASE_URL`."
  @spec config() :: config()
  def config do
    :hello_pg
    |> Application.fetch_env!(__MODULE__)
    |> Keyword.fetch!(:url)
    |> parse_url()
  end

  @doc "Parses `postgres://user:password@host:port/database` (percent-encoding allowed)."
  @spec parse_url(String.t()) :: config()
  def parse_url(url) do
    uri = URI.parse(url)

    unless uri.scheme in ["postgres", "postgresql"] and is_binary(uri.host) and uri.host != "" do
      # Not the URL itself: it holds the password.
      raise ArgumentError,
            "DATABASE_URL must look like postgres://USER:PASS@HOST:PORT/DATABASE " <>
              "(scheme #{inspect(uri.scheme)}, host #{inspect(uri.host)})"
    end

    {user, password} =
      case String.split(uri.userinfo || "", ":", parts: 2) do
        [user, password] -> {URI.decode(user), URI.decode(password)}
        [user] -> {URI.decode(user), ""}
      end

    %{
      host: uri.host,
      port: uri.port || 5432,
      user: user,
      password: password,
      database: (uri.path || "/") |> String.trim_leading("/") |> URI.decode()
    }
  end

  @doc "`user@host:port/database`: the database as it may be shown (no password)."
  @spec describe() :: String.t()
  def describe do
    c = config()
    "#{c.user}@#{c.host}:#{c.port}/#{c.database}"
  rescue
    _ -> "(DATABASE_URL unusable)"
  end

  @doc """
  Opens a connection: `{:ok, conn}`, or `{:error, cause}` with the cause as
  text (`"tcp connect (10.1.254.2:5432): connection refused - :econnrefused"`,
  `"FATAL 28P01 (invalid_password) password authentication failed for user \\"app\\""`).
  """
  @spec connect() :: {:ok, pid()} | {:error, String.t()}
  def connect do
    c = config()

    options = [
      host: String.to_charlist(c.host),
      port: c.port,
      user: c.user,
      password: c.password,
      database: c.database,
      connect_timeout: @connect_timeout,
      as_binary: true
    ]

    try do
      case :pgsql.connect(options) do
        {:ok, conn} -> {:ok, conn}
        {:error, reason} -> {:error, connect_error(reason, c)}
      end
    catch
      :exit, reason -> {:error, connect_error(reason, c)}
    end
  end

  defp connect_error({:init, {:error, posix}}, c) when is_atom(posix),
    do: "tcp connect (#{c.host}:#{c.port}): #{posix_text(posix)} - #{inspect(posix)}"

  defp connect_error({kind, fields}, _c)
       when kind in [:authentication, :error_response] and is_list(fields),
       do: pg_error_text(fields)

  # The driver's handshake crashes on a socket error (a server that stops answering).
  defp connect_error({{:badmatch, {:error, posix}}, _stack}, c) when is_atom(posix),
    do:
      "#{c.host}:#{c.port}: #{posix_text(posix)} during the startup handshake - #{inspect(posix)}"

  defp connect_error(other, c), do: "#{c.host}:#{c.port}: #{inspect(redact(other, c.password))}"

  defp posix_text(:econnrefused), do: "connection refused"
  defp posix_text(:timeout), do: "timeout"
  defp posix_text(:ehostunreach), do: "host is unreachable"
  defp posix_text(:nxdomain), do: "non-existing domain"
  defp posix_text(other), do: to_string(:inet.format_error(other))

  defp pg_error_text(fields) do
    severity = field(fields, :severity)
    code = field(fields, :code)
    name = Map.get(@codes, code, "sqlstate")
    "#{severity} #{code} (#{name}) #{field(fields, :message)}"
  end

  defp field(fields, key) do
    case List.keyfind(fields, key, 0) do
      {^key, value} when is_atom(value) -> Atom.to_string(value)
      {^key, value} -> to_string(value)
      nil -> "?"
    end
  end

  @doc """
  Runs `fun.(conn)` on a new connection and closes it. When no connection can
  be made, logs the cause and raises `HelloPg.Repo.ConnectionError` (see the
  module doc).
  """
  @spec with_connection((pid() -> result)) :: result when result: var
  def with_connection(fun) do
    case connect() do
      {:ok, conn} ->
        try do
          fun.(conn)
        after
          close(conn)
        end

      {:error, cause} ->
        Logger.error(
          "HelloPg.Repo (#{describe()}) failed to connect: ** (HelloPg.Repo.ConnectionError) #{cause}"
        )

        raise ConnectionError, "connection not available and request was dropped from queue"
    end
  end

  @doc "Closes a connection (never fails)."
  @spec close(pid()) :: :ok
  def close(conn) do
    _ = catch_exit(fn -> :pgsql.terminate(conn) end)
    :ok
  end

  @doc """
  Runs `sql` (one or more statements, simple query protocol) and returns the
  driver's results. Raises `HelloPg.Repo.Error` if a statement fails (the
  driver has then already rolled back an open transaction).
  """
  @spec query!(pid(), String.t()) :: list()
  def query!(conn, sql) do
    case :pgsql.squery(conn, sql, @query_timeout) do
      {:ok, results} ->
        case Enum.find(results, &match?({:error, _}, &1)) do
          nil ->
            results

          {:error, fields} ->
            raise Error, message: pg_error_text(fields), code: field(fields, :code)
        end

      other ->
        raise Error, message: "unexpected reply from the driver: #{inspect(other)}", code: nil
    end
  end

  @doc "The rows of the last result of `sql`, values as strings (`nil` for NULL)."
  @spec rows!(pid(), String.t()) :: [[String.t() | nil]]
  def rows!(conn, sql) do
    case conn |> query!(sql) |> List.last() do
      {_command, _columns, rows} -> Enum.map(rows, fn row -> Enum.map(row, &value/1) end)
      _ -> []
    end
  end

  defp value(:null), do: nil
  defp value(v) when is_binary(v), do: v
  defp value(v) when is_list(v), do: to_string(v)

  @doc """
  Runs `fun.()` between `BEGIN` and `COMMIT`; on any exception rolls back and
  re-raises it.
  """
  @spec transaction(pid(), (() -> result)) :: result when result: var
  def transaction(conn, fun) do
    query!(conn, "BEGIN")

    try do
      result = fun.()
      query!(conn, "COMMIT")
      result
    rescue
      e ->
        # The driver may already have rolled back (a failed statement): a second
        # ROLLBACK only draws a warning.
        _ = catch_exit(fn -> :pgsql.squery(conn, "ROLLBACK", @query_timeout) end)
        reraise e, __STACKTRACE__
    end
  end

  @doc "`value` as an SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."
  @spec quote(String.t()) :: String.t()
  def quote(value) when is_binary(value) do
    if String.contains?(value, <<0>>), do: raise(ArgumentError, "SQL strings cannot contain NUL")
    "'" <> String.replace(value, "'", "''") <> "'"
  end

  @doc """
  Adds a primary `:logger` filter that replaces the database password in every
  log event (crash reports of the driver's processes include their state).
  """
  @spec install_log_filter() :: :ok
  def install_log_filter do
    password =
      try do
        config().password
      rescue
        _ -> ""
      end

    if password != "" do
      _ = :logger.remove_primary_filter(:hello_pg_redact)
      :ok = :logger.add_primary_filter(:hello_pg_redact, {&__MODULE__.redact_event/2, password})
    end

    :ok
  end

  @doc false
  def redact_event(event, password), do: redact(event, password)

  defp redact(term, password) when is_binary(term) do
    if term == password, do: @redacted, else: String.replace(term, password, @redacted)
  end

  defp redact(term, password) when is_list(term) do
    if term == String.to_charlist(password),
      do: String.to_charlist(@redacted),
      else: redact_list(term, password)
  end

  defp redact(term, password) when is_tuple(term),
    do: term |> Tuple.to_list() |> Enum.map(&redact(&1, password)) |> List.to_tuple()

  defp redact(%{} = term, password) when not is_struct(term),
    do: Map.new(term, fn {k, v} -> {k, redact(v, password)} end)

  defp redact(term, _password), do: term

  # Improper lists (iodata tails) are walked element by element.
  defp redact_list([head | tail], password),
    do: [redact(head, password) | redact_list(tail, password)]

  defp redact_list([], _password), do: []
  defp redact_list(tail, password), do: redact(tail, password)

  defp catch_exit(fun) do
    fun.()
  catch
    :exit, reason -> {:exit, reason}
  end
end
