# shellcheck shell=sh
# Scenario 3 (guest side): two portals, two sessions to one LU. Both paths
# show the same device identity; data written through one path (O_DIRECT)
# reads back identically through the other, both ways; with one path logged
# out the other still serves the data.
# (dm-multipath is not used: multipath-tools needs udev, which this guest
# has not.)
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
step "log out of portal 1; portal 2 still serves the data"
d1=$(iscsi_disk_at "$TARGET" "$PORT1")
d2=$(iscsi_disk_at "$TARGET" "$PORT2")
echo "portal $PORT1: $d1, portal $PORT2: $d2"
if [ -z "$d1" ] || [ -z "$d2" ] || [ "$d1" = "$d2" ]; then
    fail "cannot tell the paths apart"
fi
dd if=/dev/urandom of=/tmp/keep bs=1M count=1 2>/dev/null
dd if=/tmp/keep of="/dev/$d1" bs=1M seek=100 count=1 oflag=direct conv=notrunc 2>/dev/null
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --logout
rest=$(iscsi_disks "$TARGET")
[ "$rest" = "$d2" ] || fail "expected only $d2 left, have: $rest"
dd if="/dev/$rest" of=/tmp/keep.back bs=1M skip=100 count=1 iflag=direct 2>/dev/null
[ "$(sha256sum </tmp/keep)" = "$(sha256sum </tmp/keep.back)" ] || fail "data differs on the remaining path"
echo "remaining path $rest (portal $PORT2) reads what $d1 (portal $PORT1) wrote"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT2" --logout
