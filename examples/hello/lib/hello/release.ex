defmodule Hello.Release do
  @moduledoc """
  Release tasks, run in a fresh VM without starting the application:

      bin/hello eval "Hello.Release.migrate()"
      bin/hello eval "IO.inspect(Hello.Release.applied())"

  Migrations are numbered `1..Hello.Build.migrations()`. Each one is applied
  exactly once per data dir: it is recorded in the dets store
  (`{n, applied_at_iso8601, by_version}`) and one line `"<n> <version>\\n"` is
  appended to `$HELLO_DATA_DIR/migrations.log`.
  """

  @app :hello

  @doc """
  Applies every migration not yet recorded and returns the numbers applied.

  Raises (so `bin/hello eval` exits non-zero) in the `bad_migration` variant,
  before applying anything.
  """
  @spec migrate() :: [pos_integer()]
  def migrate do
    load_app()
    version = Hello.Build.version()
    dir = Hello.Config.data_dir()

    applied =
      Hello.Store.with_writable(dir, fn tab ->
        if Hello.Build.variant() == "bad_migration" do
          raise "hello #{version} (bad_migration variant): migration failed, nothing applied"
        end

        for n <- 1..Hello.Build.migrations()//1, :dets.lookup(tab, n) == [] do
          run_migration(n)
          now = DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()
          :ok = :dets.insert(tab, {n, now, version})
          :ok = :dets.sync(tab)
          File.write!(Hello.Store.log_path(dir), "#{n} #{version}\n", [:append])
          IO.puts("hello #{version}: applied migration #{n}")
          n
        end
      end)

    if applied == [] do
      IO.puts("hello #{version}: no pending migrations (data dir #{dir})")
    else
      IO.puts("hello #{version}: applied #{length(applied)} migration(s) #{inspect(applied)}")
    end

    applied
  end

  @doc "Numbers of the migrations recorded as applied, sorted."
  @spec applied() :: [pos_integer()]
  def applied do
    case Hello.Store.read() do
      {:ok, records} -> Enum.map(records, &elem(&1, 0))
      {:error, reason} -> raise "cannot read migration store: #{inspect(reason)}"
    end
  end

  # A real app would change a schema here; the example only records it.
  defp run_migration(_n), do: :ok

  defp load_app do
    case Application.load(@app) do
      :ok -> :ok
      {:error, {:already_loaded, @app}} -> :ok
    end
  end
end
