#!/usr/bin/env bash
# System packages the PostgreSQL end-to-end tests need (tests/harness/database.py,
# examples/hello_pg): PostgreSQL 15 server and client, and Debian's pure-Erlang
# PostgreSQL driver, which `mix release` copies from the system OTP lib dir into
# the example's release. Idempotent: installs only what is missing; needs root to install.
set -euo pipefail

packages=(postgresql erlang-p1-pgsql)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
# policy-rc.d: the package must not start (or later restart) a system-wide cluster; the
# tests run their own server per run, in their own network namespace.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  created_policy=1
fi
trap 'if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
# Other jobs on the machine may hold the dpkg lock for a while: wait for it instead of failing.
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
