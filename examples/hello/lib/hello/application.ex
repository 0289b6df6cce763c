defmodule Hello.Application do
  @moduledoc false
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    config = Hello.Web.httpd_config()

    children =
      [
        %{id: :httpd, start: {:inets, :start, [:httpd, config, :stand_alone]}}
      ] ++ crash_timer(Hello.Build.variant())

    result = Supervisor.start_link(children, strategy: :one_for_one, name: Hello.Supervisor)

    Logger.info(
      "hello #{Hello.Build.version()} (variant #{inspect(Hello.Build.variant())}) " <>
        "listening on #{Hello.Config.bind()}:#{config[:port]}, os pid #{System.pid()}"
    )

    result
  end

  # The `crash` variant halts the VM about two seconds after boot.
  defp crash_timer("crash") do
    [
      Supervisor.child_spec(
        {Task,
         fn ->
           Process.sleep(2_000)
           Logger.error("hello: crash variant, halting")
           System.halt(1)
         end},
        id: :crash_timer
      )
    ]
  end

  defp crash_timer(_), do: []

  @doc """
  The `dies_after_health` variant: the first answer to `/health` is healthy, and the VM halts
  `HELLO_DIE_AFTER_MS` milliseconds later (default 1000), read at run time so one build serves
  every timing.
  """
  @spec die_later() :: :ok
  def die_later do
    if :persistent_term.get(:hello_dying, false) == false do
      :persistent_term.put(:hello_dying, true)
      delay = String.to_integer(System.get_env("HELLO_DIE_AFTER_MS", "1000"))

      spawn(fn ->
        Process.sleep(delay)
        System.halt(1)
      end)
    end

    :ok
  end
end
