# shellcheck shell=sh disable=SC2034,SC3040 # variables for the scenarios; busybox ash has pipefail
# Guest-side helpers for the scenarios (busybox sh). /init sources
# /scenario.env (written by run.sh), then this file, then the scenario.
# Real tools are called by full path: busybox has applets of some of their
# names (modprobe, mke2fs) that would otherwise shadow them.
set -eu
set -o pipefail

VTGT=10.0.2.100     # vtgt as the guest reaches it (QEMU guestfwd)
MNT=/mnt/vol
ISCSIADM=/sbin/iscsiadm
NVME=/usr/sbin/nvme
MKFS=/sbin/mke2fs
FSCK=/sbin/e2fsck

step() { echo "== $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# wait_for SECONDS CMD...: runs CMD every 0.2 s until it succeeds (bounded).
wait_for() {
    _secs=$1
    shift
    _i=0
    while ! "$@" >/dev/null 2>&1; do
        _i=$((_i + 1))
        [ "$_i" -ge $((_secs * 5)) ] && return 1
        sleep 0.2
    done
    return 0
}

now() { cut -d. -f1 /proc/uptime; }

# ---------------------------------------------------------------- iSCSI ----

# iscsid_start [DIGEST]: writes iscsid.conf (node defaults that discovery
# copies into each node record) and starts iscsid in its own session.
iscsid_start() {
    _digest=${1:-None}
    cat >/etc/iscsi/iscsid.conf <<EOF
iscsid.startup = /bin/true
node.startup = manual
node.session.timeo.replacement_timeout = ${ISCSI_REPLACEMENT_TIMEOUT:-120}
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.initial_login_retry_max = 2
node.conn[0].iscsi.HeaderDigest = $_digest
node.conn[0].iscsi.DataDigest = $_digest
EOF
    setsid /sbin/iscsid -f >/tmp/iscsid.log 2>&1 &
    wait_for 10 grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix ||
        fail "iscsid did not start: $(cat /tmp/iscsid.log)"
}

# iscsi_disks TARGET: the sd devices of TARGET's sessions, one per line,
# found through sysfs (no udev here): /sys/block/sdX resolves to a path
# under .../sessionN/.
iscsi_disks() {
    for _s in /sys/class/iscsi_session/session*; do
        [ -e "$_s/targetname" ] || continue
        [ "$(cat "$_s/targetname")" = "$1" ] || continue
        _sid=${_s##*/}
        for _b in /sys/block/sd*; do
            [ -e "$_b" ] || continue
            case "$(readlink -f "$_b")" in
            */"$_sid"/*) echo "${_b##*/}" ;;
            esac
        done
    done
}

# iscsi_disk_at TARGET PORT: the disk of TARGET's session through portal
# port PORT (the connection's persistent_port in sysfs).
iscsi_disk_at() {
    for _s in /sys/class/iscsi_session/session*; do
        [ "$(cat "$_s/targetname")" = "$1" ] || continue
        _n=${_s##*session}
        [ "$(cat "/sys/class/iscsi_connection/connection$_n:0/persistent_port")" = "$2" ] || continue
        for _b in /sys/block/sd*; do
            case "$(readlink -f "$_b")" in
            */session$_n/*) echo "${_b##*/}" ;;
            esac
        done
    done
}

# wait_iscsi_disks TARGET COUNT: waits until TARGET has COUNT disks, prints them.
_have_disks() { [ "$(iscsi_disks "$1" | wc -l)" -ge "$2" ]; }
wait_iscsi_disks() {
    wait_for 30 _have_disks "$1" "$2" || {
        iscsiadm -m session -P 3 || true
        fail "target $1: expected $2 disk(s), found: $(iscsi_disks "$1" | tr '\n' ' ')"
    }
    iscsi_disks "$1"
}

# ------------------------------------------------------------------ NVMe ----

# Where the NVMe/TCP target is: vtgt, except in run.sh's harness self-test.
NVME_ADDR=$VTGT
[ "${NVMET_SELFTEST:-0}" = 1 ] && NVME_ADDR=127.0.0.1

# nvme_target_ready [BACKING]: nothing against vtgt. In the self-test
# (NVMET_SELFTEST=1) it sets up the kernel's own NVMe/TCP target (nvmet)
# on 127.0.0.1:$NPORT inside the guest, subsystem $NQN, namespace 1 on
# BACKING (default: a 128 MiB ramdisk), so the NVMe scenario scripts can be
# checked before vtgt serves NVMe/TCP.
nvme_target_ready() {
    [ "${NVMET_SELFTEST:-0}" = 1 ] || return 0
    echo "SELFTEST: kernel nvmet on $NVME_ADDR:$NPORT stands in for vtgt"
    _back=${1:-}
    if [ -z "$_back" ]; then
        /sbin/modprobe brd rd_nr=1 rd_size=$((SIZE / 1024))
        _back=/dev/ram0
    fi
    /sbin/modprobe nvmet
    /sbin/modprobe nvmet-tcp
    grep -q configfs /proc/mounts || mount -t configfs configfs /sys/kernel/config
    _c=/sys/kernel/config/nvmet
    mkdir "$_c/subsystems/$NQN"
    echo 1 >"$_c/subsystems/$NQN/attr_allow_any_host"
    mkdir "$_c/subsystems/$NQN/namespaces/1"
    echo "$_back" >"$_c/subsystems/$NQN/namespaces/1/device_path"
    echo 1 >"$_c/subsystems/$NQN/namespaces/1/enable"
    mkdir "$_c/ports/1"
    echo tcp >"$_c/ports/1/addr_trtype"
    echo ipv4 >"$_c/ports/1/addr_adrfam"
    echo "$NVME_ADDR" >"$_c/ports/1/addr_traddr"
    echo "$NPORT" >"$_c/ports/1/addr_trsvcid"
    ln -s "$_c/subsystems/$NQN" "$_c/ports/1/subsystems/$NQN"
}

# nvme_disks NQN: the namespace block devices of subsystem NQN.
nvme_disks() {
    for _b in /sys/block/nvme*; do
        [ -e "$_b" ] || continue
        case ${_b##*/} in *c*) continue ;; esac   # hidden per-path nodes
        _nqn=$(cat "$_b/device/subsysnqn" 2>/dev/null || true)
        [ "$_nqn" = "$1" ] && echo "${_b##*/}"
    done
    return 0
}

_have_ns() { [ "$(nvme_disks "$1" | wc -l)" -ge "$2" ]; }
wait_nvme_disks() {
    wait_for 30 _have_ns "$1" "$2" || {
        $NVME list || true
        fail "subsystem $1: expected $2 namespace(s), found: $(nvme_disks "$1" | tr '\n' ' ')"
    }
    nvme_disks "$1"
}

# ------------------------------------------------------------ block / fs ----

# expect_size DEV BYTES: /sys/block/DEV/size counts 512-byte sectors.
expect_size() {
    _sectors=$(cat "/sys/block/$1/size")
    [ $((_sectors * 512)) -eq "$2" ] || fail "$1: size $((_sectors * 512)) bytes, expected $2"
    echo "$1: $2 bytes ($_sectors sectors)"
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# write_files DIR COUNT: files of random data, sizes 64 KiB .. COUNT*256 KiB,
# checksums kept in guest memory (/tmp/sums).
write_files() {
    _i=1
    while [ "$_i" -le "$2" ]; do
        dd if=/dev/urandom of="$1/file$_i" bs=64k count=$((_i * 4)) 2>/dev/null
        _i=$((_i + 1))
    done
    (cd "$1" && sha256sum file*) >/tmp/sums
}

verify_files() {
    (cd "$1" && sha256sum -c /tmp/sums) || fail "checksums differ in $1"
}

# fs_roundtrip DEV: mkfs.ext4, mount, write, sync, umount, e2fsck -fn,
# remount (cold cache), verify, umount.
fs_roundtrip() {
    _dev=/dev/$1
    step "mkfs.ext4 $_dev"
    $MKFS -t ext4 -q -F "$_dev"
    mkdir -p "$MNT"
    mount -t ext4 "$_dev" "$MNT"
    step "write files"
    write_files "$MNT" 6
    sync
    umount "$MNT"
    step "e2fsck -fn $_dev"
    $FSCK -fn "$_dev" || fail "e2fsck found errors on $_dev"
    drop_caches
    mount -t ext4 "$_dev" "$MNT"
    step "verify after remount"
    verify_files "$MNT"
    umount "$MNT"
}

# pattern_cross WRITER READER: writes 1 MiB of random data at a random-ish
# offset through WRITER with O_DIRECT, reads it back through READER with
# O_DIRECT, and compares.
pattern_cross() {
    _off=$(( ($(head -c 2 /dev/urandom | od -An -tu2 | tr -d ' ') % 64) + 1 ))
    dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
    dd if=/tmp/pat of="/dev/$1" bs=1M seek="$_off" count=1 oflag=direct conv=notrunc 2>/dev/null
    dd if="/dev/$2" of=/tmp/back bs=1M skip="$_off" count=1 iflag=direct 2>/dev/null
    [ "$(sha256sum </tmp/pat)" = "$(sha256sum </tmp/back)" ] ||
        fail "wrote via $1 at MiB $_off, read different data via $2"
    echo "wrote via $1, read the same 1 MiB via $2 (offset $_off MiB, O_DIRECT)"
}

# ------------------------------------------------------------ restart ----

# ctl: what the host side says (run.sh serves a small state file on
# $VTGT:$CTL_PORT through a guestfwd command: no network behind it).
ctl() { nc -w 3 "$VTGT" "${CTL_PORT:-7}" </dev/null 2>/dev/null || true; }

# write_one DIR N: one file of 64 KiB random data, fsync'ed; its checksum is
# recorded (in guest memory) only once dd returned success.
write_one() {
    dd if=/dev/urandom of=/tmp/blk bs=64k count=1 2>/dev/null
    if dd if=/tmp/blk of="$1/w$2" bs=64k conv=fsync 2>/dev/null; then
        echo "$(sha256sum </tmp/blk | cut -d' ' -f1)  w$2" >>/tmp/confirmed
        return 0
    fi
    return 1
}

# restart_loop DIR ROUNDS: a write loop that asks the host to restart vtgt
# ROUNDS times (marker VTGT-RESTART-REQUEST N on the console), keeps writing
# while vtgt is down (writes block until the initiator reconnects), and
# goes on to the next round once the host says "restarted N" and 5 more
# writes completed. Bounded by RESTART_DEADLINE seconds in all.
restart_loop() {
    _dir=$1
    _rounds=$2
    _deadline=$(( $(now) + ${RESTART_DEADLINE:-180} ))
    : >/tmp/confirmed
    _n=0
    _round=1
    _after=-1
    while [ "$_round" -le "$_rounds" ]; do
        [ "$(now)" -lt "$_deadline" ] || fail "restart round $_round not done in time"
        _n=$((_n + 1))
        write_one "$_dir" "$_n" || fail "write $_n failed (I/O error while vtgt restarted?)"
        if [ "$_n" -eq 5 ] || [ "$_after" -eq 0 ]; then
            echo "VTGT-RESTART-REQUEST $_round"
            _after=-2
        fi
        if [ "$_after" -eq -2 ]; then
            if [ "$(ctl)" = "restarted $_round" ]; then
                echo "host restarted vtgt (round $_round) after write $_n"
                _after=5
            fi
        elif [ "$_after" -gt 0 ]; then
            _after=$((_after - 1))
            if [ "$_after" -eq 0 ]; then
                echo "round $_round: writes go on after the restart ($_n so far)"
                _round=$((_round + 1))
            fi
        fi
    done
    sync
    echo "restart_loop: $_n writes confirmed"
    cp /tmp/confirmed /tmp/sums.restart
}

verify_confirmed() {
    (cd "$1" && sha256sum -c /tmp/sums.restart >/tmp/verify.out 2>&1) || {
        grep -v ': OK$' /tmp/verify.out | head -20
        fail "a write confirmed before the final sync is not intact"
    }
    echo "all $(wc -l </tmp/sums.restart) confirmed writes intact"
}
