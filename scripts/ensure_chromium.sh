#!/usr/bin/env bash
# Make sure a Chromium that Playwright can drive is present. Order of preference:
# a system Chromium (Debian's package), Playwright's own download (needs internet).
set -euo pipefail
venv_python="${1:-.venv/bin/python}"

for candidate in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$candidate" ]; then exit 0; fi
done
if ls "${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}"/chromium*-*/chrome-linux*/chrome >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian's chromium (needed by the browser harness)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && exit 0
fi
echo "No system Chromium; trying Playwright's own browser download..."
"$venv_python" -m playwright install chromium
