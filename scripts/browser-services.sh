#!/usr/bin/env bash
# Installs what the status-page tests use: Debian's chromium (driven headless by
# tests/browser.py with --dump-dom and --screenshot; no webdriver, no node).
# Idempotent: installs (and runs apt-get update) only when chromium is missing.
set -euo pipefail

log() { echo "browser-services: $*" >&2; }

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  log "chromium present: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -1)"
  exit 0
fi
log "installing chromium"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
log "installed: $(chromium --version 2>/dev/null | head -1)"
