#!/usr/bin/env bash
# The main job, for real: start a local fleet of 3 real sshd hosts (network/mount/pid namespaces) and a
# PostgreSQL host on their network, build the example Phoenix-shaped release (examples/hello_pg: data and
# migrations in PostgreSQL, DATABASE_URL a secret), deploy 0.1.0, upgrade to 0.2.0 (one new migration, run
# once, counted in the database), roll back, rotate nothing but show `env push`, and show what every host
# serves after each step. Needs root. KEEP_FLEET=1 leaves the fleet (and its database) running.
# Then, where machines can boot (root, namespaces, overlayfs; DEMO_MACHINES=0 skips, =1 insists): two booted
# Debian machines with systemd, prepared once by `deployer setup` as root, deployed to as the user deploy
# (node.service: systemd), one rebooted: the node comes back by itself. The machines' root filesystem is
# built once by scripts/machines-rootfs.sh (about 4 minutes) and cached in /var/cache/deployer-machines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-test-deps.sh   # PostgreSQL and Debian's erlang-p1-pgsql (the example's driver)
inv() { .venv/bin/invoke "$@"; }
cleanup() {
  if [ "${KEEP_FLEET:-0}" != 1 ]; then
    inv fleet.down --env local || true
    if [ -n "${MACHINES_UP:-}" ]; then inv fleet.down --env machines || true; fi
  fi
}
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

# --- production hosts: systemd machines, a non-root deploy user, a reboot ------------------------------------
case "${DEMO_MACHINES:-auto}" in
  0) exit 0 ;;
  1) ;;
  *) if ! .venv/bin/python -c 'from tests.harness.machines import check_environment; check_environment()'; then
       echo "(machines cannot boot here: skipping the systemd part; DEMO_MACHINES=1 to insist)"; exit 0
     fi ;;
esac
inv fleet.down --env machines >/dev/null 2>&1 || true

banner "production hosts: 2 booted Debian machines (systemd as PID 1), node.service: systemd, ssh as deploy"
MACHINES_UP=1
inv fleet.up --machines --service systemd --hosts 2 --env machines

banner "setup, once, as root: deploy_to for deploy, the account hello, the unit, a sudoers line for that unit only"
inv setup --env machines --user root
banner "setup again: nothing to change"
inv setup --env machines --user root

banner "deploy 0.1.0 as deploy: systemd runs the node as the app's own account hello, restarts it on failure and on boot"
HELLO_VERSION=0.1.0 HELLO_MIGRATIONS=2 inv deploy --env machines
inv status --env machines
# Who runs what: the node is hello's (it cannot read shared/node.env: the unit hands it a copy), the files deploy's.
inv exec --env machines --command 'ps -o user=,pid=,comm= -C beam.smp; stat -c "%U %a %n" "$(readlink -f ../../shared/node.env)"'

banner "reboot m1: deployer is not running; the node comes back by itself on current"
inv fleet.reboot --env machines --host m1
for _ in $(seq 1 60); do
  if inv fleet.show --env machines >/dev/null 2>&1; then break; fi
  sleep 1
done
inv fleet.show --env machines
inv status --env machines
