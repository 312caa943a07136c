#!/usr/bin/env bash
# make demo / make down: a local sandbox index provisioned by site.yml (inventories/sandbox).
#   scripts/sandbox.sh up     build what is missing, start the host container, run site.yml,
#                             upload a demo package, and print the index URL and a pip line
#   scripts/sandbox.sh down   remove the sandbox container and network
# AIRGAP_PYPI_DEMO_PORT (default 8080) is the port on 127.0.0.1 of this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_NOCOLOR=1
name=airgap-pypi-sandbox
network=airgap-pypi-sandbox
image=airgap-pypi/debian12-systemd:latest
port=${AIRGAP_PYPI_DEMO_PORT:-8080}
state=.sandbox

down() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
    echo "sandbox removed"
}

up() {
    scripts/ensure_docker.sh
    scripts/venv.sh
    .venv/bin/python scripts/build_bundle.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_bundle.py
    scripts/build_images.sh debian12-systemd
    mkdir -p "$state"
    [ -s "$state/password" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$state/password"
    chmod 600 "$state/password"
    if ! docker container inspect "$name" >/dev/null 2>&1; then
        if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)) != 0)"; then
            echo "Port $port on 127.0.0.1 is in use: set AIRGAP_PYPI_DEMO_PORT to a free port." >&2
            exit 1
        fi
        # A systemd host's docker run options, as the Molecule scenarios start theirs (molecule/shared/vars).
        local options run_options
        options=$(.venv/bin/python scripts/containers.py run-options systemd)
        mapfile -t run_options <<<"$options"
        docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
        echo "==> starting the sandbox host $name"
        docker run -d --name "$name" --hostname "$name" --network "$network" "${run_options[@]}" \
            -p "127.0.0.1:$port:8080" "$image" >/dev/null
        docker exec "$name" timeout 120 systemctl is-system-running --wait >/dev/null || true
    fi
    echo "==> ansible-playbook site.yml -i inventories/sandbox"
    AIRGAP_PYPI_SANDBOX_PASSWORD=$(cat "$state/password") ansible-playbook site.yml -i inventories/sandbox
    url="http://127.0.0.1:$port"
    version=1.0.0
    wheel=$(.venv/bin/python scripts/demo_wheel.py --out "$state/dist" --version "$version")
    if ! python3 -c "import urllib.request,sys; sys.exit('airgap_demo-$version' not in urllib.request.urlopen('$url/simple/airgap-demo/').read().decode())" 2>/dev/null; then
        echo "==> uploading the demo package with twine"
        TWINE_PASSWORD=$(cat "$state/password") twine upload --non-interactive --disable-progress-bar \
            --repository-url "$url/" -u demo "$wheel"
    fi
    echo "==> checking that pip installs from the index"
    target=$(mktemp -d)
    # Only the index may answer: no pip configuration or PIP_* variables of this machine.
    while IFS='=' read -r var _; do unset "$var"; done < <(env | grep -E '^PIP_' || true)
    PIP_CONFIG_FILE=/dev/null .venv/bin/python -m pip install --quiet --no-cache-dir --target "$target" \
        --index-url "$url/simple/" airgap-demo
    rm -rf "$target"
    cat <<MSG

The sandbox index is up.
  Index URL:  $url/simple/
  Install:    pip install --index-url $url/simple/ airgap-demo
  Upload:     TWINE_PASSWORD="\$(cat $state/password)" twine upload --repository-url $url/ -u demo dist/*
  Remove:     make down
MSG
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
