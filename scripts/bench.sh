#!/usr/bin/env bash
# make bench: build what is missing, then measure (scripts/bench.py). Reports; never fails on a number.
#   scripts/bench.sh [bench.py options, e.g. --only reads --files 1000]
# Needs wrk (load generator) and nginx (the yardstick, run by bench.py as its own process on 127.0.0.1):
# installed from Debian's packages with apt-get when missing and root on Debian/Ubuntu; elsewhere it says
# what to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

readonly TOOLS=(wrk nginx)
readonly PACKAGES=(wrk nginx-light)

missing=()
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
        # Debian's package may enable and start its own nginx service (port 80) where systemd runs: the bench
        # never uses or changes it; `systemctl disable --now nginx` stops it if it is not wanted.
    else
        echo "bench: missing ${missing[*]}: install wrk and nginx (Debian/Ubuntu: apt-get install ${PACKAGES[*]})" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"  # nginx lives there on Debian

scripts/ensure_docker.sh
scripts/venv.sh
.venv/bin/python scripts/build_bundle.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_bundle.py
.venv/bin/python scripts/build_mirror.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_mirror.py
scripts/build_images.sh debian12-systemd debian12-client
exec .venv/bin/python scripts/bench.py "$@"
