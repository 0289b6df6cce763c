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
end
