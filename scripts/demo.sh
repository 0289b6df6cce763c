#!/usr/bin/env bash
# The main job, for real: start a local fleet of 3 real sshd hosts (network/mount/pid namespaces), build
# the example Elixir release, deploy 0.1.0, upgrade to 0.2.0 (one new migration, run once), roll back,
# and show what every host serves after each step. Needs root. KEEP_FLEET=1 leaves the fleet running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
inv() { .venv/bin/invoke "$@"; }
cleanup() { if [ "${KEEP_FLEET:-0}" != 1 ]; then inv fleet.down --env local || true; fi; }
inv fleet.down --env local >/dev/null 2>&1 || true
inv fleet.up --hosts 3 --env local
trap cleanup EXIT

banner() { printf '\n\033[1m### %s\033[0m\n' "$*"; }

banner "deploy 0.1.0 (built here with mix release; migrations 1 and 2 run once, on h1)"
HELLO_VERSION=0.1.0 HELLO_MIGRATIONS=2 inv deploy --env local
inv fleet.show --env local

banner "upgrade to 0.2.0 (migration 3 runs once, before any host switches)"
HELLO_VERSION=0.2.0 HELLO_MIGRATIONS=3 inv deploy --env local
inv fleet.show --env local

banner "run the migration on its own: nothing is applied twice"
inv migrate --env local
inv fleet.show --env local

banner "roll back to 0.1.0"
inv rollback --env local
inv fleet.show --env local

banner "status and history"
inv status --env local
inv history --env local --hosts h1
