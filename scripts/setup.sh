#!/usr/bin/env bash
# Create .venv (if missing) and install medclf with its pinned requirements.
# Usage: bash scripts/setup.sh [dev]    ("dev" adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
requirements=requirements.txt
[ "${1:-}" = "dev" ] && requirements=requirements-dev.txt
# torch==2.13.0 is pinned in requirements.txt: never let pip resolve a newer (CUDA) torch
.venv/bin/python -m pip install --quiet -r "$requirements"
.venv/bin/python -m pip install --quiet --no-deps -e .
