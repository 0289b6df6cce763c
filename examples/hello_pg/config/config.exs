import Config

# Nothing is configured at build time: DATABASE_URL (a secret) and the HTTP
# port are read at boot by config/runtime.exs and HelloPg.Config, so one build
# runs anywhere. The build-time knobs are HELLO_PG_VERSION, HELLO_PG_VARIANT and
# HELLO_PG_MIGRATIONS (see mix.exs and HelloPg.Build).
