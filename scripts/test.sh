#!/usr/bin/env bash
# The test suite, as CI runs it: set up the machine, then run every test.
# Integration tests need root; with CI set, a missing tool or root fails them.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m pytest -q "$@"
