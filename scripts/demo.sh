#!/usr/bin/env bash
# The main job, for real: start a local fleet of 3 real sshd hosts (network/mount/pid namespaces) and a
# PostgreSQL host on their network, build the example Phoenix-shaped release (examples/hello_pg: data and
# migrations in PostgreSQL, DATABASE_URL a secret), deploy 0.1.0, upgrade to 0.2.0 (one new migration, run
# once, counted in the database), roll back, rotate nothing but show `env push`, and show what every host
# serves after each step. Needs root. KEEP_FLEET=1 leaves the fleet (and its database) running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-test-deps.sh   # PostgreSQL and Debian's erlang-p1-pgsql (the example's driver)
inv() { .venv/bin/invoke "$@"; }
cleanup() { if [ "${KEEP_FLEET:-0}" != 1 ]; then inv fleet.down --env local || true; fi; }
inv fleet.down --env local >/dev/null 2>&1 || true
inv fleet.up --hosts 3 --env local --database
trap cleanup EXIT

banner() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
# How many times each migration's body ran and committed, counted in the database (through h1's node).
counted() {
  inv eval --env local --hosts h1 --expression \
    'HelloPg.Repo.with_connection(&HelloPg.Repo.rows!(&1, "SELECT version, count(*) FROM migration_effects GROUP BY version ORDER BY version"))'
}

banner "deploy 0.1.0 (built here with mix release; migrations 1 and 2 run once, on h1, in PostgreSQL)"
HELLO_PG_VERSION=0.1.0 HELLO_PG_MIGRATIONS=2 inv deploy --env local
inv fleet.show --env local

banner "upgrade to 0.2.0 (migration 3 runs once, before any host switches)"
HELLO_PG_VERSION=0.2.0 HELLO_PG_MIGRATIONS=3 inv deploy --env local
inv fleet.show --env local

banner "run the migration on its own: nothing is applied twice (each migration's runs, counted in the database)"
inv migrate --env local
counted

banner "roll back to 0.1.0 (the old code, today's DATABASE_URL)"
inv rollback --env local
inv fleet.show --env local

banner "push the environment (unchanged values: no node restarts)"
inv env-push --env local

banner "status and history"
inv status --env local
inv history --env local --hosts h1
