# shellcheck shell=sh
# Scenario 4 (guest side): NVMe/TCP basic. Discovery, connect, the
# namespace has the volume's size, ext4 round trip with e2fsck, disconnect.
# Env from run.sh: NPORT NQN SIZE [NVME_CONNECT_ARGS]
nvme_target_ready
step "nvme discover -t tcp -a $NVME_ADDR -s $NPORT"
$NVME discover -t tcp -a "$NVME_ADDR" -s "$NPORT" | tee /tmp/disc
grep -q "subnqn: *$NQN" /tmp/disc || fail "discovery log has no entry for $NQN"
grep -q "traddr: *$NVME_ADDR" /tmp/disc || fail "discovery log does not name $NVME_ADDR"
step "nvme connect -t tcp -a $NVME_ADDR -s $NPORT -n $NQN ${NVME_CONNECT_ARGS:-}"
# shellcheck disable=SC2086 # NVME_CONNECT_ARGS is a list of flags
$NVME connect -t tcp -a "$NVME_ADDR" -s "$NPORT" -n "$NQN" ${NVME_CONNECT_ARGS:-}
ns=$(wait_nvme_disks "$NQN" 1)
step "nvme list"
$NVME list | tee /tmp/list
grep -q "/dev/$ns" /tmp/list || fail "nvme list does not show /dev/$ns"
expect_size "$ns" "$SIZE"
fs_roundtrip "$ns"
step "nvme disconnect -n $NQN"
$NVME disconnect -n "$NQN"
wait_for 10 sh -c "[ -z \"\$(ls /sys/block | grep nvme || true)\" ]" || fail "namespace still present after disconnect"
