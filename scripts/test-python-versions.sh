#!/usr/bin/env bash
# Run the unit tests under every Python 3.10+ found on this machine (pyenv's and the system's), each in its
# own virtualenv under ${DEPLOYER_PYVENVS:-/tmp/deployer-pyvenvs}, so a 3.11-only construct cannot slip in.
#
#   scripts/test-python-versions.sh                 # tests/unit -q under every Python found
#   scripts/test-python-versions.sh tests/unit/test_cli.py -x
#   PYTHONS="python3.10 python3.13" scripts/test-python-versions.sh
#
# Exit status: 0 when every Python passed, 1 when one failed, 2 when no Python 3.10+ was found.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DEPLOYER_PYVENVS:-/tmp/deployer-pyvenvs}
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/unit -q -p no:cacheprovider)

found=()
if [ -n "${PYTHONS:-}" ]; then
    read -r -a found <<<"$PYTHONS"
else
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/python3 /usr/bin/python3 /usr/local/bin/python3; do
        [ -x "$candidate" ] && found+=("$candidate")
    done
fi

declare -A seen=()
failed=()
passed=()
for python in "${found[@]}"; do
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 10) else None' 2>/dev/null || true)
    [ -n "$version" ] && [ "$version" != None ] || continue
    [ -z "${seen[$version]:-}" ] || continue
    seen[$version]=1
    venv="$root/$version"
    echo "=== Python $version ($python)"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    # The project (editable) and what the unit tests import (of the docs toolchain only Markdown, whose
    # rendering of docs/errors.md the error-link tests check); not mkdocs itself.
    "$venv/bin/python" -m pip install -q -e . pytest pytest-mock pytest-timeout hypothesis pexpect markdown build "setuptools>=68" wheel \
        "tomli; python_version < '3.11'"
    if "$venv/bin/python" -m pytest "${args[@]}"; then
        passed+=("$version")
    else
        failed+=("$version")
    fi
done

if [ ${#passed[@]} -eq 0 ] && [ ${#failed[@]} -eq 0 ]; then
    echo "no Python 3.10 or newer found (looked in pyenv's versions and /usr/bin, /usr/local/bin)" >&2
    exit 2
fi
echo "passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
