#!/usr/bin/env bash
# Installs everything deployer's demo and tests need on a fresh Debian machine (as root), idempotently:
# OpenSSH server, Erlang/Elixir (to build the example release), curl, iproute2; a virtualenv with the
# project and its dev tools in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for cmd in sshd:openssh-server ssh:openssh-client erl:erlang elixir:elixir curl:curl ip:iproute2 \
           nsenter:util-linux rebar3:rebar3 git:git bwrap:bubblewrap; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${cmd%%:*}" ] || need+=("${cmd##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" python3-venv >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'
