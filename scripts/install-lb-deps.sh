#!/usr/bin/env bash
# Debian packages the load-balancer tests and the traffic benchmark need (issue 16): HAProxy in front of
# the fleet, socat to talk to its runtime API (on the balancer host), wrk to drive load through it.
set -euo pipefail
missing=()
for pkg in haproxy socat wrk; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq || true
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged service is not wanted: the harness starts its own haproxy per test.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
