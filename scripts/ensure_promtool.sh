#!/usr/bin/env bash
# Make sure Debian's promtool is there for the metrics tests (tests/test_metrics.py, tests/test_metrics_server.py),
# which check the index's /metrics output with `promtool check metrics`.
#
#   scripts/ensure_promtool.sh
#
# - exits 0 at once when `promtool` is on PATH;
# - as root on Debian/Ubuntu: apt-get installs the prometheus package (promtool comes with it; without its
#   recommends, and a container's policy-rc.d keeps the server from starting);
# - otherwise, or when the install fails, says so and exits 1: those tests then report NOT RUN (skipped).
# Idempotent: running it again changes nothing.
set -euo pipefail

log() { printf 'ensure_promtool: %s\n' "$*" >&2; }

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "no promtool, and this script installs it only as root with apt-get: install Debian's prometheus yourself;"
    log "until then the metrics format tests are NOT RUN"
    exit 1
fi
log "installing prometheus (for promtool) with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get -qq update && apt-get -qq -y install --no-install-recommends prometheus >/dev/null; }; then
    log "apt-get could not install prometheus: the metrics format tests are NOT RUN"
    exit 1
fi
promtool --version >&2
