#!/usr/bin/env bash
# Make sure a Chromium that Playwright can drive is present. Order of preference:
# a system Chromium (Debian's package, with its headless shell, which headless runs use because it
# costs about a third less CPU per buyer), Playwright's own download (needs internet).
set -euo pipefail
venv_python="${1:-.venv/bin/python}"
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
apt_install() { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }

for candidate in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$candidate" ]; then
    if [ ! -x /usr/lib/chromium/chromium-headless-shell ] && can_apt; then
      echo "Installing Debian's chromium-headless-shell (lighter headless browser)..."
      apt_install chromium-headless-shell || echo "  not available; headless runs use the full Chromium"
    fi
    exit 0
  fi
done
if ls "${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}"/chromium*-*/chrome-linux*/chrome >/dev/null 2>&1; then
  exit 0
fi
if can_apt; then
  echo "Installing Debian's chromium (needed by the browser harness)..."
  apt_install chromium && { apt_install chromium-headless-shell || true; } && exit 0
fi
echo "No system Chromium; trying Playwright's own browser download..."
"$venv_python" -m playwright install chromium
