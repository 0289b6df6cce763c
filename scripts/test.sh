#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests against real sshd hosts in namespaces.
# As root the end-to-end tests must run: DEPLOYER_REQUIRE_FLEET=1 turns any skip of them into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -eq 0 ]; then
  export DEPLOYER_REQUIRE_FLEET=1
fi
.venv/bin/ruff check deployer tests benchmarks tasks.py
.venv/bin/mypy
# The manual: fails on a broken link, a missing page or a page left out of the nav (mkdocs.yml: strict).
# (Not --quiet: it hides the warnings that --strict counts.) Writes site/, which is git-ignored.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
exec .venv/bin/python -m pytest "$@"
