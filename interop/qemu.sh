#!/usr/bin/env bash
# Real Linux hosts against vtgt: boots a Debian kernel in QEMU (TCG) with
# open-iscsi and nvme-cli inside, once per scenario in qemu/scenarios/, each
# against a freshly started vtgt on free loopback ports (qemu/run.sh).
# Builds the guest first (cached; qemu/build-guest.sh).
#
# Prints "qemu: N passed, N failed, N skipped" and exits non-zero on any
# failure. A skipped scenario (NVMe/TCP while vtgt has none) never counts as
# passed. QEMU_SCENARIOS="01-iscsi-basic 03-iscsi-multipath" runs a subset.
# Logs: $VTGT_QEMU_LOGS (default /tmp/qemu-interop-logs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

need_packages qemu-system-x86 socat cpio python3
unset QEMU_NVMET_SELFTEST   # the harness self-test is never part of the suite

# One build of vtgt and of the guest, shared by every scenario.
VTGT_BIN=$(vtgt_bin)
export VTGT_BIN
bash "$here/qemu/build-guest.sh" >/dev/null

if [ -n "${QEMU_SCENARIOS:-}" ]; then
    read -r -a scenarios <<<"$QEMU_SCENARIOS"
else
    scenarios=()
    for f in "$here"/qemu/scenarios/*.sh; do
        scenarios+=("$(basename "$f" .sh)")
    done
fi

pass=0 fail=0 skip=0
results=()
t0=$(date +%s)
for s in "${scenarios[@]}"; do
    ts=$(date +%s)
    rc=0
    bash "$here/qemu/run.sh" "$s" || rc=$?
    dt=$(( $(date +%s) - ts ))
    case $rc in
    0) pass=$((pass + 1)); results+=("PASS $s (${dt}s)") ;;
    77) skip=$((skip + 1)); results+=("SKIP $s") ;;
    *) fail=$((fail + 1)); results+=("FAIL $s (${dt}s)") ;;
    esac
done
echo "-- qemu scenarios ($(( $(date +%s) - t0 ))s):"
printf '   %s\n' "${results[@]}"
echo "qemu: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
