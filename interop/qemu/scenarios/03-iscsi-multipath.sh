# shellcheck shell=sh
# Scenario 3 (guest side): two portals, two sessions to one LU. Both paths
# show the same device identity; data written through one path (O_DIRECT)
# reads back identically through the other, both ways. Then dm-multipath
# over both paths (the table set with dmsetup: multipath-tools wants udev,
# which this guest has not): I/O through the multipath device goes on when
# one path fails, and the failed path is seen as failed. Last, with one
# path logged out the other still serves the data.
# Env from run.sh: PORT1 PORT2 TARGET SIZE
iscsid_start
step "iscsiadm -m discovery -t sendtargets -p $VTGT:$PORT1"
$ISCSIADM -m discovery -t sendtargets -p "$VTGT:$PORT1" | tee /tmp/disc
grep -q "^$VTGT:$PORT1,[0-9]* $TARGET\$" /tmp/disc || fail "portal 1 not reported"
grep -q "^$VTGT:$PORT2,[0-9]* $TARGET\$" /tmp/disc || fail "portal 2 not reported"
step "iscsiadm -m node -T $TARGET --login (both portals)"
$ISCSIADM -m node -T "$TARGET" --login
disks=$(wait_iscsi_disks "$TARGET" 2)
a=$(echo "$disks" | sed -n 1p)
b=$(echo "$disks" | sed -n 2p)
[ "$($ISCSIADM -m session | grep -c "$TARGET")" -eq 2 ] || fail "expected two sessions"
$ISCSIADM -m session
wa=$(cat "/sys/block/$a/device/wwid")
wb=$(cat "/sys/block/$b/device/wwid")
echo "$a: $wa"
echo "$b: $wb"
[ "$wa" = "$wb" ] || fail "the two paths report different device identifiers"
expect_size "$a" "$SIZE"
expect_size "$b" "$SIZE"
step "write via one path, read via the other"
pattern_cross "$a" "$b"
pattern_cross "$b" "$a"
pattern_cross "$a" "$b"
d1=$(iscsi_disk_at "$TARGET" "$PORT1")
d2=$(iscsi_disk_at "$TARGET" "$PORT2")
echo "portal $PORT1: $d1, portal $PORT2: $d2"
if [ -z "$d1" ] || [ -z "$d2" ] || [ "$d1" = "$d2" ]; then
    fail "cannot tell the paths apart"
fi

step "dm-multipath over $d1 and $d2 (round-robin)"
/sbin/modprobe dm-multipath
/sbin/modprobe dm-round-robin
sectors=$(cat "/sys/block/$d1/size")
mj1=$(cat "/sys/block/$d1/dev")
mj2=$(cat "/sys/block/$d2/dev")
DM_DISABLE_UDEV=1 /sbin/dmsetup create vtgtmp \
    --table "0 $sectors multipath 0 0 1 1 round-robin 0 2 1 $mj1 1 $mj2 1"
dm=$(ls "/sys/block/$d1/holders")
[ -b "/dev/$dm" ] || fail "no multipath block device"
/sbin/dmsetup table vtgtmp
dm_paths() { /sbin/dmsetup status vtgtmp; }
dm_paths
dd if=/dev/urandom of=/tmp/mp1 bs=1M count=4 2>/dev/null
dd if=/tmp/mp1 of="/dev/$dm" bs=1M seek=80 count=4 oflag=direct conv=notrunc 2>/dev/null
dd if="/dev/$d2" of=/tmp/mp1.back bs=1M skip=80 count=4 iflag=direct 2>/dev/null
[ "$(sha256sum </tmp/mp1)" = "$(sha256sum </tmp/mp1.back)" ] || fail "multipath write not seen on $d2"
echo "4 MiB written through /dev/$dm read back through $d2"
step "fail path $d1 (SCSI device offline); I/O through /dev/$dm goes on"
echo offline >"/sys/block/$d1/device/state"
dd if=/dev/urandom of=/tmp/mp2 bs=1M count=4 2>/dev/null
dd if=/tmp/mp2 of="/dev/$dm" bs=1M seek=90 count=4 oflag=direct conv=notrunc 2>/dev/null ||
    fail "write through multipath failed with one path down"
dd if="/dev/$dm" of=/tmp/mp2.back bs=1M skip=90 count=4 iflag=direct 2>/dev/null ||
    fail "read through multipath failed with one path down"
[ "$(sha256sum </tmp/mp2)" = "$(sha256sum </tmp/mp2.back)" ] || fail "multipath data differs with one path down"
dd if="/dev/$d2" of=/tmp/mp2.back bs=1M skip=90 count=4 iflag=direct 2>/dev/null
[ "$(sha256sum </tmp/mp2)" = "$(sha256sum </tmp/mp2.back)" ] || fail "data written with $d1 down not on $d2"
st=$(dm_paths)
echo "$st"
case "$st" in
*"$mj1 F"*) echo "dm-multipath marked $d1 ($mj1) failed and carried on through $d2" ;;
*) fail "dm-multipath did not mark $d1 failed" ;;
esac
echo running >"/sys/block/$d1/device/state"
/sbin/dmsetup message vtgtmp 0 reinstate_path "$mj1"
dm_paths
/sbin/dmsetup remove vtgtmp

step "log out of portal 1; portal 2 still serves the data"
dd if=/dev/urandom of=/tmp/keep bs=1M count=1 2>/dev/null
dd if=/tmp/keep of="/dev/$d1" bs=1M seek=100 count=1 oflag=direct conv=notrunc 2>/dev/null
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --logout
rest=$(iscsi_disks "$TARGET")
[ "$rest" = "$d2" ] || fail "expected only $d2 left, have: $rest"
dd if="/dev/$rest" of=/tmp/keep.back bs=1M skip=100 count=1 iflag=direct 2>/dev/null
[ "$(sha256sum </tmp/keep)" = "$(sha256sum </tmp/keep.back)" ] || fail "data differs on the remaining path"
echo "remaining path $rest (portal $PORT2) reads what $d1 (portal $PORT1) wrote"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT2" --logout
