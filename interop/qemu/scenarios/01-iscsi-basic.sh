# shellcheck shell=sh
# Scenario 1 (guest side): iSCSI basic. SendTargets discovery, login, the
# disk has the volume's size, ext4 round trip with e2fsck, logout.
# Env from run.sh: PORT1 TARGET SIZE
iscsid_start
step "iscsiadm -m discovery -t sendtargets -p $VTGT:$PORT1"
$ISCSIADM -m discovery -t sendtargets -p "$VTGT:$PORT1" | tee /tmp/disc
grep -q "^$VTGT:$PORT1,[0-9]* $TARGET\$" /tmp/disc || fail "discovery did not report $TARGET at $VTGT:$PORT1"
step "iscsiadm -m node -T $TARGET -p $VTGT:$PORT1 --login"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --login
disk=$(wait_iscsi_disks "$TARGET" 1)
echo "disk: $disk ($(cat "/sys/block/$disk/device/vendor") $(cat "/sys/block/$disk/device/model"))"
expect_size "$disk" "$SIZE"
fs_roundtrip "$disk"
step "iscsiadm -m node -T $TARGET -p $VTGT:$PORT1 --logout"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --logout
[ -z "$(iscsi_disks "$TARGET")" ] || fail "disk still present after logout"
