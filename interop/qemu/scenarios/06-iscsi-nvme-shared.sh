# shellcheck shell=sh
# Scenario 6 (guest side): one volume exported over iSCSI and NVMe/TCP at
# once. A filesystem written through the iSCSI disk reads back through the
# NVMe namespace (and raw O_DIRECT data both ways).
# Env from run.sh: PORT1 TARGET NPORT NQN SIZE
iscsid_start
step "iSCSI: discovery and login"
$ISCSIADM -m discovery -t sendtargets -p "$VTGT:$PORT1"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --login
sd=$(wait_iscsi_disks "$TARGET" 1)
step "NVMe/TCP: discover and connect"
nvme_target_ready "/dev/$sd"   # self-test only: nvmet re-exports the iSCSI disk
$NVME discover -t tcp -a "$NVME_ADDR" -s "$NPORT"
$NVME connect -t tcp -a "$NVME_ADDR" -s "$NPORT" -n "$NQN"
ns=$(wait_nvme_disks "$NQN" 1)
expect_size "$sd" "$SIZE"
expect_size "$ns" "$SIZE"
step "raw data: iSCSI -> NVMe and NVMe -> iSCSI (O_DIRECT)"
pattern_cross "$sd" "$ns"
pattern_cross "$ns" "$sd"
step "ext4 written via iSCSI ($sd)"
$MKFS -t ext4 -q -F "/dev/$sd"
mkdir -p "$MNT"
mount -t ext4 "/dev/$sd" "$MNT"
write_files "$MNT" 6
sync
umount "$MNT"
drop_caches
step "e2fsck -fn and read back via NVMe ($ns)"
$FSCK -fn "/dev/$ns" || fail "e2fsck via NVMe found errors"
mount -t ext4 -o ro "/dev/$ns" "$MNT"
verify_files "$MNT"
umount "$MNT"
$NVME disconnect -n "$NQN"
$ISCSIADM -m node -T "$TARGET" -p "$VTGT:$PORT1" --logout
