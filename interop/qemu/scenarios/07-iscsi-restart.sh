# shellcheck shell=sh
# Scenario 7 (guest side): vtgt restarts under a mounted filesystem. A
# write loop (each write fsync'ed) runs while the host kills vtgt (round 1:
# kill -9, round 2: SIGTERM) and starts it again on the same ports; the
# initiator reconnects by itself (replacement_timeout covers the outage).
# Every write confirmed before the final sync is then intact, after a
# cold remount, and e2fsck is clean.
# Env from run.sh: PORT1 TARGET SIZE CTL_PORT
# shellcheck disable=SC2034 # read by iscsid_start
ISCSI_REPLACEMENT_TIMEOUT=90
iscsid_start
$ISCSIADM -m discovery -t sendtargets -p "$VTGT:$PORT1"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --login
disk=$(wait_iscsi_disks "$TARGET" 1)
$MKFS -t ext4 -q -F "/dev/$disk"
mkdir -p "$MNT"
mount -t ext4 "/dev/$disk" "$MNT"
mkdir "$MNT/loop"
step "write loop; host restarts vtgt twice"
restart_loop "$MNT/loop" 2
dmesg | grep -iE 'connection[0-9:]+ .*(error|recover)|session recovery' | tail -6 || true
umount "$MNT"
step "e2fsck -fn /dev/$disk"
$FSCK -fn "/dev/$disk" || fail "e2fsck found errors after the restarts"
drop_caches
mount -t ext4 "/dev/$disk" "$MNT"
verify_confirmed "$MNT/loop"
umount "$MNT"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --logout
