import Config

# Nothing is configured at build time. Everything the running node needs
# (port, bind address, data dir, greeting, secret) is read from the OS
# environment at run time by Hello.Config, so one build can be deployed
# anywhere. The only build-time knobs are HELLO_VERSION, HELLO_VARIANT and
# HELLO_MIGRATIONS (see mix.exs and Hello.Build).
