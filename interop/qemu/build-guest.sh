#!/usr/bin/env bash
# Builds the QEMU guest the interop scenarios boot: a Debian kernel and an
# initramfs holding busybox, open-iscsi, nvme-cli, e2fsprogs and kmod, made
# from Debian packages only (apt-get download + dpkg-deb -x; no debootstrap,
# no images). The shared libraries those binaries need come from the
# extracted packages first, then from the host (a Debian system of the same
# release).
#
# Output (printed on stdout, one per line): the kernel image, then the base
# initramfs (cpio newc, gzip). Both are cached under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/vtgt-guest/KEY/
# where KEY hashes the package versions and this script, so a rerun with the
# same packages costs nothing. run.sh appends a second, per-run cpio archive
# (the /init script and the scenario) to the base one.
#
# Usage: build-guest.sh [--force]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$here/../lib.sh"

force=0
[ "${1:-}" = "--force" ] && force=1

need_packages cpio gzip

# The packages the guest is made of, with the libraries their binaries link
# to, so the guest does not depend on what the host has installed; only the
# C library and the dynamic loader come from the host (same Debian release).
tools=(busybox-static open-iscsi nvme-cli e2fsprogs kmod dmsetup)
libs=(libisns0 libopeniscsiusr libnvme1 libjson-c5 libkmod2 libext2fs2
      libcom-err2 libss2 libdbus-1-3 libdevmapper1.02.1 libssl3 libsystemd0
      libselinux1 libpcre2-8-0 libgcrypt20 liblz4-1 libzstd1 liblzma5 libcap2
      libgpg-error0 zlib1g libblkid1 libmount1 libuuid1 libudev1)

# linux-image-amd64 is a metapackage; the kernel is its dependency. apt's
# lists are needed to resolve it: fetch them once if they are empty.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || { echo "build-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
pkgs=("$kpkg" "${tools[@]}" "${libs[@]}")

# One apt-cache call for all candidates (each call costs about a second).
versions=$(apt-cache policy "${pkgs[@]}" |
    awk '/^[^ ].*:$/ {p = substr($1, 1, length($1) - 1)} /^ +Candidate:/ {print p "=" $2}')
for p in "${pkgs[@]}"; do
    if ! echo "$versions" | grep -q "^$p=[0-9]"; then
        echo "build-guest: no candidate version for $p" >&2
        exit 1
    fi
done
key=$( { printf '%s' "$versions"; cat "$0"; } | sha256sum | cut -c1-16)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/vtgt-guest/$key"

if [ "$force" -eq 0 ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/base.cpio.gz" ]; then
    echo "$cache/vmlinuz"
    echo "$cache/base.cpio.gz"
    exit 0
fi

work=$(mktemp -d /tmp/qemu-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/x" "$work/root"
chmod 0755 "$work"
chmod 0777 "$work/debs"   # apt's _apt user writes the downloads

echo "build-guest: downloading ${pkgs[*]}" >&2
(cd "$work/debs" && apt-get download -q "${pkgs[@]}" >/dev/null)
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/x"
done
x=$work/x
root=$work/root

kver=$(ls "$x/lib/modules")
[ "$(echo "$kver" | wc -l)" -eq 1 ] || { echo "build-guest: expected one kernel, got: $kver" >&2; exit 1; }

# --- file tree -------------------------------------------------------------
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,run/lock/iscsi,tmp,mnt,var/lib/iscsi,etc/iscsi,etc/nvme,root}

cp "$x/bin/busybox" "$root/bin/busybox"
# The real tools, at their Debian paths.
install -m 0755 "$x/bin/kmod" "$root/bin/kmod"
for t in modprobe insmod rmmod lsmod depmod modinfo; do
    ln -sf /bin/kmod "$root/sbin/$t"
done
for t in iscsid iscsiadm iscsi-iname mke2fs e2fsck tune2fs dumpe2fs dmsetup; do
    install -m 0755 "$x/sbin/$t" "$root/sbin/$t"
done
ln -sf mke2fs "$root/sbin/mkfs.ext4"
ln -sf e2fsck "$root/sbin/fsck.ext4"
install -m 0755 "$x/usr/sbin/nvme" "$root/usr/sbin/nvme"

# Busybox applets, except where a real tool of the same name exists.
"$root/bin/busybox" --list-full | while read -r applet; do
    name=${applet##*/}
    case $name in busybox|dmsetup|modprobe|insmod|rmmod|lsmod|depmod|modinfo|mke2fs|e2fsck|mkfs.ext4|fsck.ext4|tune2fs|dumpe2fs|nvme) continue ;; esac
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

# Shared libraries: resolve with ldd, extracted packages first.
libpath="$x/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu"
mkdir -p "$root/lib/x86_64-linux-gnu"
for b in "$root/bin/kmod" "$root"/sbin/{iscsid,iscsiadm,iscsi-iname,mke2fs,e2fsck,tune2fs,dumpe2fs,dmsetup} "$root/usr/sbin/nvme"; do
    out=$(LD_LIBRARY_PATH=$libpath ldd "$b")
    if echo "$out" | grep -q 'not found'; then
        echo "build-guest: $b: missing libraries:" >&2
        echo "$out" | grep 'not found' >&2
        exit 1
    fi
    echo "$out" | awk '/=> \// {print $3}' | while read -r lib; do
        dst="$root/lib/x86_64-linux-gnu/$(basename "$lib")"
        [ -e "$dst" ] || cp -L "$lib" "$dst"
    done
done
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"

# --- kernel modules ----------------------------------------------------------
# The modules the scenarios load, and everything they depend on (resolved by
# the real modprobe against the extracted tree, after depmod builds the
# modules.dep the kernel package does not ship).
kmod_run() { # kmod_run NAME ARGS...: runs the extracted kmod as NAME
    local name=$1
    shift
    (export LD_LIBRARY_PATH="$libpath" && exec -a "$name" "$x/bin/kmod" "$@")
}
kmod_run depmod -b "$x" "$kver"
# nvmet, nvmet-tcp and brd serve run.sh's harness self-test (the kernel's own
# NVMe/TCP target inside the guest), not the scenarios against vtgt.
mods=(virtio_pci virtio_net iscsi_tcp sd_mod nvme-tcp ext4 crc32c_generic crc32c-intel dm-multipath dm-round-robin
      nvmet nvmet-tcp brd configfs)
mkdir -p "$root/lib/modules/$kver"
for m in "${mods[@]}"; do
    kmod_run modprobe -d "$x" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r ko; do
    rel=${ko#"$x"/}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$ko" "$root/$rel"
done
cp "$x/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/" 2>/dev/null || true
kmod_run depmod -b "$root" "$kver"

# --- static config -------------------------------------------------------------
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "127.0.0.1 localhost" >"$root/etc/hosts"
echo "vtgt-guest" >"$root/etc/hostname"
echo "$versions" >"$root/etc/vtgt-guest-packages"

# --- pack -------------------------------------------------------------------------
mkdir -p "$cache.tmp"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$cache.tmp/base.cpio.gz"
cp "$x/boot/vmlinuz-$kver" "$cache.tmp/vmlinuz"
echo "$kver" >"$cache.tmp/kernel-version"
echo "$versions" >"$cache.tmp/packages"
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "build-guest: $cache ($(du -sh "$cache" | cut -f1))" >&2
echo "$cache/vmlinuz"
echo "$cache/base.cpio.gz"
