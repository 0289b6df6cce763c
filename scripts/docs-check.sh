#!/usr/bin/env bash
# The manual in a real browser: builds the site (mkdocs build --strict), serves it on 127.0.0.1 and loads
# every page in headless Chromium (Debian's package), failing on console errors, images or diagrams that do
# not render, code blocks cut off at 1280 px, and internal links or anchors that do not resolve.
# Extra arguments go to scripts/docs_check.py, e.g. --screenshots DIR to look at every page and diagram.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "docs-check: chromium is not installed (as root: apt-get install chromium)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends chromium >/dev/null
fi
if [ ! -x .venv/bin/mkdocs ] || ! .venv/bin/python -c 'import websocket' 2>/dev/null; then
  bash scripts/setup.sh
fi
# Not --quiet: it hides the warnings that --strict counts (a broken link would pass). Output only on failure.
if ! build_log=$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict 2>&1); then
  printf '%s\n' "$build_log" >&2
  exit 1
fi
exec .venv/bin/python scripts/docs_check.py --site site --chromium "$(command -v chromium)" "$@"
