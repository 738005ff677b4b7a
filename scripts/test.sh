#!/usr/bin/env bash
# Sets up .venv and runs every gate: ruff, mypy --strict, then pytest (real Redis, real llama.cpp).
# The first run builds llama-cpp-python from source (about 7 minutes on 2 cores); pip caches
# the wheel, so later runs install in seconds. Extra arguments go to pytest.
#
# --fast (first argument): the inner loop. ruff, then the tests not marked e2e, in under a
# minute: no mypy, no test that starts hostler processes or loads a real model. `.ci/run` runs
# everything (this script without --fast).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fast=false
if [ "${1:-}" = "--fast" ]; then
    fast=true
    shift
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[llama,mlx,gateway,pull,embedded,dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
selection=()
if "$fast"; then
    selection=(-m "not e2e")
else
    # mypy checks the installed layout: the source folders become hostler.* only when installed.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$tmp/site" .
    (cd "$tmp" && MYPYPATH="$tmp/site" "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p hostler)
fi
status=0
.venv/bin/python -m pytest -p no:cacheprovider ${selection[@]+"${selection[@]}"} "$@" || status=$?
if [ "$status" -eq 5 ]; then
    # pytest's "no tests ran": a selection that matched nothing is a failure, never a pass.
    echo "scripts/test.sh: pytest ran no tests (exit 5); the selection matched nothing" >&2
fi
exit "$status"
