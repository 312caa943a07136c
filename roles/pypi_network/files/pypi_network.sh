#!/bin/sh
# Host-side helper of the role pypi_network. Ansible copies it into a private temporary directory
# for one run and removes it afterwards. It touches only the interface and the file it is given.
#
#   pypi_network.sh validate BACKEND FILE NAME
#       Parse a rendered file with the backend's own tools; exit 1 and say why on stderr.
#   pypi_network.sh apply BACKEND NAME FILE OLD ONBOOT UUID
#       FILE (already written) replaced OLD (a copy of the previous file; empty: there was none).
#       Take the interface down with its old settings and bring it up with the new ones (ONBOOT
#       false: leave it down, as after a boot). When that fails, restore OLD and the old settings
#       and exit 1.
#   pypi_network.sh apply-confirm BACKEND NAME FILE OLD ONBOOT UUID DIR TIMEOUT
#       As apply, then wait up to TIMEOUT seconds for DIR/confirmed (Ansible reached the host
#       again). Without it, restore OLD and the old settings and exit 2 (3: applying failed and
#       was undone at once). Says what it did on stdout.
#
# BACKEND is networkmanager, ifcfg or ifupdown; UUID is the NetworkManager profile's uuid.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

say() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------- validate
validate_keyfile_python() { # FILE NAME: for NetworkManager older than 1.42 (no nmcli --offline)
    "${PYTHON:-python3}" - "$1" "$2" <<'PY'
import configparser
import sys

path, name = sys.argv[1], sys.argv[2]
parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",), strict=True)
parser.optionxform = str
try:
    with open(path) as handle:
        parser.read_file(handle)
except (OSError, configparser.Error) as error:
    sys.exit("keyfile: %s" % error)
problems = []
if parser.get("connection", "interface-name", fallback="") != name:
    problems.append("connection.interface-name is not " + name)
if parser.get("connection", "type", fallback="") != "ethernet":
    problems.append("connection.type is not ethernet")
method = parser.get("ipv4", "method", fallback="")
if method not in ("auto", "manual"):
    problems.append("ipv4.method is %r" % method)
if method == "manual" and not parser.get("ipv4", "address1", fallback=""):
    problems.append("ipv4.address1 is missing for method manual")
if problems:
    sys.exit("keyfile: " + "; ".join(problems))
PY
}

validate() { # BACKEND FILE NAME
    case $1 in
        networkmanager)
            if command -v nmcli >/dev/null 2>&1 && nmcli --help 2>&1 | grep -q -- '--offline'; then
                # NetworkManager's own keyfile reader and profile checks, without the daemon.
                if ! out=$(nmcli --offline connection modify connection.interface-name "$3" <"$2" 2>&1 >/dev/null); then
                    err "nmcli --offline connection modify: $out"
                    return 1
                fi
            else
                validate_keyfile_python "$2" "$3" || return 1
            fi
            ;;
        ifupdown)
            if ! out=$(ifquery --interfaces="$2" "$3" 2>&1); then
                err "ifquery --interfaces=FILE $3: $out"
                return 1
            fi
            if grep -Eq '^[[:space:]]*iface[[:space:]].*[[:space:]]dhcp[[:space:]]*$' "$2" &&
                ! [ -x /sbin/dhclient ] && ! [ -x /sbin/dhcpcd ] && ! [ -x /sbin/udhcpc ] && ! [ -x /sbin/pump ]; then
                err "$3 uses DHCP, but no DHCP client that ifupdown runs is installed (isc-dhcp-client, dhcpcd, udhcpc or pump)"
                return 1
            fi
            ;;
        ifcfg)
            # network-scripts source the file; NetworkManager's ifcfg-rh reads KEY=value lines only.
            if ! out=$(bash -n "$2" 2>&1); then
                err "bash -n: $out"
                return 1
            fi
            # shellcheck disable=SC2016  # the pattern's $ and ` are characters to reject
            if out=$(grep -Evn '^(#.*|[A-Z][A-Z0-9_]*=("[^"$`\\]*"|[^"$`\\ ]*)|)$' "$2"); then
                err "not a KEY=value line: $out"
                return 1
            fi
            # shellcheck disable=SC2016  # $1 and DEVICE belong to the inner bash
            if ! device=$(env -i /bin/bash -c 'set -a; . "$1" >/dev/null 2>&1 || exit 1; printf %s "${DEVICE-}"' ifcfg "$2"); then
                err "sourcing it failed"
                return 1
            fi
            if [ "$device" != "$3" ]; then
                err "DEVICE is '$device', not $3"
                return 1
            fi
            ;;
        *)
            err "unknown backend $1"
            return 1
            ;;
    esac
}

# ---------------------------------------------------------------- apply and restore
# Variables shared by the functions below: backend name file old onboot uuid prev wasup snapshot.

nm_active() { # NAME -> uuid of the NetworkManager profile active on that interface, if any
    nmcli -t -f UUID,DEVICE connection show --active 2>/dev/null | awk -F: -v d="$1" '$2 == d { print $1; exit }'
}

remember() { # what the interface is like now, for restore
    prev=
    wasup=false
    case $backend in
        networkmanager)
            prev=$(nm_active "$name")
            [ -z "$prev" ] || wasup=true
            ;;
        ifupdown) ! ifquery --state "$name" >/dev/null 2>&1 || wasup=true ;;
        ifcfg) [ -z "$(ip -4 -o address show dev "$name" 2>/dev/null)" ] || wasup=true ;;
    esac
    # Its IPv4 addresses and default route, whoever set them.
    snapshot=$(
        ip -4 -o address show dev "$name" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "inet") print "addr", $(i + 1) }'
        ip -4 route show default dev "$name" 2>/dev/null | awk '$1 == "default" && $2 == "via" { print "gw", $3 }'
    )
}

take_down_old() {
    case $backend in
        networkmanager) : ;; # `nmcli connection up` replaces the profile active on the device
        ifupdown)
            if ifquery --state "$name" >/dev/null 2>&1; then
                if [ -n "$old" ]; then
                    ifdown --interfaces="$old" "$name" || ifdown --force "$name" || true
                else
                    ifdown --force "$name" || true
                fi
            fi
            ;;
        ifcfg) ifdown "$name" || true ;; # ifdown-eth flushes the interface's addresses whatever the file says
    esac
}

bring_up() {
    case $backend in
        networkmanager)
            nmcli connection load "$file" || return 1
            if [ "$onboot" = true ]; then
                nmcli --wait 60 connection up uuid "$uuid" || return 1
            elif [ "$(nm_active "$name")" = "$uuid" ]; then
                nmcli connection down uuid "$uuid" || return 1
            fi
            ;;
        ifupdown | ifcfg)
            if [ "$onboot" = true ]; then
                ifup "$name" || return 1
            fi
            ;;
    esac
}

restore() { # put back the old file, then the old settings, then any address the interface lost
    rc=0
    case $backend in
        ifupdown) if ifquery --state "$name" >/dev/null 2>&1; then ifdown "$name" || ifdown --force "$name"; fi ;;
        ifcfg) ifdown "$name" || true ;;
    esac
    if [ -n "$old" ]; then
        cp -p "$old" "$file" || rc=1
    else
        if [ "$backend" = networkmanager ]; then
            nmcli connection delete uuid "$uuid" || true
        fi
        rm -f "$file" || rc=1
    fi
    case $backend in
        networkmanager)
            if [ -n "$old" ]; then
                nmcli connection load "$file" || rc=1
            fi
            if [ -n "$prev" ]; then
                nmcli --wait 60 connection up uuid "$prev" || rc=1
            elif [ -n "$old" ] && [ "$(nm_active "$name")" = "$uuid" ]; then
                nmcli connection down uuid "$uuid" || rc=1
            fi
            ;;
        ifupdown | ifcfg)
            if [ "$wasup" = true ] && [ -n "$old" ]; then
                ifup "$name" || rc=1
            fi
            ;;
    esac
    # Addresses set outside the backend (by hand, by an initrd) come back by hand.
    printf '%s\n' "$snapshot" | while read -r kind value; do
        case $kind in
            addr)
                if ! ip -4 -o address show dev "$name" | grep -q "inet $value "; then
                    ip link set dev "$name" up && ip address add "$value" dev "$name" && say "re-added $value on $name"
                fi
                ;;
            gw)
                if [ -z "$(ip -4 route show default dev "$name")" ]; then
                    ip route add default via "$value" dev "$name" && say "re-added the default route via $value"
                fi
                ;;
        esac
    done
    return "$rc"
}

apply() {
    if ! out=$({ take_down_old && bring_up; } 2>&1); then
        err "applying the new settings of $name failed: $out"
        if restore >&2; then
            err "the previous file and settings of $name were restored"
        else
            err "restoring the previous file and settings of $name FAILED"
        fi
        return 1
    fi
}

apply_confirm() { # DIR TIMEOUT
    dir=$1
    # Let the Ansible session that started this job end before the connection may drop.
    sleep 2
    if ! out=$({ take_down_old && bring_up; } 2>&1); then
        say "applying the new settings of $name failed: $out"
        if restore 2>&1; then say "restored the previous file and settings"; else say "restoring FAILED"; fi
        return 3
    fi
    say "applied the new settings of $name; waiting up to $2 s for Ansible to reach the host again"
    : >"$dir/applied"
    deadline=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$deadline" ] && [ ! -e "$dir/confirmed" ]; do
        sleep 1
    done
    if [ -e "$dir/confirmed" ]; then
        say "kept: Ansible reached the host again"
        return 0
    fi
    say "no confirmation within $2 s"
    if restore 2>&1; then
        say "restored the previous file and settings of $name"
    else
        say "restoring the previous file and settings of $name FAILED"
    fi
    return 2
}

# ---------------------------------------------------------------- main
command=${1:-}
case $command in
    validate)
        [ $# -eq 4 ] || { err "usage: $0 validate BACKEND FILE NAME"; exit 64; }
        validate "$2" "$3" "$4"
        ;;
    apply | apply-confirm)
        case $command:$# in
            apply:7 | apply-confirm:9) ;;
            *)
                err "usage: $0 apply BACKEND NAME FILE OLD ONBOOT UUID | apply-confirm ... DIR TIMEOUT"
                exit 64
                ;;
        esac
        backend=$2 name=$3 file=$4 old=$5 onboot=$6 uuid=$7
        remember
        if [ "$command" = apply ]; then apply; else apply_confirm "$8" "$9"; fi
        ;;
    *)
        err "usage: $0 validate|apply|apply-confirm ..."
        exit 64
        ;;
esac
