#!/bin/sh
# Verify and unpack an airgap-pypi archive on the private side (POSIX sh, coreutils, tar, gzip).
#
#   sh unpack_archive.sh [--expect-version V] [--keyring FILE] [--allow-downgrade] [--allow-unsigned]
#                        ARCHIVE|MANIFEST [DEST]
#
# An archive with a manifest beside it (ARCHIVE.manifest, and ARCHIVE.manifest.sig when signed), or any
# use of a keyring (--keyring, airgap-pypi.keyring beside this script, or a DEST that imported one
# before) goes to airgap_transfer.py beside this script (python3, standard library only): signature,
# sequence, deltas and parts are checked there; see docs/bundle.md.
#
# An unsigned archive is refused unless --allow-unsigned is given (and never where a key is pinned).
#
# Without any of that (an archive made before manifests existed; --allow-unsigned): checks ARCHIVE against
# ARCHIVE.sha256 (next to it), optionally that it is version V, unpacks it into DEST (default: the
# archive's directory) as airgap-pypi-VERSION/, checks every SHA256SUMS of offline_artifacts/ (server
# bundle, controller wheelhouse, mirror) and prints what to run next. Refuses to unpack over an
# existing directory. Exit status 1 with "error: ..." on any problem.
set -eu

die() { printf 'unpack_archive: error: %s\n' "$*" >&2; exit 1; }

here=$(dirname "$0")
helper=
first=
second=
skip=
for arg in "$@"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case $arg in
        --keyring | --keyring=* | --allow-downgrade) helper=1 ;;
    esac
    case $arg in
        --expect-version | --keyring) skip=1 ;;
        --*) ;;
        *) if [ -z "$first" ]; then first=$arg; elif [ -z "$second" ]; then second=$arg; fi ;;
    esac
done
case $first in *.manifest) helper=1 ;; esac
if [ -n "$first" ] && [ -f "$first.manifest" ]; then helper=1; fi
if [ -f "$here/airgap-pypi.keyring" ]; then helper=1; fi
state_dir=${second:-$(dirname "${first:-.}")}
if [ -f "$state_dir/airgap-pypi-transfer.json" ]; then helper=1; fi
if [ -n "$helper" ]; then
    [ -f "$here/airgap_transfer.py" ] || die "$here/airgap_transfer.py is missing: carry it with unpack_archive.sh (make bundle writes both into dist/)"
    command -v python3 >/dev/null 2>&1 || die "python3 not found: signed archives are checked by python3 (3.12 or newer, the controller's)"
    exec python3 -I "$here/airgap_transfer.py" unpack "$@"  # -I: no PYTHON* variables, no user site
fi

expect=
unsigned=
archive=
dest=
while [ $# -gt 0 ]; do
    case $1 in
        --expect-version)
            [ $# -ge 2 ] || die "--expect-version needs a version"
            expect=$2
            shift 2
            continue
            ;;
        --allow-unsigned) unsigned=1 ;;
        --*) die "unknown option $1 (usage: sh unpack_archive.sh [--expect-version V] [--allow-unsigned] ARCHIVE [DEST])" ;;
        *) if [ -z "$archive" ]; then archive=$1; elif [ -z "$dest" ]; then dest=$1; else die "too many arguments: $1"; fi ;;
    esac
    shift
done
[ -n "$archive" ] || die "usage: sh unpack_archive.sh [--expect-version V] [--allow-unsigned] ARCHIVE [DEST]"
dest=${dest:-$(dirname "$archive")}
name=$(basename "$archive")
[ -f "$archive" ] || die "$archive: no such file"
[ -n "$unsigned" ] || die "$name is not signed (no $name.manifest and .sig beside it) and no keyring is pinned: whoever could swap the archive could swap its .sha256 too. Carry the .manifest and .manifest.sig that make bundle SIGN_KEY=... writes and pin the key (docs/bundle.md), or pass --allow-unsigned to take it on its .sha256 alone"
[ -f "$archive.sha256" ] || die "$archive.sha256 is missing: carry it with the archive (make bundle writes both)"

case $name in
    airgap-pypi-*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9].tar.gz) ;;
    *) die "$name is not named like an airgap-pypi archive (airgap-pypi-VERSION-YYYYMMDD.tar.gz)" ;;
esac
version=${name#airgap-pypi-}
version=${version%-????????.tar.gz}
if [ -n "$expect" ] && [ "$version" != "$expect" ]; then
    die "$name is version $version, but version $expect is expected: carry the archive of version $expect (or change what you expect)"
fi

expected=$(awk 'NR == 1 { print $1 }' "$archive.sha256")
actual=$(sha256sum "$archive" | awk '{ print $1 }')
if [ "$expected" != "$actual" ]; then
    die "$name is corrupted or incomplete: sha256 $actual, but $name.sha256 says $expected. Carry it again."
fi
echo "ok: $name matches $name.sha256"

top=airgap-pypi-$version
[ ! -e "$dest/$top" ] || die "$dest/$top exists already: move it away first (keep your inventory outside it)"
members=$(tar -tzf "$archive") || die "$name: not a readable tar.gz"
if printf '%s\n' "$members" | grep -qv "^$top/"; then
    die "$name holds files outside $top/ (or a version other than its name says)"
fi
[ "$(printf '%s\n' "$members" | grep -cx "$top/VERSION")" = 1 ] || die "$name has no $top/VERSION"
mkdir -p "$dest"
tar -xzf "$archive" -C "$dest" --no-same-owner
inside=$(cat "$dest/$top/VERSION")
[ "$inside" = "$version" ] || die "$name says version $version but its VERSION file says $inside"

for dir in offline_artifacts offline_artifacts/controller offline_artifacts/mirror; do
    [ -f "$dest/$top/$dir/SHA256SUMS" ] || {
        [ "$dir" = offline_artifacts/mirror ] && continue
        die "$top/$dir/SHA256SUMS is missing: the archive was built without its bundle"
    }
    if ! out=$(cd "$dest/$top/$dir" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
        die "$top/$dir failed its checksum check: $(printf '%s' "$out" | tr '\n' ';')"
    fi
    echo "ok: $top/$dir/SHA256SUMS ($(wc -l <"$dest/$top/$dir/SHA256SUMS") files)"
done

cat <<EOF

Unpacked airgap-pypi $version into $dest/$top. Next:
  cd $dest/$top
  scripts/install_controller.sh              # the Ansible toolchain, offline, into .venv-controller
  cp -r inventories/production ../my-inventory  # once; list your hosts and set the passwords
  .venv-controller/bin/ansible-playbook site.yml -i ../my-inventory
EOF
