#!/usr/bin/env bash
# Make sure Debian's headless Chromium is there for the browse page test (molecule/default/tests/test_browse_chromium.py).
#
#   scripts/ensure_chromium.sh
#
# - exits 0 at once when `chromium` is on PATH;
# - as root on Debian/Ubuntu: apt-get installs chromium and fonts-dejavu-core (text in the screenshots);
# - otherwise, or when the install fails, says so and exits 1: the browser test then reports NOT RUN (skipped).
# Idempotent: running it again changes nothing.
set -euo pipefail

log() { printf 'ensure_chromium: %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "no chromium, and this script installs it only as root with apt-get: install Debian's chromium yourself;"
    log "until then the browse page test is NOT RUN"
    exit 1
fi
log "installing chromium and fonts-dejavu-core with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get -qq update && apt-get -qq -y install --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
    log "apt-get could not install chromium: the browse page test is NOT RUN"
    exit 1
fi
chromium --version >&2
