#!/usr/bin/env bash
# Screenshot a page of the built site (bash scripts/docs.sh first) in headless Chromium,
# opened from file:// with background networking off.
# Usage: bash scripts/docs_screenshot.sh [SITE_DIR] [OUT.png] [PAGE.html] [WIDTHxHEIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(realpath "${1:-site}")
out=$(realpath -m "${2:-docs-home.png}")
page=${3:-index.html}
size=${4:-1280x900}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no chromium found: apt-get install -y chromium" >&2
  exit 3
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --window-size="${size/x/,}" --virtual-time-budget=3000 \
  --screenshot="$out" "file://$site/$page" >/dev/null 2>&1
echo "$out"
