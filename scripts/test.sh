#!/usr/bin/env bash
# Sets up .venv and runs every gate: ruff, mypy --strict, then pytest (real Redis, real llama.cpp).
# The first run builds llama-cpp-python from source (about 7 minutes on 2 cores); pip caches
# the wheel, so later runs install in seconds. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[llama,mlx,gateway,pull,embedded,dev]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# mypy checks the installed layout: the source folders become hostler.* only when installed.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$tmp/site" .
(cd "$tmp" && MYPYPATH="$tmp/site" "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" -p hostler)
.venv/bin/python -m pytest -p no:cacheprovider "$@"
