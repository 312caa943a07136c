#!/usr/bin/env bash
# Install the controller toolchain on an OFFLINE controller, from offline_artifacts/controller/
# (built on the connected side by `make bundle`): no network, no Galaxy, no python3-venv needed.
#
#   scripts/install_controller.sh [VENV]     (default VENV: .venv-controller in the repository)
#
# Verifies controller/SHA256SUMS, makes VENV with `python3 -m venv --without-pip`, installs the
# hash lock of that Python with pip run from its wheel (--no-index --require-hashes), installs the
# repacked collections with `ansible-galaxy collection install --offline` into the venv, and checks
# `ansible --version` and the collections. Python: $AIRGAP_PYPI_PYTHON, else python3.13, python3.12,
# python3 (>= 3.12, as ansible-core 2.20+ needs). This machine's pip configuration is ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=offline_artifacts/controller
venv=${1:-.venv-controller}
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac

die() { printf 'install_controller: error: %s\n' "$*" >&2; exit 1; }

[ -f "$bundle/SHA256SUMS" ] || die "$bundle/SHA256SUMS is missing: carry offline_artifacts/ from the connected side (\`make bundle\` builds it)"
if ! problems=$(cd "$bundle" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
    die "the controller bundle failed its checksum check: $(printf '%s' "$problems" | tr '\n' ';'). Carry offline_artifacts/ again."
fi

python=$(scripts/find_python.sh) || exit 1
tag=$("$python" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
lock=$bundle/locks/controller-$tag.txt
if [ ! -f "$lock" ]; then
    have=$(find "$bundle/locks" -maxdepth 1 -name 'controller-cp3*.txt' -printf '%f\n' | sed 's/^controller-//; s/[.]txt$//' | sort | tr '\n' ' ')
    die "$python is $tag; this bundle has controller locks for: $have. Point AIRGAP_PYPI_PYTHON at one of those, or build for $tag on the connected side (scripts/build_controller.py --targets ...)."
fi

# This machine's pip configuration and PIP_* variables must not leak in; no index at all.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^(PIP|UV)_' || true)
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_NO_INDEX=1

echo "==> controller toolchain: $python ($tag) -> $venv"
rm -rf "$venv"
"$python" -m venv --without-pip "$venv"
pip_wheel=$(sed -n 's/^pip==\([^ ]*\) .*/\1/p' "$lock")
pip_wheel=$(ls "$bundle"/wheels/pip-"$pip_wheel"-*.whl)
"$venv/bin/python" "$pip_wheel/pip" install --quiet --no-index --find-links "$bundle/wheels" \
    --require-hashes --no-deps --no-warn-script-location -r "$lock"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# ansible-core finds collections under ansible_collections/ on its Python's sys.path.
"$venv/bin/ansible-galaxy" collection install --offline --no-deps --force -p "$site" \
    "$bundle"/collections/*.tar.gz >/dev/null

echo "==> check"
"$venv/bin/ansible" --version | awk "NR == 1"
listed=$(cd / && ANSIBLE_COLLECTIONS_PATH=/nonexistent "$venv/bin/ansible-galaxy" collection list -p "$site" 2>/dev/null)
for c in ansible.posix community.general community.docker; do
    grep -q "^$c " <<<"$listed" || die "collection $c is not listed after the install"
    printf '  %s %s\n' "$c" "$(awk -v c="$c" '$1 == c { print $2 }' <<<"$listed")"
done
"$venv/bin/ansible" localhost -c local -m ansible.builtin.ping >/dev/null 2>&1 || die "ansible cannot run a module on this controller"
echo "installed; run playbooks with $venv/bin/ansible-playbook (or: . $venv/bin/activate)"
