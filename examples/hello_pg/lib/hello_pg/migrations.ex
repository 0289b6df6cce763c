defmodule HelloPg.Migrations do
  @moduledoc """
  The schema, as numbered migrations (Ecto-style timestamps as versions).

  Every migration also inserts one row into `migration_effects` inside its own
  transaction, so "each migration ran exactly once" is countable in the
  database: a migration applied twice leaves two rows, a rolled-back one none.

  A build knows the first `HelloPg.Build.migrations()` of them. In the
  `bad_migration` variant the newest one does its work and then raises, so
  its transaction must roll back: no column, no effect row, no version.
  """

  alias HelloPg.Repo

  @type migration :: {pos_integer(), String.t(), [String.t()]}

  @all [
    {20_240_101_000_001, "create_migration_effects",
     [
       """
       CREATE TABLE migration_effects (
         id bigserial PRIMARY KEY,
         version bigint NOT NULL,
         name text NOT NULL,
         app_version text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )
       """
     ]},
    {20_240_101_000_002, "create_items",
     [
       """
       CREATE TABLE items (
         key text PRIMARY KEY,
         value text NOT NULL,
         written_by text NOT NULL,
         updated_at timestamptz NOT NULL DEFAULT now()
       )
       """
     ]},
    {20_240_101_000_003, "add_items_note", ["ALTER TABLE items ADD COLUMN note text"]}
  ]

  @doc "The migrations this build knows, oldest first."
  @spec all() :: [migration()]
  def all, do: Enum.take(@all, HelloPg.Build.migrations())

  @doc "Runs one migration's statements on `conn` (inside the caller's transaction)."
  @spec run(pid(), migration(), String.t()) :: :ok
  def run(conn, {version, name, statements}, app_version) do
    Enum.each(statements, &Repo.query!(conn, &1))

    Repo.query!(
      conn,
      "INSERT INTO migration_effects (version, name, app_version) " <>
        "VALUES (#{version}, #{Repo.quote(name)}, #{Repo.quote(app_version)})"
    )

    if HelloPg.Build.variant() == "bad_migration" and version == newest() do
      raise "migration #{version} #{name} raised on purpose (bad_migration variant of hello_pg #{app_version})"
    end

    :ok
  end

  defp newest, do: all() |> List.last() |> elem(0)
end
