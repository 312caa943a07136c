#!/usr/bin/env bash
# Create .venv with the hash-locked controller toolchain (requirements/toolchain.txt).
# Skips the work when .venv already matches the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=requirements/toolchain.txt
stamp=.venv/.toolchain-$(sha256sum "$lock" | cut -c1-16)
if [ -f "$stamp" ]; then
    exit 0
fi
python=$(scripts/find_python.sh)
echo "==> toolchain: creating .venv with $python ($("$python" --version))"
# This machine's pip configuration and PIP_* variables must not leak into the toolchain.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^(PIP|UV)_' || true)
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
rm -rf .venv
"$python" -m venv .venv
# uv first, checked by pip against its hashes in the same lock; then uv installs the whole lock with the same
# hash checks, byte-compiling on both cores: about 30 s where pip took 80 s. Compiled here, not at first import:
# with PYTHONDONTWRITEBYTECODE set (as on this kind of machine), every ansible process would compile again all it
# imports.
awk '/^uv==/ {found = 1} found {print} found && !/\\$/ {exit}' "$lock" >.venv/uv-lock.txt
grep -q -- '--hash=sha256:' .venv/uv-lock.txt || { echo "scripts/venv.sh: no hashed uv entry in $lock" >&2; exit 1; }
.venv/bin/python -m pip install --quiet --require-hashes --no-deps -r .venv/uv-lock.txt
.venv/bin/uv pip install --quiet --no-config --compile-bytecode --python .venv/bin/python --require-hashes --no-deps \
    -r "$lock"
touch "$stamp"
echo "==> toolchain: $(.venv/bin/ansible --version | head -1), $(NO_COLOR=1 PATH="$PWD/.venv/bin:$PATH" .venv/bin/molecule --version 2>/dev/null | head -1 | tr -s ' ')"
