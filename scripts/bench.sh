#!/usr/bin/env bash
# make bench: build what is missing, then measure (scripts/bench.py). Reports; never fails on a number.
#   scripts/bench.sh [bench.py options, e.g. --only reads --files 1000]
# Needs wrk (the load generator): installed from Debian's packages with apt-get when missing and root on
# Debian/Ubuntu; elsewhere it says what to install and stops. The nginx yardstick runs in a bench container
# (Debian's nginx from the stand-in OS mirror, scripts/os_mirror.sh), not on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

readonly TOOLS=(wrk)
readonly PACKAGES=(wrk)

missing=()
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bench: installing ${PACKAGES[*]} (missing: ${missing[*]})" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    else
        echo "bench: missing ${missing[*]}: install wrk (Debian/Ubuntu: apt-get install ${PACKAGES[*]})" >&2
        exit 1
    fi
fi

scripts/ensure_docker.sh
scripts/venv.sh
.venv/bin/python scripts/build_bundle.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_bundle.py
.venv/bin/python scripts/build_mirror.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_mirror.py
scripts/build_images.sh debian12-systemd debian12-client
exec .venv/bin/python scripts/bench.py "$@"
