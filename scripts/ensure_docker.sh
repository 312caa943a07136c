#!/usr/bin/env bash
# Make sure a docker daemon is reachable for the Molecule tests.
#
#   scripts/ensure_docker.sh
#
# - exits 0 at once when `docker info` already works;
# - as root on Debian/Ubuntu: installs the missing packages among docker.io,
#   debootstrap and zstd (apt-get), starts dockerd (systemd unit when systemd is
#   PID 1, else a background dockerd logging to /var/log/airgap-pypi-dockerd.log)
#   and waits up to 30 s for `docker info`;
# - otherwise prints what to install and exits 1.
#
# Environment:
#   DOCKER   docker client to use (default: the first `docker` on PATH that can
#            talk to the daemon; a client newer than the daemon may not).
# Idempotent: running it again changes nothing.
set -euo pipefail

readonly PACKAGES=(docker.io debootstrap zstd)
readonly DOCKERD_LOG=/var/log/airgap-pypi-dockerd.log
readonly WAIT_SECONDS=30

log() { printf 'ensure_docker: %s\n' "$*" >&2; }

# Print the docker client that talks to the daemon; fail if none does.
find_docker() {
    local candidate
    if [[ -n "${DOCKER:-}" ]]; then
        "$DOCKER" info >/dev/null 2>&1 && { printf '%s\n' "$DOCKER"; return 0; }
        return 1
    fi
    while IFS= read -r candidate; do
        if "$candidate" info >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done < <(type -ap docker | awk '!seen[$0]++')
    return 1
}

if client=$(find_docker); then
    exit 0
fi

is_debian_like() {
    [[ -r /etc/os-release ]] || return 1
    # shellcheck disable=SC1091
    (. /etc/os-release && [[ " ${ID:-} ${ID_LIKE:-} " == *" debian "* || " ${ID:-} ${ID_LIKE:-} " == *" ubuntu "* ]])
}

if [[ "$(id -u)" -ne 0 ]] || ! is_debian_like || ! command -v apt-get >/dev/null 2>&1; then
    cat >&2 <<'EOF'
ensure_docker: no usable docker daemon, and this script can only set one up as root on Debian/Ubuntu.
ensure_docker: install and start yourself:
ensure_docker:   - a docker engine (Debian/Ubuntu: docker.io; or Docker CE), running, usable by this user
ensure_docker:   - debootstrap and zstd (to build the test images: scripts/build_images.sh)
ensure_docker: then check with `docker info`.
EOF
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -qq update
    apt-get -qq -y install --no-install-recommends "${missing[@]}" >/dev/null
fi

if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is already running; waiting for it to answer"
elif [[ "$(ps -p 1 -o comm= 2>/dev/null || true)" == systemd ]] && systemctl is-system-running >/dev/null 2>&1; then
    log "starting docker.service"
    systemctl start docker.service
else
    log "starting dockerd in the background (log: $DOCKERD_LOG)"
    # setsid + nohup: dockerd must outlive this script and its session.
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
    if client=$(find_docker); then
        log "docker is up ($client, server $("$client" version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        exit 0
    fi
    sleep 0.5
done

log "docker (client: ${DOCKER:-docker on PATH}) did not answer within ${WAIT_SECONDS} s; see $DOCKERD_LOG"
exit 1
