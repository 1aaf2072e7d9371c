#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver (for tests/test_leaderboard_browser.py) when they are missing.
# Idempotent and silent when both are already installed; needs root (or sudo) only when it has to install.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
if { have chromium || have chromium-browser; } && have chromedriver; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO="sudo -n"; else
        echo "install-chromium: chromium/chromedriver missing and not root (no sudo); install the Debian packages" \
             "'chromium' and 'chromium-driver' yourself" >&2
        exit 1
    fi
fi
echo "install-chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
if ! { have chromium || have chromium-browser; } || ! have chromedriver; then
    echo "install-chromium: apt-get finished but chromium or chromedriver is still not on PATH" >&2
    exit 1
fi
echo "install-chromium: $(chromium --version 2>/dev/null || chromium-browser --version); $(chromedriver --version)" >&2
