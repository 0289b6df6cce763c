#!/usr/bin/env bash
# The whole test suite: lint and types, the manual in a real browser, unit tests (on the oldest and the
# newest Python too), then end-to-end tests against real hosts: sshd hosts in namespaces, booted systemd
# machines, a PostgreSQL host, a podman build. As root the end-to-end tests must run:
# DEPLOYER_REQUIRE_FLEET=1 turns any skip of them into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }

step "setup"
bash scripts/setup.sh
if [ "$(id -u)" -eq 0 ]; then
  export DEPLOYER_REQUIRE_FLEET=1
  step "system packages and caches for the end-to-end suites"
  bash scripts/install-test-deps.sh       # PostgreSQL + Debian's Erlang driver (tests/harness/database.py)
  bash scripts/machines-rootfs.sh         # the booted machines' root filesystem (cached outside the repo)
  bash scripts/podman-setup.sh            # podman + a local Debian base image (container builds)
  bash scripts/install-lb-deps.sh         # HAProxy, socat, wrk (load-balancer draining, traffic benchmark)
fi

step "lint and types"
.venv/bin/ruff check deployer tests benchmarks tasks.py scripts
.venv/bin/ruff format --check deployer tests benchmarks tasks.py scripts
.venv/bin/mypy

step "the manual: strict build, every page in headless Chromium"
bash scripts/docs-check.sh

# The oldest and the newest Python the tool supports run the unit tests beside the main run (the rest of
# the suite runs on the machine's python3).
pythons=()
for version in 3.10 3.13; do
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 "/usr/bin/python$version"; do
    if [ -x "$candidate" ]; then pythons+=("$candidate"); break; fi
  done
done
versions_log=$(mktemp)
versions_pid=
if [ "${#pythons[@]}" -gt 0 ]; then
  step "unit tests under ${pythons[*]} (in the background)"
  PYTHONS="${pythons[*]}" bash scripts/test-python-versions.sh >"$versions_log" 2>&1 &
  versions_pid=$!
fi

step "unit and end-to-end tests"
status=0
.venv/bin/python -m pytest "$@" || status=$?

if [ -n "$versions_pid" ]; then
  step "unit tests under other Pythons"
  versions_status=0
  wait "$versions_pid" || versions_status=$?
  tail -n 30 "$versions_log"
  [ "$versions_status" -eq 0 ] || status=1
fi
step "done"
exit "$status"
