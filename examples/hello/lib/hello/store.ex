defmodule Hello.Store do
  @moduledoc """
  The migration store: a `:dets` table at `$HELLO_DATA_DIR/hello_migrations.dets`
  holding `{n, applied_at_iso8601, by_version}` for every applied migration.

  The table is only ever open for the duration of one call. The running node
  opens it read-only, reads and closes it again, so a separate VM (`bin/hello
  eval "Hello.Release.migrate()"`) can write it while the node is up.
  """

  @file_name "hello_migrations.dets"
  @log_name "migrations.log"

  @type record :: {pos_integer(), String.t(), String.t()}

  @doc "Path of the dets file in `dir` (default: the configured data dir)."
  @spec path(String.t()) :: String.t()
  def path(dir \\ Hello.Config.data_dir()), do: Path.join(dir, @file_name)

  @doc "Path of the append-only migration log in `dir`."
  @spec log_path(String.t()) :: String.t()
  def log_path(dir \\ Hello.Config.data_dir()), do: Path.join(dir, @log_name)

  @doc """
  Reads all records, sorted by migration number, without writing anything.

  Returns `{:ok, []}` when the data dir or the table does not exist yet, and
  `{:error, reason}` when the table cannot be opened (for instance while a
  migration VM holds it open for writing).
  """
  @spec read(String.t()) :: {:ok, [record()]} | {:error, term()}
  def read(dir \\ Hello.Config.data_dir()) do
    file = path(dir)

    if File.regular?(file) do
      read_existing(file, 5)
    else
      {:ok, []}
    end
  end

  defp read_existing(file, attempts) do
    case :dets.open_file({__MODULE__, make_ref()},
           file: String.to_charlist(file),
           access: :read,
           repair: false
         ) do
      {:ok, tab} ->
        try do
          {:ok, tab |> :dets.match_object(:_) |> Enum.sort()}
        after
          :dets.close(tab)
        end

      {:error, _reason} when attempts > 1 ->
        Process.sleep(100)
        read_existing(file, attempts - 1)

      {:error, reason} ->
        {:error, reason}
    end
  end

  @doc """
  Opens the table read-write (creating the data dir and the table if needed),
  runs `fun.(table)` and always closes the table afterwards.
  """
  @spec with_writable(String.t(), (:dets.tab_name() -> result)) :: result when result: var
  def with_writable(dir \\ Hello.Config.data_dir(), fun) do
    File.mkdir_p!(dir)

    {:ok, tab} =
      :dets.open_file({__MODULE__, make_ref()},
        file: String.to_charlist(path(dir)),
        type: :set,
        access: :read_write,
        repair: true
      )

    try do
      fun.(tab)
    after
      :ok = :dets.close(tab)
    end
  end
end
