#!/usr/bin/env bash
# Build the documentation site offline into site/ with warnings as errors.
# Usage: bash scripts/docs.sh [extra mkdocs build options, e.g. --site-dir /tmp/site]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export NO_MKDOCS_2_WARNING=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m mkdocs build --strict --clean "$@"
