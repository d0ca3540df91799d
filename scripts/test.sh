#!/usr/bin/env bash
# Installs everything the tests need, then runs them (pytest). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh full
. .venv/bin/activate
exec python -m pytest -q -rs "$@"
