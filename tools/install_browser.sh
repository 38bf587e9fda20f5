#!/bin/sh
# Installs Debian's chromium for the editor's browser test, once. Playwright drives it through
# executable_path; `playwright install` (which downloads its own browsers) is never used.
set -e
for bin in chromium chromium-browser; do
    if command -v "$bin" >/dev/null 2>&1; then
        echo "chromium present: $(command -v "$bin")"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
command -v chromium
