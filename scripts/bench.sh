#!/usr/bin/env bash
# make bench: build what is missing, then measure (scripts/bench.py). Reports; never fails on a number.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
scripts/ensure_docker.sh
scripts/venv.sh
.venv/bin/python scripts/build_bundle.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_bundle.py
scripts/build_images.sh debian12-systemd
exec .venv/bin/python scripts/bench.py "$@"
