# shellcheck shell=sh
# Scenario 8 (guest side): scenario 7 over NVMe/TCP. nvme connect with a
# short reconnect delay and a controller-loss timeout longer than the
# outage, so the host reconnects by itself.
# Env from run.sh: NPORT NQN SIZE CTL_PORT
nvme_target_ready
$NVME discover -t tcp -a "$NVME_ADDR" -s "$NPORT"
$NVME connect -t tcp -a "$NVME_ADDR" -s "$NPORT" -n "$NQN" --reconnect-delay=1 --ctrl-loss-tmo=90
ns=$(wait_nvme_disks "$NQN" 1)
$MKFS -t ext4 -q -F "/dev/$ns"
mkdir -p "$MNT"
mount -t ext4 "/dev/$ns" "$MNT"
mkdir "$MNT/loop"
step "write loop; host restarts vtgt twice"
restart_loop "$MNT/loop" 2
dmesg | grep -iE 'nvme.*(reconnect|error|Successfully)' | tail -6 || true
umount "$MNT"
step "e2fsck -fn /dev/$ns"
$FSCK -fn "/dev/$ns" || fail "e2fsck found errors after the restarts"
drop_caches
mount -t ext4 "/dev/$ns" "$MNT"
verify_confirmed "$MNT/loop"
umount "$MNT"
$NVME disconnect -n "$NQN"
