#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2329  # functions called indirectly (spec_NAME, customize_NAME, traps)
# Build the local docker images the Molecule scenarios run in. No image registry is
# reachable: every image is a Debian rootfs made with debootstrap (from the host's
# Debian mirror) and loaded with `docker import`.
#
#   scripts/build_images.sh [--force] [--check] [NAME ...]   (default: all images)
#   scripts/build_images.sh --list
#
#   --force   rebuild with debootstrap even if the image or a cached rootfs exists
#   --check   after building, boot a throwaway container of each image and check it
#             (init up, firewall state, `python3 -m venv --without-pip`, docker restart;
#             on debian12-sysv an LSB script enabled with update-rc.d must start again)
#   --list    print the image names and their recipe hashes
#
# Images (tag airgap-pypi/NAME:latest, label airgap-pypi.recipe=HASH):
#   debian12-systemd  bookworm, systemd PID 1, python3 3.11 without venv/pip, firewalld (nftables)
#   debian12-sysv     bookworm, sysvinit PID 1, python3 3.11 without venv/pip
#   debian11-systemd  bullseye, systemd PID 1, python3 3.9 without venv/pip, iptables-persistent
#   debian13-systemd  trixie, systemd PID 1, python3 3.13 without venv/pip, nftables enabled at boot
#                     with a default-drop input chain in /etc/nftables.conf
#   debian12-client   bookworm, python3 3.11 + venv /opt/clients (pip, twine, on PATH),
#                     CMD sleep infinity (in a sh that exits on SIGTERM)
#   debian12-nm       bookworm, systemd PID 1, python3 3.11, NetworkManager (started at
#                     boot; leaves docker's eth0 and /etc/resolv.conf alone)
#   debian12-ifupdown bookworm, systemd PID 1, python3 3.11, ifupdown with
#                     networking.service enabled (interfaces.d sourced)
#   debian13-controller trixie, python3 3.13 only (no pip, no venv package, no ansible) and gpgv:
#                     the offline controller of the air-gap proof, run with --network none;
#                     CMD sleep infinity (in a sh that exits on SIGTERM)
#
# docker run options (no --privileged: it fails on the test machines): those of the image's kind
# of init in molecule/shared/vars/run-options.yml, which says why each is needed (systemd for the
# systemd images, sysv for debian12-sysv, none for debian12-client); print them with
#   .venv/bin/python scripts/containers.py run-options systemd
# --check runs the systemd images with exactly those; debian12-sysv with the fewest it needs
# (SYSV_RUN_OPTS: sysv's without --tmpfs /tmp and -e container=docker); the others with none.
#
# Recipe hash: sha256 of this script's "common" recipe section plus the image's own
# section (and, for debian12-client, molecule/requirements/client.txt). An image whose
# label matches is left alone; else a cached rootfs
#   ${AIRGAP_PYPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airgap-pypi}/images/NAME-HASH.tar.zst
# is imported; else the rootfs is built and cached. The newest two tarballs of each image
# are kept; delete the cache directory to reclaim the space.
#
# Environment:
#   AIRGAP_PYPI_DEBIAN_MIRROR  Debian mirror URL (default: the host's apt sources)
#   AIRGAP_PYPI_CACHE          cache directory (see above)
#   AIRGAP_PYPI_IMAGE_PREFIX   image repository prefix (default airgap-pypi)
#   DOCKER                     docker client (default: the first `docker` on PATH that
#                              talks to the daemon)
# Needs root (debootstrap, chroot) for a build; the up-to-date check does not.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SELF")
REPO_ROOT=$(dirname "$SCRIPT_DIR")
readonly SELF SCRIPT_DIR REPO_ROOT

readonly ALL_IMAGES=(debian12-systemd debian12-sysv debian11-systemd debian13-systemd debian12-client debian12-nm debian12-ifupdown
    debian13-controller)
readonly IMAGE_PREFIX=${AIRGAP_PYPI_IMAGE_PREFIX:-airgap-pypi}
readonly LABEL_KEY=airgap-pypi.recipe
readonly CLIENT_LOCK=$REPO_ROOT/molecule/requirements/client.txt
CACHE_DIR=${AIRGAP_PYPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airgap-pypi}
readonly CACHE_DIR IMAGE_CACHE=$CACHE_DIR/images

# Run options of --check (see the header); the systemd images' are read by read_systemd_run_opts.
SYSTEMD_RUN_OPTS=()
readonly SYSV_RUN_OPTS=(--cap-add NET_ADMIN --cap-add SYS_BOOT --tmpfs /run --tmpfs /run/lock --stop-signal SIGINT)
readonly CLIENT_RUN_OPTS=()

WORK_DIR=
CHECK_CONTAINERS=()

log() { printf '%s\n' "$*"; }
die() { printf 'build_images: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

usage() { sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }

remove_work_dir() {
    local m
    if [[ -n "$WORK_DIR" && -d "$WORK_DIR" ]]; then
        # Unmount whatever an interrupted debootstrap/chroot left below the work dir.
        while IFS= read -r m; do
            umount -l "$m" 2>/dev/null || true
        done < <(awk -v p="$WORK_DIR/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
        rm -rf --one-file-system "$WORK_DIR"
    fi
    WORK_DIR=
}

cleanup() {
    local rc=$?
    if ((${#CHECK_CONTAINERS[@]})); then
        "${DOCKER:-docker}" rm -f "${CHECK_CONTAINERS[@]}" >/dev/null 2>&1 || true
    fi
    remove_work_dir
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The first docker client on PATH that talks to the daemon (a client newer than the
# daemon may not).
find_docker() {
    local candidate
    if [[ -n "${DOCKER:-}" ]]; then
        "$DOCKER" info >/dev/null 2>&1 && { printf '%s\n' "$DOCKER"; return 0; }
        return 1
    fi
    while IFS= read -r candidate; do
        "$candidate" info >/dev/null 2>&1 && { printf '%s\n' "$candidate"; return 0; }
    done < <(type -ap docker | awk '!seen[$0]++')
    return 1
}

# Debian mirror: $AIRGAP_PYPI_DEBIAN_MIRROR, else the host's apt sources (main archive,
# not security), Debian hosts only.
discover_mirror() {
    if [[ -n "${AIRGAP_PYPI_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "${AIRGAP_PYPI_DEBIAN_MIRROR%/}"
        return 0
    fi
    local id='' codename='' uri='' f
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        id=$(. /etc/os-release && printf '%s' "${ID:-}")
        # shellcheck disable=SC1091
        codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    if [[ "$id" == debian ]]; then
        # Suites that mark Debian's main archive (not security, not third-party repos).
        local suites="^(${codename:-bookworm}|${codename:-bookworm}-updates|stable|testing|unstable|sid)\$"
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r "$f" ]] || continue
            uri=$(awk -v re="$suites" '
                function flush() {
                    if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^(no|false)$/ && ok && uris != "") {
                        split(uris, u, /[ \t]+/); print u[1]; found = 1; exit
                    }
                    types = uris = suites = enabled = ""; ok = 0
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                { key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val) }
                key == "types" { types = val }
                key == "uris" { uris = val }
                key == "enabled" { enabled = tolower(val) }
                key == "suites" { n = split(val, s, /[ \t]+/); for (i = 1; i <= n; i++) if (s[i] ~ re) ok = 1 }
                END { if (!found) flush() }' "$f")
            [[ -n "$uri" ]] && break
        done
        if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
            uri=$(awk -v re="$suites" '
                $1 != "deb" { next }
                { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ } }
                $(i + 1) ~ re { print $i; exit }' /etc/apt/sources.list)
        fi
    fi
    [[ "$uri" =~ ^https?:// ]] ||
        die "no Debian mirror found in the host's apt sources (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list); set AIRGAP_PYPI_DEBIAN_MIRROR to a Debian mirror URL (the one serving bookworm and bullseye)"
    printf '%s\n' "${uri%/}"
}

recipe_section() { # NAME -> the lines of that recipe section of this script
    sed -n "/^# >>> recipe: $1\$/,/^# <<< recipe: $1\$/p" "$SELF"
}

recipe_hash() { # NAME -> 16 hex digits
    local name=$1
    [[ -n "$(recipe_section "$name")" ]] || die "no recipe for image '$name'"
    {
        recipe_section common
        recipe_section "$name"
        if [[ "$name" == debian12-client ]]; then
            cat "$CLIENT_LOCK"
        fi
    } | sha256sum | cut -c1-16
}

image_label() { # REF -> recipe label of that image, empty if absent
    "$DOCKER" image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true
}

# >>> recipe: common
# Everything between the ">>> recipe" and "<<< recipe" markers is hashed: editing it
# rebuilds the images. Each image defines spec_NAME (SUITE, INCLUDE, CMD, ENVS) and
# customize_NAME (run after debootstrap, on the host, with $ROOTFS set).
# Recipe format 1: change this line to rebuild every image.

in_chroot() {
    chroot "$ROOTFS" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

# Keep maintainer scripts from starting services: in a chroot they would act on the
# host (its netns, its init).
chroot_begin() {
    printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
    chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
}

chroot_apt_install() { # packages... (after debootstrap; from the same mirror)
    in_chroot apt-get -q -y -o Dpkg::Use-Pty=0 install --no-install-recommends "$@" \
        >>"$WORK_DIR/apt.log" 2>&1 || { tail -n 25 "$WORK_DIR/apt.log" >&2; return 1; }
}

# Mask units that cannot work in a container.
mask_container_units() {
    local unit
    for unit in "$@"; do
        ln -sfn /dev/null "$ROOTFS/etc/systemd/system/$unit"
    done
}

readonly SYSTEMD_MASKED_UNITS=(
    getty.target getty@.service serial-getty@.service console-getty.service
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service
    systemd-remount-fs.service systemd-firstboot.service systemd-random-seed.service
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
    sys-fs-fuse-connections.mount dev-hugepages.mount
    systemd-modules-load.service kmod-static-nodes.service
    systemd-journald-audit.socket systemd-hwdb-update.service
    systemd-pstore.service systemd-sysctl.service proc-sys-fs-binfmt_misc.automount
    systemd-binfmt.service systemd-ask-password-console.path
    systemd-ask-password-wall.path
)

chroot_end() {
    rm -f "$ROOTFS/usr/sbin/policy-rc.d"
    in_chroot apt-get -qq clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
        "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
        "$ROOTFS"/root/.cache "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/usr/share/doc-base/*
    # Documentation and translations: keep the copyright files only.
    find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
    find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -type d ! -name 'C.*' \
        -exec rm -rf {} + 2>/dev/null || true
    # Logs of the build.
    find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} +
    # Host-specific files debootstrap copied in; docker provides its own at run time.
    : >"$ROOTFS/etc/resolv.conf"
    printf 'localhost\n' >"$ROOTFS/etc/hostname"
    # Every container gets its own machine id (systemd makes one at boot).
    if [[ -e "$ROOTFS/etc/machine-id" ]]; then
        : >"$ROOTFS/etc/machine-id"
    fi
    rm -f "$ROOTFS/var/lib/dbus/machine-id"
    if [[ -d "$ROOTFS/var/lib/dbus" ]]; then
        ln -s /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"
    fi
}

# Tar excludes (relative to the rootfs) and the `docker import --change` list.
readonly TAR_EXCLUDES=(--exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --exclude=./run/*)
import_changes() { # HASH -> --change args
    local env_kv
    printf '%s\n' --change "LABEL $LABEL_KEY=$1" --change "CMD $CMD"
    for env_kv in "${ENVS[@]}"; do
        printf '%s\n' --change "ENV $env_kv"
    done
}
# <<< recipe: common

# >>> recipe: debian12-systemd
spec_debian12_systemd() {
    SUITE=bookworm
    INCLUDE=(systemd systemd-sysv dbus libpam-systemd python3 firewalld nftables netbase iproute2 procps)
    CMD='["/lib/systemd/systemd"]'
    ENVS=(container=docker)
}
customize_debian12_systemd() {
    chroot_begin
    mask_container_units "${SYSTEMD_MASKED_UNITS[@]}"
    # firewalld on its nftables backend, default zone public (ssh + dhcpv6-client only;
    # tcp/8080 is not open), started at boot.
    sed -i -e 's/^#\{0,1\}FirewallBackend=.*/FirewallBackend=nftables/' \
        -e 's/^#\{0,1\}DefaultZone=.*/DefaultZone=public/' "$ROOTFS/etc/firewalld/firewalld.conf"
    grep -qx 'FirewallBackend=nftables' "$ROOTFS/etc/firewalld/firewalld.conf"
    grep -qx 'DefaultZone=public' "$ROOTFS/etc/firewalld/firewalld.conf"
    in_chroot systemctl enable firewalld.service >/dev/null 2>&1
    in_chroot systemctl set-default multi-user.target >/dev/null 2>&1
    chroot_end
}
# <<< recipe: debian12-systemd

# >>> recipe: debian12-sysv
spec_debian12_sysv() {
    SUITE=bookworm
    INCLUDE=(sysvinit-core sysv-rc initscripts python3 procps iproute2)
    CMD='["/sbin/init"]'
    ENVS=(container=docker)
}
customize_debian12_sysv() {
    chroot_begin
    [[ ! -e "$ROOTFS/lib/systemd/systemd" ]] || die "systemd got into the sysv image"
    # No consoles to run gettys on; ctrl-alt-del (docker stop --stop-signal SIGINT)
    # halts cleanly instead of rebooting.
    sed -i -E -e '/^[^#:]*:[^:]*:[^:]*:\/sbin\/getty/d' \
        -e 's|^(ca:[^:]*:ctrlaltdel:).*|\1/sbin/shutdown -t1 -h now|' "$ROOTFS/etc/inittab"
    ! grep -qE '^[^#]*getty' "$ROOTFS/etc/inittab" || die "getty lines left in /etc/inittab"
    chroot_end
}
# <<< recipe: debian12-sysv

# >>> recipe: debian11-systemd
spec_debian11_systemd() {
    SUITE=bullseye
    INCLUDE=(systemd systemd-sysv dbus python3 iptables netfilter-persistent iproute2 procps)
    CMD='["/lib/systemd/systemd"]'
    ENVS=(container=docker)
}
customize_debian11_systemd() {
    chroot_begin
    mask_container_units "${SYSTEMD_MASKED_UNITS[@]}"
    # Without the preseed, iptables-persistent's postinst would save the current rules:
    # in a chroot those are the host's.
    in_chroot debconf-set-selections <<'EOF'
iptables-persistent iptables-persistent/autosave_v4 boolean false
iptables-persistent iptables-persistent/autosave_v6 boolean false
EOF
    chroot_apt_install iptables-persistent
    install -d -m 755 "$ROOTFS/etc/iptables"
    cat >"$ROOTFS/etc/iptables/rules.v4" <<'EOF'
# Default-deny inbound, as on a hardened host (loaded at boot by netfilter-persistent).
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
COMMIT
EOF
    chmod 640 "$ROOTFS/etc/iptables/rules.v4"
    rm -f "$ROOTFS/etc/iptables/rules.v6"
    in_chroot systemctl enable netfilter-persistent.service >/dev/null 2>&1
    in_chroot systemctl set-default multi-user.target >/dev/null 2>&1
    chroot_end
}
# <<< recipe: debian11-systemd

# >>> recipe: debian13-systemd
spec_debian13_systemd() {
    SUITE=trixie
    INCLUDE=(systemd systemd-sysv dbus libpam-systemd python3 nftables netbase iproute2 procps)
    CMD='["/lib/systemd/systemd"]'
    ENVS=(container=docker)
}
customize_debian13_systemd() {
    chroot_begin
    mask_container_units "${SYSTEMD_MASKED_UNITS[@]}"
    # Default-deny inbound with nftables, loaded at boot by nftables.service. Only its own table is flushed
    # (not `flush ruleset`): docker's embedded DNS keeps its NAT rules in the container's namespace.
    cat >"$ROOTFS/etc/nftables.conf" <<'EOF'
#!/usr/sbin/nft -f
table inet filter
flush table inet filter
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
EOF
    chmod 755 "$ROOTFS/etc/nftables.conf"
    in_chroot systemctl enable nftables.service >/dev/null 2>&1
    in_chroot systemctl set-default multi-user.target >/dev/null 2>&1
    chroot_end
}
# <<< recipe: debian13-systemd

# >>> recipe: debian12-client
spec_debian12_client() {
    SUITE=bookworm
    INCLUDE=(python3 python3-venv ca-certificates procps iproute2)
    # `sleep infinity`, but as a PID 1 that ends on SIGTERM (docker stop is immediate).
    CMD='["/bin/sh", "-c", "trap \"exit 0\" TERM INT; sleep infinity & wait"]'
    ENVS=(PATH=/opt/clients/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
}
customize_debian12_client() {
    chroot_begin
    # Wheels from the hash lock, fetched on the host with the project's venv and none of
    # the host's pip configuration (files or PIP_* variables).
    local host_python=$REPO_ROOT/.venv/bin/python wheels=$WORK_DIR/wheels var
    [[ -x "$host_python" ]] || host_python=python3
    local -a unset_pip=()
    for var in $(compgen -e); do
        [[ "$var" == PIP_* ]] && unset_pip+=(-u "$var")
    done
    mkdir -p "$wheels"
    env "${unset_pip[@]}" PIP_CONFIG_FILE=/dev/null "$host_python" -m pip download \
        --quiet --disable-pip-version-check --no-cache-dir \
        --no-deps --require-hashes --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$wheels" -r "$CLIENT_LOCK"
    mkdir -p "$ROOTFS/tmp/wheels"
    cp "$wheels"/*.whl "$ROOTFS/tmp/wheels/"
    cp "$CLIENT_LOCK" "$ROOTFS/tmp/wheels/client.txt"
    in_chroot python3 -m venv /opt/clients
    in_chroot PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
        /opt/clients/bin/python -m pip install --quiet --no-index --find-links /tmp/wheels \
        --require-hashes -r /tmp/wheels/client.txt
    rm -rf "$ROOTFS/tmp/wheels"
    in_chroot /opt/clients/bin/twine --version >/dev/null
    chroot_end
}
# <<< recipe: debian12-client

# >>> recipe: debian12-nm
spec_debian12_nm() {
    SUITE=bookworm
    INCLUDE=(systemd systemd-sysv dbus libpam-systemd python3 network-manager iproute2 procps)
    CMD='["/lib/systemd/systemd"]'
    ENVS=(container=docker)
}
customize_debian12_nm() {
    chroot_begin
    mask_container_units "${SYSTEMD_MASKED_UNITS[@]}"
    # docker owns eth0 (the container's link to its network) and /etc/resolv.conf (a bind
    # mount): NetworkManager must neither take eth0 over nor make default connections for
    # the other interfaces docker adds. Those are left for the role under test.
    # docker configures every interface before PID 1 starts, which a real boot does not:
    # keep-configuration=no makes NetworkManager activate the interface's profile at boot
    # instead of adopting docker's address as an "external" connection.
    cat >"$ROOTFS/etc/NetworkManager/conf.d/90-airgap-pypi-container.conf" <<'EOF'
[main]
no-auto-default=*
dns=none

[keyfile]
unmanaged-devices=interface-name:eth0

[device-airgap-pypi-container]
match-device=except:interface-name:eth0
keep-configuration=no
EOF
    chmod 644 "$ROOTFS/etc/NetworkManager/conf.d/90-airgap-pypi-container.conf"
    in_chroot systemctl enable NetworkManager.service >/dev/null 2>&1
    in_chroot systemctl set-default multi-user.target >/dev/null 2>&1
    chroot_end
}
# <<< recipe: debian12-nm

# >>> recipe: debian12-ifupdown
spec_debian12_ifupdown() {
    SUITE=bookworm
    INCLUDE=(systemd systemd-sysv dbus python3 ifupdown iproute2 procps)
    CMD='["/lib/systemd/systemd"]'
    ENVS=(container=docker)
}
customize_debian12_ifupdown() {
    chroot_begin
    mask_container_units "${SYSTEMD_MASKED_UNITS[@]}"
    # As the Debian installer leaves it, minus the primary interface: docker configures
    # eth0; the role under test adds files to interfaces.d/.
    cat >"$ROOTFS/etc/network/interfaces" <<'EOF'
# interfaces(5) file used by ifup(8) and ifdown(8)
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
    install -d -m 755 "$ROOTFS/etc/network/interfaces.d"
    in_chroot systemctl enable networking.service >/dev/null 2>&1
    in_chroot systemctl set-default multi-user.target >/dev/null 2>&1
    chroot_end
}
# <<< recipe: debian12-ifupdown

# >>> recipe: debian13-controller
spec_debian13_controller() {
    SUITE=trixie
    # A bare Python 3.13: the toolchain comes from the carried-in archive, installed offline. gpgv checks the
    # archive's signature (apt 3.0 verifies with sqv, so a minimal trixie lacks it; an operator installs it once).
    INCLUDE=(python3 procps gpgv)
    CMD='["/bin/sh", "-c", "trap \"exit 0\" TERM INT; sleep infinity & wait"]'
    ENVS=(LANG=C.UTF-8)
}
customize_debian13_controller() {
    chroot_begin
    ! in_chroot python3 -m pip --version >/dev/null 2>&1 || die "pip got into the controller image"
    in_chroot gpgv --version >/dev/null 2>&1 || die "gpgv is missing from the controller image"
    chroot_end
}
# <<< recipe: debian13-controller

build_image() { # NAME
    local name=$1 fn=${1//-/_} hash ref tarball start t label old_id
    local SUITE CMD ROOTFS
    local -a INCLUDE ENVS changes
    hash=$(recipe_hash "$name")
    ref=$IMAGE_PREFIX/$name:latest
    tarball=$IMAGE_CACHE/$name-$hash.tar.zst
    start=$(now)

    if ((!FORCE)) && [[ "$(image_label "$ref")" == "$hash" ]]; then
        log "[$name] up to date ($ref, recipe $hash)"
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "building $name needs root (debootstrap, chroot)"
    "spec_$fn"
    mapfile -t changes < <(import_changes "$hash")

    if ((FORCE)) || [[ ! -s "$tarball" ]]; then
        for t in debootstrap zstd chroot; do
            command -v "$t" >/dev/null 2>&1 || die "$t not found (run scripts/ensure_docker.sh as root)"
        done
        MIRROR=${MIRROR:-$(discover_mirror)}
        mkdir -p "$CACHE_DIR/tmp" "$IMAGE_CACHE"
        WORK_DIR=$(mktemp -d "$CACHE_DIR/tmp/$name.XXXXXX")
        ROOTFS=$WORK_DIR/rootfs

        t=$(now)
        log "[$name] debootstrap $SUITE (minbase + ${INCLUDE[*]}) from $MIRROR ..."
        if ! debootstrap --variant=minbase --arch=amd64 \
            --include="$(IFS=,; printf '%s' "${INCLUDE[*]}")" \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK_DIR/debootstrap.log" 2>&1; then
            tail -n 25 "$WORK_DIR/debootstrap.log" >&2
            [[ ! -f "$ROOTFS/debootstrap/debootstrap.log" ]] || tail -n 25 "$ROOTFS/debootstrap/debootstrap.log" >&2
            die "debootstrap of $name failed"
        fi
        log "[$name]   debootstrap done in $(since "$t")"

        t=$(now)
        log "[$name] customising the rootfs ..."
        "customize_$fn"
        log "[$name]   customised in $(since "$t")"

        t=$(now)
        log "[$name] packing $tarball ..."
        tar --numeric-owner "${TAR_EXCLUDES[@]}" -C "$ROOTFS" -c . | zstd -T0 -q -o "$tarball.part"
        mv -f "$tarball.part" "$tarball"
        log "[$name]   packed in $(since "$t") ($(du -h "$tarball" | cut -f1))"
        remove_work_dir
    else
        log "[$name] using cached rootfs $tarball"
    fi

    t=$(now)
    log "[$name] docker import $ref ..."
    old_id=$("$DOCKER" image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
    zstd -dc -q "$tarball" | "$DOCKER" import "${changes[@]}" - "$ref" >/dev/null
    label=$(image_label "$ref")
    [[ "$label" == "$hash" ]] || die "imported $ref but its label is '$label', not '$hash'"
    log "[$name]   imported in $(since "$t")"
    # The image this one replaced, if nothing else uses it (no tag, no container).
    if [[ -n "$old_id" && "$old_id" != "$("$DOCKER" image inspect --format '{{.Id}}' "$ref")" &&
        -z "$("$DOCKER" image inspect --format '{{join .RepoTags ""}}' "$old_id" 2>/dev/null)" ]]; then
        "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true
    fi
    # Keep the newest two cached rootfs tarballs of this image (this one and the last).
    find "$IMAGE_CACHE" -maxdepth 1 -name "$name-*.tar.zst" -printf '%T@ %p\n' | sort -rn |
        awk -v keep="$tarball" 'NR > 2 && $2 != keep { print $2 }' | xargs -r rm -f
    log "[$name] built $ref (recipe $hash) in $(since "$start")"
}

# ---------------------------------------------------------------- --check
dexec() { "$DOCKER" exec "$@"; }

wait_for() { # SECONDS COMMAND... : retry until the command succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

check_systemd_state() { # CONTAINER
    local c=$1 state
    wait_for 60 dexec "$c" systemctl is-system-running --quiet || true
    state=$(dexec "$c" systemctl is-system-running 2>/dev/null || true)
    log "  systemctl is-system-running: $state"
    if [[ "$state" != running ]]; then
        dexec "$c" systemctl --failed --no-legend --plain 2>&1 | sed 's/^/  failed: /'
    fi
    [[ "$state" == running || "$state" == degraded ]]
}

check_venv() { # CONTAINER
    dexec "$1" sh -c 'rm -rf /tmp/v && python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "import sys; print(sys.version.split()[0], sys.prefix)" && rm -rf /tmp/v' |
        sed 's/^/  python3 -m venv --without-pip: ok, /'
}

check_specific() { # NAME CONTAINER
    local name=$1 c=$2
    case $name in
        debian12-systemd)
            wait_for 30 dexec "$c" firewall-cmd --state || true
            log "  firewall-cmd --state: $(dexec "$c" firewall-cmd --state 2>&1 || true)"
            [[ "$(dexec "$c" firewall-cmd --state 2>&1)" == running ]] || return 1
            log "  default zone: $(dexec "$c" firewall-cmd --get-default-zone)," \
                "services: $(dexec "$c" firewall-cmd --list-services)," \
                "8080/tcp open: $(dexec "$c" firewall-cmd --query-port=8080/tcp 2>&1 || true)," \
                "backend: $(dexec "$c" sed -n 's/^FirewallBackend=//p' /etc/firewalld/firewalld.conf)"
            ;;
        debian13-systemd)
            log "  nftables.service: $(dexec "$c" systemctl is-active nftables.service 2>&1 || true)"
            [[ "$(dexec "$c" nft list chain inet filter input 2>&1)" == *"policy drop"* ]] || return 1
            ;;
        debian11-systemd)
            log "  iptables -S INPUT: $(dexec "$c" iptables -S INPUT | tr '\n' ';')"
            dexec "$c" iptables -S INPUT | grep -qx -- '-P INPUT DROP' || return 1
            ;;
        debian12-sysv)
            log "  PID 1: $(dexec "$c" cat /proc/1/comm), runlevel: $(dexec "$c" runlevel)"
            if dexec "$c" test -e /etc/init.d/airgap-dummy; then
                log "  dummy service starts: $(dexec "$c" grep -c start /var/log/airgap-dummy.log)," \
                    "running: $(dexec "$c" /etc/init.d/airgap-dummy status && echo yes || echo no)"
                dexec "$c" /etc/init.d/airgap-dummy status
            fi
            ;;
        debian12-nm)
            wait_for 30 dexec "$c" nmcli -t -f RUNNING general || true
            log "  nmcli general: $(dexec "$c" nmcli -t -f RUNNING,STATE general 2>&1 || true)," \
                "devices: $(dexec "$c" nmcli -t -f DEVICE,STATE device 2>&1 | tr '\n' ' ')"
            [[ "$(dexec "$c" nmcli -t -f RUNNING general 2>&1)" == running ]] || return 1
            dexec "$c" nmcli -t -f DEVICE,STATE device | grep -qx 'eth0:unmanaged' || return 1
            ;;
        debian12-ifupdown)
            log "  networking.service: $(dexec "$c" systemctl is-active networking.service 2>&1 || true)," \
                "ifquery --state: $(dexec "$c" ifquery --state 2>&1 | tr '\n' ' ')"
            [[ "$(dexec "$c" systemctl is-active networking.service 2>&1)" == active ]] || return 1
            ;;
        debian12-client)
            log "  $(dexec "$c" /opt/clients/bin/pip --version | cut -d' ' -f1-2), $(dexec "$c" twine --version | head -n1)"
            ;;
    esac
}

# A throwaway LSB service enabled with update-rc.d: proves init scripts come back
# after `docker restart`. Only ever installed into a --check container.
install_dummy_service() { # CONTAINER
    dexec -i "$1" sh -c 'cat >/etc/init.d/airgap-dummy && chmod 755 /etc/init.d/airgap-dummy' <<'EOF'
#!/bin/sh
### BEGIN INIT INFO
# Provides:          airgap-dummy
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: throwaway test service
### END INIT INFO
PIDFILE=/run/airgap-dummy.pid
case "$1" in
    start) echo "start $(date +%s)" >>/var/log/airgap-dummy.log
           start-stop-daemon --start --quiet --background --make-pidfile --pidfile $PIDFILE --exec /bin/sleep -- 1000000 ;;
    stop) start-stop-daemon --stop --quiet --oknodo --retry 5 --remove-pidfile --pidfile $PIDFILE ;;
    status) start-stop-daemon --status --pidfile $PIDFILE ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 3 ;;
esac
EOF
    dexec "$1" update-rc.d airgap-dummy defaults
    dexec "$1" /etc/init.d/airgap-dummy start
}

read_systemd_run_opts() { # -> SYSTEMD_RUN_OPTS, from molecule/shared/vars/run-options.yml
    local python=python3 options
    [[ -x $REPO_ROOT/.venv/bin/python ]] && python=$REPO_ROOT/.venv/bin/python
    options=$("$python" "$REPO_ROOT/scripts/containers.py" run-options systemd) ||
        die "cannot read the systemd run options with $python (it needs PyYAML: scripts/venv.sh makes .venv)"
    mapfile -t SYSTEMD_RUN_OPTS <<<"$options"
}

check_image() { # NAME
    local name=$1 c t ok=1
    local -a opts
    case $name in
        debian12-systemd | debian11-systemd | debian13-systemd | debian12-nm | debian12-ifupdown) opts=("${SYSTEMD_RUN_OPTS[@]}") ;;
        debian12-sysv) opts=("${SYSV_RUN_OPTS[@]}") ;;
        *) opts=("${CLIENT_RUN_OPTS[@]}") ;;
    esac
    c=airgap-pypi-check-$name-$$
    CHECK_CONTAINERS+=("$c")
    log "[$name] check: docker run -d ${opts[*]} $IMAGE_PREFIX/$name"
    t=$(now)
    "$DOCKER" run -d --name "$c" --hostname "$c" "${opts[@]}" "$IMAGE_PREFIX/$name:latest" >/dev/null
    case $name in
        *-systemd | debian12-nm | debian12-ifupdown) check_systemd_state "$c" || ok=0 ;;
        debian12-sysv)
            wait_for 30 dexec "$c" sh -c 'runlevel | grep -q " 2$"' || ok=0
            install_dummy_service "$c" || ok=0
            ;;
    esac
    log "  booted in $(since "$t")"
    check_specific "$name" "$c" || ok=0
    [[ "$name" == debian12-client ]] || check_venv "$c" || ok=0

    t=$(now)
    "$DOCKER" restart "$c" >/dev/null
    log "[$name] check after docker restart ($(since "$t") to restart)"
    case $name in
        *-systemd | debian12-nm | debian12-ifupdown) check_systemd_state "$c" || ok=0 ;;
        debian12-sysv) wait_for 30 dexec "$c" sh -c 'runlevel | grep -q " 2$"' || ok=0 ;;
    esac
    check_specific "$name" "$c" || ok=0
    if [[ "$name" == debian12-sysv ]]; then
        [[ "$(dexec "$c" grep -c start /var/log/airgap-dummy.log)" == 2 ]] || ok=0
    fi
    t=$(now)
    "$DOCKER" stop "$c" >/dev/null
    log "  docker stop took $(since "$t")"
    "$DOCKER" rm -f "$c" >/dev/null
    if ((ok)); then log "[$name] check passed"; else log "[$name] check FAILED"; fi
    ((ok))
}

# ---------------------------------------------------------------- main
FORCE=0
CHECK=0
LIST=0
names=()
while (($#)); do
    case $1 in
        -f | --force) FORCE=1 ;;
        --check) CHECK=1 ;;
        --list) LIST=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) names+=("$1") ;;
    esac
    shift
done
((${#names[@]})) || names=("${ALL_IMAGES[@]}")
for n in "${names[@]}"; do
    [[ " ${ALL_IMAGES[*]} " == *" $n "* ]] || die "unknown image '$n' (known: ${ALL_IMAGES[*]})"
done

if ((LIST)); then
    for n in "${names[@]}"; do
        printf '%s/%s:latest %s\n' "$IMAGE_PREFIX" "$n" "$(recipe_hash "$n")"
    done
    exit 0
fi

DOCKER=$(find_docker) || {
    "$SCRIPT_DIR/ensure_docker.sh"
    DOCKER=$(find_docker) || die "docker is not usable"
}

# One build at a time per cache (parallel Molecule runs may call this script).
if command -v flock >/dev/null 2>&1 && mkdir -p "$CACHE_DIR" 2>/dev/null; then
    exec 9>"$CACHE_DIR/.build.lock"
    flock 9
fi

total=$(now)
for n in "${names[@]}"; do
    build_image "$n"
done
failed=0
if ((CHECK)); then
    read_systemd_run_opts
    for n in "${names[@]}"; do
        check_image "$n" || failed=1
    done
fi
log "done in $(since "$total")"
exit "$failed"
