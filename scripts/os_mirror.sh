#!/usr/bin/env bash
# A stand-in for the OS repositories of a private network, for the tests of the optional front server (nginx):
# a flat apt repository with the .deb files the test image lacks for nginx, built once from Debian's mirror and
# cached outside the repository. The test hosts themselves never reach the internet: `attach` copies the
# repository into a container and points its apt at it alone, as an air-gapped host points at its local mirror.
#
#   scripts/os_mirror.sh build            build the repository when it is missing or its image's recipe changed; prints its path
#   scripts/os_mirror.sh path             print the path without building
#   scripts/os_mirror.sh attach CONTAINER copy it into CONTAINER (/srv/os-mirror), make it apt's only source
#
# Environment: AIRGAP_PYPI_CACHE (as scripts/build_images.sh), AIRGAP_PYPI_IMAGE_PREFIX, AIRGAP_PYPI_OS_MIRROR
# (the repository's directory; default CACHE/os-mirror/debian12), DOCKER.
set -euo pipefail

readonly IMAGE=${AIRGAP_PYPI_IMAGE_PREFIX:-airgap-pypi}/debian12-systemd:latest
# nginx for the front server and the replicas; python3-apt for Ansible's apt module, which installs it when missing;
# rsync, openssh-server and openssh-client for the replicas' pull from the writer (procps, which the writer also
# needs, comes with every Debian image);
# haproxy and keepalived for the balancers.
readonly PACKAGES=(nginx python3-apt rsync openssh-server openssh-client haproxy keepalived)
CACHE_DIR=${AIRGAP_PYPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airgap-pypi}
readonly MIRROR=${AIRGAP_PYPI_OS_MIRROR:-$CACHE_DIR/os-mirror/debian12}
readonly DOCKER=${DOCKER:-docker}

say() { echo "os_mirror: $*" >&2; }
die() { say "$*"; exit 1; }

build() {
    local recipe stamp
    # Keyed by the image's recipe (scripts/build_images.sh labels each image with its hash), not its id: an image
    # imported again from the cached rootfs gets a new id but holds the same packages, so the mirror still fits.
    recipe=$("$DOCKER" image inspect --format '{{index .Config.Labels "airgap-pypi.recipe"}}' "$IMAGE" 2>/dev/null) ||
        die "image $IMAGE is missing: run scripts/build_images.sh debian12-systemd first"
    [ -n "$recipe" ] || die "image $IMAGE has no airgap-pypi.recipe label: rebuild it with scripts/build_images.sh --force debian12-systemd"
    stamp="recipe=$recipe packages=${PACKAGES[*]}"
    if [ -s "$MIRROR/Packages" ] && [ "$(cat "$MIRROR/STAMP" 2>/dev/null)" = "$stamp" ]; then
        echo "$MIRROR"
        return
    fi
    say "downloading ${PACKAGES[*]} and what $IMAGE lacks for them (a container on docker's default network)"
    local work
    mkdir -p "${MIRROR%/*}"
    work=$(mktemp -d "${MIRROR%/*}/.build.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$work'" EXIT
    "$DOCKER" run --rm -v "$work:/out" "$IMAGE" sh -ec "
        apt-get update -q >/dev/null
        apt-get install -q -y --download-only --no-install-recommends ${PACKAGES[*]} >/dev/null
        cp /var/cache/apt/archives/*.deb /out/
        cd /out
        # The flat repository's index, as dpkg-scanpackages writes it, with the image's own dpkg-deb.
        for deb in *.deb; do
            dpkg-deb --field \"\$deb\"
            echo \"Filename: ./\$deb\"
            echo \"Size: \$(stat -c %s \"\$deb\")\"
            echo \"SHA256: \$(sha256sum \"\$deb\" | cut -d ' ' -f 1)\"
            echo
        done >Packages
        chown -R $(id -u):$(id -g) /out" || die "could not download ${PACKAGES[*]} from Debian's mirror"
    [ -s "$work/Packages" ] || die "no Packages index was written in $work"
    echo "$stamp" >"$work/STAMP"
    rm -rf "$MIRROR" && mv "$work" "$MIRROR"
    trap - EXIT
    say "$(find "$MIRROR" -name '*.deb' | wc -l) packages in $MIRROR"
    echo "$MIRROR"
}

attach() {
    local container=$1
    [ -s "$MIRROR/Packages" ] || die "no OS mirror at $MIRROR: run scripts/os_mirror.sh build"
    "$DOCKER" exec "$container" mkdir -p /srv/os-mirror
    "$DOCKER" cp "$MIRROR/." "$container:/srv/os-mirror/"
    # The container's own sources name Debian's mirror on the internet, which the test network cannot reach.
    "$DOCKER" exec "$container" sh -ec '
        [ ! -f /etc/apt/sources.list ] || mv /etc/apt/sources.list /etc/apt/sources.list.internet
        echo "deb [trusted=yes] file:/srv/os-mirror ./" >/etc/apt/sources.list.d/os-mirror.list
        apt-get update -q >/dev/null'
    say "$container uses the OS mirror in /srv/os-mirror"
}

case ${1:-} in
    build) build ;;
    path) echo "$MIRROR" ;;
    attach) [ $# -eq 2 ] || die "usage: $0 attach CONTAINER"; attach "$2" ;;
    *) die "usage: $0 build | path | attach CONTAINER" ;;
esac
