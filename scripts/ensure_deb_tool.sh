#!/usr/bin/env bash
# Make sure a Debian tool some tests need is on PATH: promtool for the metrics format tests (tests/test_metrics.py,
# tests/test_metrics_server.py: `promtool check metrics`), rsync for the replica pull tests (tests/test_generation.py).
#
#   scripts/ensure_deb_tool.sh COMMAND PACKAGE     e.g. promtool prometheus, rsync rsync
#
# - exits 0 at once when COMMAND is on PATH;
# - as root on Debian/Ubuntu: apt-get installs PACKAGE (without its recommends; a container's policy-rc.d keeps a
#   packaged server from starting);
# - otherwise, or when the install fails, says so and exits 1: the tests that need it then report NOT RUN (skipped).
# Idempotent: running it again changes nothing.
set -euo pipefail

if [[ $# -ne 2 || ! "$1" =~ ^[a-z0-9][a-z0-9._+-]*$ || ! "$2" =~ ^[a-z0-9][a-z0-9.+-]*$ ]]; then
    echo "usage: scripts/ensure_deb_tool.sh COMMAND PACKAGE (lower-case names)" >&2
    exit 2
fi
command_name=$1 package=$2
log() { printf 'ensure_deb_tool: %s\n' "$*" >&2; }

if command -v "$command_name" >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    log "no $command_name, and this script installs it only as root with apt-get: install Debian's $package yourself"
    exit 1
fi
log "installing $package (for $command_name) with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get -qq update && apt-get -qq -y install --no-install-recommends "$package" >/dev/null; }; then
    log "apt-get could not install $package"
    exit 1
fi
command -v "$command_name" >&2
