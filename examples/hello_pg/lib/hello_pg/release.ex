defmodule HelloPg.Release do
  @moduledoc """
  Release tasks, shaped like the `Release` module `mix phx.gen.release` writes:

      bin/hello_pg eval "HelloPg.Release.migrate()"
      bin/hello_pg eval "IO.inspect(HelloPg.Release.applied())"

  `migrate/0` runs in a fresh VM without starting the application. It holds a
  PostgreSQL advisory lock for the whole run, so two concurrent runs (two
  hosts, two deploys) apply each migration once: the second one waits, then
  finds nothing pending. Each migration runs in its own transaction together
  with its row in `schema_migrations` (Ecto's table: `version`,
  `inserted_at`), so a migration that fails leaves no trace and is retried by
  the next run.
  """

  require Logger
  alias HelloPg.{Migrations, Repo}

  @app :hello_pg
  # Any constant, the same in every version of the app.
  @lock_key 4_817_202_401

  @doc "Applies every pending migration; returns the versions applied."
  @spec migrate() :: [pos_integer()]
  def migrate do
    start_deps()
    app_version = HelloPg.Build.version()

    Repo.with_connection(fn conn ->
      Repo.query!(conn, "SELECT pg_advisory_lock(#{@lock_key})")

      try do
        ensure_schema_migrations(conn)
        done = applied(conn)
        pending = Enum.reject(Migrations.all(), fn {version, _, _} -> version in done end)

        if pending == [] do
          Logger.info("Migrations already up")
        end

        for {version, name, _} = migration <- pending do
          Logger.info("== Running #{version} HelloPg.Migrations.#{name} forward")
          started = System.monotonic_time(:millisecond)

          Repo.transaction(conn, fn ->
            Migrations.run(conn, migration, app_version)
            Repo.query!(conn, "INSERT INTO schema_migrations (version) VALUES (#{version})")
          end)

          elapsed = System.monotonic_time(:millisecond) - started
          Logger.info("== Migrated #{version} in #{elapsed / 1000}s")
          version
        end
      after
        # Also released when the connection closes; explicit for a long-lived caller.
        _ = Repo.query!(conn, "SELECT pg_advisory_unlock(#{@lock_key})")
      end
    end)
  end

  @doc "The versions recorded in `schema_migrations`, oldest first."
  @spec applied() :: [pos_integer()]
  def applied do
    start_deps()
    Repo.with_connection(&applied/1)
  end

  @doc false
  @spec applied(pid()) :: [pos_integer()]
  def applied(conn) do
    if Repo.rows!(conn, "SELECT to_regclass('public.schema_migrations') IS NOT NULL") == [["t"]] do
      conn
      |> Repo.rows!("SELECT version FROM schema_migrations ORDER BY version")
      |> Enum.map(fn [v] -> String.to_integer(v) end)
    else
      []
    end
  end

  defp ensure_schema_migrations(conn) do
    Repo.query!(conn, """
    CREATE TABLE IF NOT EXISTS schema_migrations (
      version bigint PRIMARY KEY,
      inserted_at timestamp(0) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
    )
    """)
  end

  # What Ecto.Migrator.with_repo starts: the driver and what it needs; not the app.
  defp start_deps do
    case Application.load(@app) do
      :ok -> :ok
      {:error, {:already_loaded, @app}} -> :ok
    end

    for app <- [:logger, :crypto, :p1_pgsql], do: {:ok, _} = Application.ensure_all_started(app)
    Repo.install_log_filter()
  end
end
