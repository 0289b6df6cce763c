import Config

# Evaluated at every boot of the release, `bin/hello_pg eval ...` included, as
# in a Phoenix app. The URL is a secret: it is only kept in the application
# environment and never printed (HelloPg.Repo shows user@host:port/database).
if config_env() == :prod do
  database_url =
    System.get_env("DATABASE_URL") ||
      raise """
      environment variable DATABASE_URL is missing.
      For example: postgres://USER:PASS@HOST:5432/DATABASE
      """

  config :hello_pg, HelloPg.Repo, url: database_url
end
