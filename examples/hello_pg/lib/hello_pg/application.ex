defmodule HelloPg.Application do
  @moduledoc false
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    HelloPg.Repo.install_log_filter()
    config = HelloPg.Web.httpd_config()
    children = [%{id: :httpd, start: {:inets, :start, [:httpd, config, :stand_alone]}}]
    result = Supervisor.start_link(children, strategy: :one_for_one, name: HelloPg.Supervisor)

    # Like an Ecto repo, the node boots without its database: /health says
    # whether the database answers.
    Logger.info(
      "hello_pg #{HelloPg.Build.version()} listening on #{HelloPg.Config.bind()}:#{config[:port]}, " <>
        "database #{HelloPg.Repo.describe()}, os pid #{System.pid()}"
    )

    result
  end
end
