#!/usr/bin/env bash
# Print the path of a Python >= 3.12 for the controller toolchain (ansible-core 2.20+ needs it).
# Looks at $AIRGAP_PYPI_PYTHON, then python3.13/python3.12/python3 on PATH, then pyenv's versions.
set -euo pipefail

# Print the interpreter behind $1 (the base one when $1 belongs to a virtualenv) if it is >= 3.12.
base_if_ok() {
    "$1" -c 'import sys
if sys.version_info < (3, 12):
    sys.exit(1)
print(getattr(sys, "_base_executable", sys.executable) if sys.prefix != sys.base_prefix else sys.executable)' 2>/dev/null
}

candidates=()
[ -n "${AIRGAP_PYPI_PYTHON:-}" ] && candidates+=("$AIRGAP_PYPI_PYTHON")
for name in python3.13 python3.12 python3; do
    command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
done
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    while IFS= read -r dir; do
        [ -x "$dir/bin/python3" ] && candidates+=("$dir/bin/python3")
    done < <(find "$root/versions" -mindepth 1 -maxdepth 1 -name '3.1[2-9]*' 2>/dev/null | sort -rV)
fi
for python in "${candidates[@]}"; do
    if base_if_ok "$python"; then
        exit 0
    fi
done
echo "No Python >= 3.12 found (ansible-core 2.20+ needs it on the controller)." >&2
echo "Install python3.12 or newer (e.g. apt-get install python3.12, or pyenv install 3.12)," >&2
echo "or point AIRGAP_PYPI_PYTHON at one." >&2
exit 1
