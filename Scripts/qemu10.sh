#!/usr/bin/env bash
# Make QEMU 10.0 from Debian's bookworm-backports runnable beside the system's QEMU 7.2,
# without installing it.
#
# Usage: Scripts/qemu10.sh [DIR]            (default: guest/out/qemu10 of this repository)
#
# Adds the bookworm-backports suite to apt's sources when it is missing (a separate file,
# /etc/apt/sources.list.d/vus-bookworm-backports.sources; backports keep apt's default
# priority 100, so nothing on the host is upgraded from it) and refreshes only that list;
# `apt-get download`s the bookworm-backports versions of qemu-system-x86,
# qemu-system-common, qemu-system-data, qemu-block-extra, seabios and ipxe-qemu into
# DIR/debs and unpacks each with `dpkg-deb -x` into DIR. Nothing is installed.
# Then writes DIR/qemu-system-x86_64, a wrapper that runs the unpacked binary with
#   QEMU_MODULE_DIR=DIR/usr/lib/x86_64-linux-gnu/qemu
#   -L DIR/usr/share/qemu -L DIR/usr/share/seabios
# so it can be given to run-guest.sh and migrate-test.sh as `--qemu DIR/qemu-system-x86_64`.
# When DIR/qemu-system-x86_64 exists and `--version` reports 10.x, nothing is done
# (FORCE=1 redoes everything). Prints the wrapper's path on stdout as the last line.
# Needs root for the apt source and `apt-get update` (only when the backports list is missing).
set -euo pipefail

say() { echo "qemu10: $*" >&2; }
die() { echo "qemu10: error: $*" >&2; exit 1; }

case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;; esac
(($# <= 1)) || die "too many arguments; usage: $0 [DIR]"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DIR=${1:-$REPO/guest/out/qemu10}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WRAP=$DIR/qemu-system-x86_64
SUITE=bookworm-backports
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data qemu-block-extra seabios ipxe-qemu)

if [[ ${FORCE:-0} != 1 && -x $WRAP ]] && v=$("$WRAP" --version 2>/dev/null | head -n1) &&
    [[ $v == *"version 10."* ]]; then
    say "up to date: $v"
    echo "$WRAP"
    exit 0
fi

T0=$(date +%s)

# ---- apt source -----------------------------------------------------------------------------
SRC=/etc/apt/sources.list.d/vus-bookworm-backports.sources
has_suite() { apt-cache policy 2>/dev/null | grep -q "$SUITE/main"; }
if ! has_suite; then
    ((EUID == 0)) || die "apt has no $SUITE source; add it as root or run this script as root"
    if ! grep -rqs "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding $SUITE to apt's sources ($SRC)"
        cat >"$SRC" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        src=$SRC
    else
        src=$(grep -rls "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/ | head -n1)
    fi
    say "apt-get update (only $src)"
    if [[ $src == *.sources ]]; then
        apt-get update -o Dir::Etc::sourcelist=- -o "Dir::Etc::sourceparts=$(dirname "$src")" \
            -o APT::Get::List-Cleanup=0 >/dev/null 2>&1 || apt-get update >/dev/null
    else
        apt-get update >/dev/null
    fi
    has_suite || die "apt still has no $SUITE lists after apt-get update"
fi

# ---- download and unpack --------------------------------------------------------------------
DEBS=$DIR/debs
mkdir -p "$DEBS"
for p in "${PKGS[@]}"; do
    # The version bookworm-backports has (the highest one its list names).
    ver=$(apt-cache madison "$p" | awk -F'|' -v s="$SUITE/main" '$3 ~ s { gsub(/ /, "", $2); print $2; exit }')
    if [[ -z $ver ]]; then
        # Not every package has a backport (seabios, ipxe-qemu may come from bookworm itself).
        ver=$(apt-cache policy "$p" | sed -n 's/^ *Candidate: *//p')
        [[ -n $ver && $ver != "(none)" ]] || die "no version of $p"
        say "$p: no $SUITE version, using $ver"
    fi
    file=$(ls "$DEBS/${p}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $file ]]; then
        say "downloading $p=$ver"
        (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$p=$ver" >/dev/null) ||
            die "apt-get download $p=$ver failed"
        file=$(ls "$DEBS/${p}_${ver//:/%3a}_"*.deb | head -n1)
    fi
    dpkg-deb -x "$file" "$DIR"
done

BIN=$DIR/usr/bin/qemu-system-x86_64
[[ -x $BIN ]] || die "no $BIN after unpacking"

# ---- wrapper --------------------------------------------------------------------------------
# Relative to its own location, so the folder can move.
cat >"$WRAP" <<'EOF'
#!/bin/sh
# QEMU from bookworm-backports unpacked beside the system's QEMU (written by Scripts/qemu10.sh).
d=$(cd "$(dirname "$0")" && pwd)
QEMU_MODULE_DIR=$d/usr/lib/x86_64-linux-gnu/qemu
export QEMU_MODULE_DIR
case " $* " in
    *" --version "* | *" -version "* | *" --help "* | *" -help "* | *" -h "*) exec "$d/usr/bin/qemu-system-x86_64" "$@" ;;
esac
exec "$d/usr/bin/qemu-system-x86_64" -L "$d/usr/share/qemu" -L "$d/usr/share/seabios" "$@"
EOF
chmod +x "$WRAP"

v=$("$WRAP" --version | head -n1) || die "$WRAP --version failed"
[[ $v == *"version 10."* ]] || die "unexpected version: $v"
# A missing shared library or module shows here rather than in the middle of a test.
"$WRAP" -machine none -nodefaults -display none -S -qmp stdio </dev/null >/dev/null 2>&1 <<<'{"execute":"qmp_capabilities"}
{"execute":"quit"}' || die "$WRAP does not start"
[[ -f $DIR/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ]] || say "warning: no block-iscsi.so (qemu-block-extra)"

say "$v in $DIR ($(($(date +%s) - T0)) s)"
say "run it as: $WRAP ARGS..."
say "  (= QEMU_MODULE_DIR=$DIR/usr/lib/x86_64-linux-gnu/qemu $BIN -L $DIR/usr/share/qemu -L $DIR/usr/share/seabios ARGS...)"
echo "$WRAP"
