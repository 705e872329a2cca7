#!/usr/bin/env bash
# Set up (if needed), check the code and run the test suite: the README's test command.
# Usage: bash scripts/test.sh [pytest options, e.g. -x tests/test_cli.py]
#
# 1. Debian packages the tests need: graphviz (model graph), chromium (browser tests, driven by
#    Playwright; never `playwright install`), postgresql (server for the distributed-search
#    test). Run as root, this installs the missing ones; otherwise it prints the command to run.
#    Tests whose package is missing fail under CI=true and are skipped otherwise (tests/conftest.py).
# 2. bash scripts/setup.sh dev: .venv with the pinned requirements and the test tools.
# 3. ruff check src tests bench, then lint-imports (the import contracts in pyproject.toml).
# 4. pytest with the given options.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="graphviz chromium postgresql"

have_package() {  # the program a package provides, found where the tests look for it
  case "$1" in
    graphviz) command -v dot >/dev/null 2>&1 ;;
    chromium) command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
                || [ -x /usr/bin/chromium ] ;;
    postgresql) compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
                  || { command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; } ;;
  esac
}

missing=()
for package in $DEBIAN_PACKAGES; do
  have_package "$package" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing the Debian packages the tests need: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || echo "scripts/test.sh: apt-get update failed; trying the install anyway" >&2
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
      echo "scripts/test.sh: could not install ${missing[*]}; the tests that need them fail under CI=true" \
           "and are skipped otherwise" >&2
    fi
  else
    echo "scripts/test.sh: missing Debian packages: ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get install -y $DEBIAN_PACKAGES" >&2
    echo "scripts/test.sh: continuing; the tests that need them fail under CI=true and are skipped otherwise" >&2
  fi
fi

bash scripts/setup.sh dev

if ! .venv/bin/ruff check src tests bench; then
  echo "scripts/test.sh: ruff found the problems above (rules: [tool.ruff] in pyproject.toml)." >&2
  echo "  Fix them; those marked [*] are fixed by: .venv/bin/ruff check --fix src tests bench" >&2
  exit 1
fi
if ! .venv/bin/lint-imports --no-cache; then
  echo "scripts/test.sh: an import breaks a contract of [tool.importlinter] in pyproject.toml (see above)." >&2
  echo "  A module may import only from the layers below its own: move the code, or pass the" >&2
  echo "  object in from the layer above, instead of importing upwards." >&2
  exit 1
fi

exec .venv/bin/python -m pytest "$@"
