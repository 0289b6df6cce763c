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
  step "system packages for the end-to-end suites"
  bash scripts/install-test-deps.sh       # PostgreSQL + Debian's Erlang driver (tests/harness/database.py)
  bash scripts/install-lb-deps.sh         # HAProxy, socat, wrk (load-balancer draining, traffic benchmark)
  # Chromium for the manual's check, installed now so that no apt run overlaps the caches' below.
  command -v chromium >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends chromium >/dev/null
  # The two slow caches (minutes when cold: mostly downloading and unpacking Debian) are made while lint,
  # the manual and the unit tests run. Podman's base image is made from the machines' root filesystem, so
  # one after the other. apt calls elsewhere wait for dpkg's lock rather than fail.
  caches_log=$(mktemp /tmp/deployer-caches.XXXXXX)
  (
    bash scripts/machines-rootfs.sh       # the booted machines' root filesystem (cached outside the repo)
    bash scripts/podman-setup.sh          # podman + a local Debian base image (container builds)
  ) >"$caches_log" 2>&1 &
  caches_pid=$!
fi

step "lint and types"
.venv/bin/ruff check deployer tests benchmarks tasks.py scripts
.venv/bin/ruff format --check deployer tests benchmarks tasks.py scripts
.venv/bin/mypy

step "the manual: strict build, every page in headless Chromium"
bash scripts/docs-check.sh

step "unit tests on the oldest and the newest supported Python"
# (The rest of the suite runs on the machine's python3, 3.11 on Debian 12.)
pythons=()
for version in 3.10 3.13; do
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python3 "/usr/bin/python$version"; do
    if [ -x "$candidate" ]; then pythons+=("$candidate"); break; fi
  done
done
if [ "${#pythons[@]}" -gt 0 ]; then
  PYTHONS="${pythons[*]}" bash scripts/test-python-versions.sh
else
  echo "no Python 3.10 or 3.13 on this machine: only $(python3 --version) runs the unit tests"
fi

if [ -n "${caches_pid:-}" ]; then
  step "waiting for the machines' root filesystem and podman's base image"
  if ! wait "$caches_pid"; then
    cat "$caches_log" >&2
    echo "building the caches for the end-to-end suites failed (log above)" >&2
    exit 1
  fi
  tail -n 3 "$caches_log"
fi

step "unit and end-to-end tests"
exec .venv/bin/python -m pytest "$@"
