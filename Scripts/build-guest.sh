#!/usr/bin/env bash
# Build the small Linux test guest (kernel + initramfs) from Debian packages.
#
# Usage: Scripts/build-guest.sh [OUTDIR]        (default: guest/out of this repository)
#
# Produces OUTDIR/vmlinuz (from linux-image-cloud-amd64, fetched with `apt-get download` and
# unpacked with dpkg-deb in a temporary directory; no kernel is installed on the host) and
# OUTDIR/initrd.img (cpio newc, gzip) holding busybox-static with its applet links, the
# kernel modules virtio-scsi disks need (in dependency order, from modules.dep), fio,
# sg3-utils, e2fsprogs with every shared library ldd lists, and guest/init as /init.
# If OUTDIR already holds both files and OUTDIR/.stamp matches the hash of this script and
# guest/init, nothing is done. Set FORCE=1 to rebuild anyway.
# Installs the Debian packages it needs when they are missing (needs root then).
set -euo pipefail

say() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;; esac
(($# <= 1)) || die "too many arguments; usage: $0 [OUTDIR]"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
INIT=$REPO/guest/init
OUTDIR=${1:-$REPO/guest/out}
[[ -f $INIT ]] || die "missing $INIT"
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

HASH=$(cat "${BASH_SOURCE[0]}" "$INIT" | sha256sum | cut -d' ' -f1)
STAMP=$OUTDIR/.stamp
if [[ ${FORCE:-0} != 1 && -s $OUTDIR/vmlinuz && -s $OUTDIR/initrd.img && -f $STAMP ]] &&
    [[ $(head -n1 "$STAMP") == "$HASH" ]]; then
    say "up to date: $OUTDIR/vmlinuz, $OUTDIR/initrd.img ($(sed -n 2p "$STAMP")); nothing to do"
    exit 0
fi

T0=$(date +%s.%N)

# ---- host packages --------------------------------------------------------------------------
need_pkgs=()
for pair in busybox-static:/bin/busybox fio:/usr/bin/fio sg3-utils:/usr/bin/sg_inq \
    e2fsprogs:/sbin/mke2fs cpio:/usr/bin/cpio kmod:/sbin/depmod gzip:/bin/gzip \
    libaio1:/lib/x86_64-linux-gnu/libaio.so.1; do
    [[ -e ${pair#*:} ]] || need_pkgs+=("${pair%%:*}")
done
export DEBIAN_FRONTEND=noninteractive
if ((${#need_pkgs[@]})); then
    ((EUID == 0)) || die "missing packages ${need_pkgs[*]}; install them as root"
    say "installing ${need_pkgs[*]}"
    apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null
    }
fi
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    ((EUID == 0)) || die "apt does not know linux-image-cloud-amd64; run apt-get update as root"
    say "apt-get update (package lists missing)"
    apt-get update >/dev/null
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/build-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---- kernel ---------------------------------------------------------------------------------
# The debs are kept in OUTDIR/debs so that a rebuild after an init change downloads nothing.
DEBS=$OUTDIR/debs
mkdir -p "$DEBS"
apt_download() { # package -> path of the .deb in $DEBS
    local pkg=$1 ver file
    ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: *//p')
    [[ -n $ver && $ver != "(none)" ]] || die "no candidate version for $pkg"
    file=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $file ]]; then
        (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) ||
            die "apt-get download $pkg failed"
        file=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb | head -n1)
    fi
    echo "$file"
}
meta=$(apt_download linux-image-cloud-amd64)
kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
[[ -n $kpkg ]] || die "cannot find the versioned kernel package in $(dpkg-deb -f "$meta" Depends)"
kdeb=$(apt_download "$kpkg")
# Drop debs of older versions.
for f in "$DEBS"/*.deb; do [[ $f == "$meta" || $f == "$kdeb" ]] || rm -f "$f"; done
say "kernel package $(basename "$kdeb")"

dpkg-deb -x "$kdeb" "$WORK/k"
KVER=$(ls "$WORK/k/lib/modules" | head -n1)
[[ -n $KVER && -f $WORK/k/boot/vmlinuz-$KVER ]] || die "no vmlinuz in $kdeb"
depmod -b "$WORK/k" "$KVER"

# ---- initramfs tree -------------------------------------------------------------------------
R=$WORK/root
mkdir -p "$R"/usr/{bin,sbin,lib,lib64} "$R"/{dev,proc,sys,tmp,mnt,run,root,etc,var}
ln -s usr/bin "$R/bin"
ln -s usr/sbin "$R/sbin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
chmod 1777 "$R/tmp"
# The kernel opens /dev/console before /init runs (devtmpfs is not mounted yet then).
((EUID == 0)) && mknod -m 600 "$R/dev/console" c 5 1 && mknod -m 666 "$R/dev/null" c 1 3

# Modules: everything virtio-scsi disks, the sg driver and ext4 need, in load order.
MODS=(virtio_pci virtio_scsi sd_mod sg ext4 crc32c_intel)
: >"$WORK/modlist"
for m in "${MODS[@]}"; do
    modprobe -d "$WORK/k" -S "$KVER" --show-depends "$m" >>"$WORK/modlist" ||
        die "module $m not found for $KVER"
done
: >"$R/etc/vus-modules"
awk '$1 == "insmod" && !seen[$2]++ { print $2 }' "$WORK/modlist" | while read -r ko; do
    rel=${ko#"$WORK/k"}
    mkdir -p "$R$(dirname "$rel")"
    cp "$ko" "$R$rel"
    echo "$rel" >>"$R/etc/vus-modules"
done
cp "$WORK/k/lib/modules/$KVER"/modules.{dep,alias,builtin,order,symbols} "$R/lib/modules/$KVER/" 2>/dev/null || true
nmods=$(wc -l <"$R/etc/vus-modules")

# Programs. Real binaries first; busybox applet links only where no real one exists.
bins=(/usr/bin/fio)
mapfile -t -O "${#bins[@]}" bins < <(dpkg -L sg3-utils | grep -E '^/usr/bin/[^/]+$')
mapfile -t -O "${#bins[@]}" bins < <(dpkg -L e2fsprogs | grep -E '^(/usr)?/s?bin/[^/]+$')
for b in "${bins[@]}"; do
    [[ -x $b && ! -d $b ]] || continue
    case $b in */sbin/*) dst=$R/usr/sbin ;; *) dst=$R/usr/bin ;; esac
    cp -L "$b" "$dst/$(basename "$b")"
done
cp /bin/busybox "$R/usr/bin/busybox"
for applet in $(/bin/busybox --list-full); do
    name=${applet##*/}
    [[ -e $R/usr/bin/$name || -e $R/usr/sbin/$name || -L $R/usr/bin/$name || -L $R/usr/sbin/$name ]] && continue
    case $applet in *sbin/*) ln -s /usr/bin/busybox "$R/usr/sbin/$name" ;; *) ln -s /usr/bin/busybox "$R/usr/bin/$name" ;; esac
done

# Shared libraries of every dynamic binary, at the paths ldd reports.
find "$R/usr/bin" "$R/usr/sbin" -type f -perm -u+x ! -name busybox -print0 |
    { xargs -0 ldd 2>/dev/null || true; } | grep -oE '/[^ ]+' | grep -vE ':$' | sort -u >"$WORK/libs"
while read -r lib; do
    [[ -e $lib ]] || continue
    mkdir -p "$R$(dirname "$lib")"
    [[ -e $R$lib ]] || cp -L "$lib" "$R$lib"
done <"$WORK/libs"
nlibs=$(wc -l <"$WORK/libs")

# Configuration files.
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$R/etc/"
[[ -f /etc/e2scrub.conf ]] && cp /etc/e2scrub.conf "$R/etc/"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
ln -s /proc/mounts "$R/etc/mtab"
echo "$KVER" >"$R/etc/vus-kernel"
install -m 0755 "$INIT" "$R/init"

# Smoke test: the main programs find all their libraries inside the tree.
if ((EUID == 0)) && command -v chroot >/dev/null; then
    for cmd in "/usr/bin/fio --version" "/usr/bin/sg_inq --version" "/usr/sbin/mke2fs -V" \
        "/usr/sbin/e2fsck -V" "/usr/bin/busybox true"; do
        # shellcheck disable=SC2086
        chroot "$R" $cmd >/dev/null 2>&1 || die "'$cmd' does not run inside the initramfs tree (missing library?)"
    done
fi

# ---- pack -----------------------------------------------------------------------------------
(cd "$R" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
    gzip -n -${GZIP_LEVEL:-6} >"$WORK/initrd.img"
cp "$WORK/k/boot/vmlinuz-$KVER" "$OUTDIR/vmlinuz.tmp"
mv "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
mv "$WORK/initrd.img" "$OUTDIR/initrd.img"
desc="kernel $KVER ($(basename "$kdeb" .deb)), $nmods modules, $nlibs libraries"
printf '%s\n%s\n' "$HASH" "$desc" >"$STAMP"

T1=$(date +%s.%N)
say "built $OUTDIR/vmlinuz ($(du -h "$OUTDIR/vmlinuz" | cut -f1)) and $OUTDIR/initrd.img ($(du -h "$OUTDIR/initrd.img" | cut -f1)): $desc, in $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s"
