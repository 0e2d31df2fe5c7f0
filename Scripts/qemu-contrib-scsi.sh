#!/usr/bin/env bash
# Build QEMU's sample vhost-user-scsi backend (contrib/vhost-user-scsi) from Debian's QEMU
# source, so the load generator (vhost-user-scsi-bench) can be compared against it
# (Docs/BENCHMARKS.md, "Scripts/qemu-contrib-scsi.sh"). Debian packages no binary of it.
#
# Usage: Scripts/qemu-contrib-scsi.sh [DIR]      (default: guest/out/qemu-contrib of this repository)
#
# Steps (each ends with a one-line error when it fails):
#   1. adds a deb-src entry for bookworm in its own file,
#      /etc/apt/sources.list.d/vus-debian-src.sources, and refreshes only that list;
#   2. `apt-get source --download-only qemu` (bookworm's 7.2, the QEMU the host runs) into
#      DIR/src and unpacks it with `dpkg-source -x`, then makes the program send commands to
#      the iSCSI URL's LUN instead of always LUN 0 (a three-line sed; see below why);
#   3. installs the few build dependencies this one program needs: meson, ninja-build,
#      libglib2.0-dev, zlib1g-dev, libiscsi-dev, pkg-config, gcc (QEMU's configure insists on
#      zlib and glib even when everything else is off);
#   4. configures QEMU with every feature off except tools, vhost-user and libiscsi (no
#      emulator targets), and builds only `contrib/vhost-user-scsi/vhost-user-scsi` with ninja;
#   5. copies it to DIR/vhost-user-scsi-contrib.
# When DIR/vhost-user-scsi-contrib exists and `--help` runs, nothing is done (FORCE=1 redoes
# the build). Prints the binary's path on stdout as the last line.
# Needs root for the apt source and packages (only when they are missing).
# Environment: JOBS [2] parallel compile jobs for ninja.
# Run it as: DIR/vhost-user-scsi-contrib -s SOCKET -i iscsi://HOST:PORT/IQN/LUN
set -euo pipefail

say() { echo "qemu-contrib-scsi: $*" >&2; }
die() { echo "qemu-contrib-scsi: error: $*" >&2; exit 1; }

case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;; esac
(($# <= 1)) || die "too many arguments; usage: $0 [DIR]"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
DIR=${1:-$REPO/guest/out/qemu-contrib}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
OUT=$DIR/vhost-user-scsi-contrib
SUITE=bookworm
JOBS=${JOBS:-2}

works() { [[ -x $1 ]] && "$1" --help >/dev/null 2>&1; }

if [[ ${FORCE:-0} != 1 ]] && works "$OUT"; then
    say "up to date: $OUT"
    echo "$OUT"
    exit 0
fi

T0=$(date +%s)

# ---- 1. deb-src entry -----------------------------------------------------------------------
SRC_LIST=/etc/apt/sources.list.d/vus-debian-src.sources
has_source() { apt-cache showsrc qemu 2>/dev/null | grep -q '^Version: .*7\.2'; }
if ! has_source; then
    ((EUID == 0)) || die "apt knows no source package of QEMU; run this script as root once"
    if [[ ! -f $SRC_LIST ]]; then
        say "adding deb-src for $SUITE ($SRC_LIST)"
        cat >"$SRC_LIST" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    say "apt-get update (only $SRC_LIST)"
    apt-get update -o "Dir::Etc::sourcelist=$SRC_LIST" -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0 >/dev/null || die "apt-get update of $SRC_LIST failed"
    has_source || die "apt still knows no QEMU 7.2 source package after apt-get update"
fi

# ---- 2. fetch and unpack the source ---------------------------------------------------------
# The version of $SUITE itself (not a security update of another suite's list).
VER=$(apt-cache showsrc qemu | sed -n 's/^Version: //p' | grep -m1 '7\.2') ||
    die "no QEMU 7.2 source version"
SRCDIR=$DIR/src
TREE=$SRCDIR/qemu-${VER#*:}
mkdir -p "$SRCDIR"
if [[ ! -f $TREE/contrib/vhost-user-scsi/vhost-user-scsi.c ]]; then
    command -v dpkg-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends dpkg-dev >/dev/null || die "cannot install dpkg-dev (dpkg-source)"
    DSC=$SRCDIR/qemu_${VER#*:}.dsc
    if [[ ! -f $DSC ]]; then
        say "downloading the source of qemu=$VER"
        (cd "$SRCDIR" && apt-get source --download-only -q "qemu=$VER" >/dev/null 2>&1) ||
            die "apt-get source --download-only qemu=$VER failed"
    fi
    say "unpacking $(basename "$DSC")"
    rm -rf "$TREE"
    # (gpgv may warn that it lacks Debian's key for the .dsc: apt-get source has already
    # checked the files' hashes against the signed Release file.)
    dpkg-source -x "$DSC" "$TREE" >"$SRCDIR/dpkg-source.log" 2>&1 ||
        die "dpkg-source -x $DSC failed; see $SRCDIR/dpkg-source.log"
    [[ -f $TREE/contrib/vhost-user-scsi/vhost-user-scsi.c ]] ||
        die "the source has no contrib/vhost-user-scsi/vhost-user-scsi.c"
fi

# ---- 2b. one fix: send commands to the URL's LUN --------------------------------------------
# Upstream passes LUN 0 to iscsi_scsi_command_sync whatever LUN the URL names (the URL's LUN
# is parsed into lun->iscsi_lun and never used). tgt's LUN 0 is its controller (no READ
# CAPACITY, no data) and cannot be replaced, so without this the program cannot serve a tgt
# disk at all. The patched binary sends everything to the URL's LUN; nothing else changes.
C_FILE=$TREE/contrib/vhost-user-scsi/vhost-user-scsi.c
if ! grep -q 'vus_url_lun' "$C_FILE"; then
    say "patching contrib/vhost-user-scsi to use the URL's LUN instead of LUN 0"
    sed -i \
        -e 's/^static int vus_iscsi_add_lun(VusIscsiLun \*lun, char \*iscsi_uri)$/static int vus_url_lun; \/* the iSCSI URL'"'"'s LUN (Scripts\/qemu-contrib-scsi.sh) *\/\n\n&/' \
        -e 's/^\(    lun->iscsi_lun = iscsi_url->lun;\)$/\1\n    vus_url_lun = iscsi_url->lun;/' \
        -e 's/iscsi_scsi_command_sync(ctx, 0, task, NULL)/iscsi_scsi_command_sync(ctx, vus_url_lun, task, NULL)/' \
        "$C_FILE"
    [[ $(grep -c 'vus_url_lun' "$C_FILE") == 3 ]] ||
        die "patching $C_FILE failed (the source differs from QEMU 7.2's); remove $TREE and retry"
fi

# ---- 3. build dependencies of this one program ----------------------------------------------
PKGS=(meson ninja-build libglib2.0-dev zlib1g-dev libiscsi-dev pkg-config gcc)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing build dependencies (${missing[*]}); install them as root"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# ---- 4. configure and build only contrib/vhost-user-scsi ------------------------------------
# contrib/vhost-user-scsi is built when have_tools and have_vhost_user and libiscsi are true
# (meson.build, contrib/vhost-user-scsi/meson.build). An empty target list means no emulator.
BUILD=$TREE/build
TARGET=contrib/vhost-user-scsi/vhost-user-scsi
if [[ ! -f $BUILD/build.ninja ]]; then
    say "configuring (log: $BUILD/configure.log)"
    mkdir -p "$BUILD"
    (cd "$BUILD" && ../configure --without-default-features --disable-system --disable-user \
        --target-list= --enable-tools --enable-vhost-user --enable-libiscsi \
        >configure.log 2>&1) || die "configure failed; see the end of $BUILD/configure.log"
fi
say "building $TARGET with ninja -j $JOBS (log: $BUILD/ninja.log)"
(cd "$BUILD" && ninja -j "$JOBS" "$TARGET" >ninja.log 2>&1) ||
    die "ninja $TARGET failed; see the end of $BUILD/ninja.log"

# ---- 5. install beside the script's other outputs -------------------------------------------
install -m 0755 "$BUILD/$TARGET" "$OUT"
works "$OUT" || die "$OUT does not run (--help failed)"
say "built from QEMU $VER in $(($(date +%s) - T0)) s"
say "run it as: $OUT -s SOCKET -i iscsi://HOST:PORT/IQN/LUN   (serves one connection, then exits)"
echo "$OUT"
