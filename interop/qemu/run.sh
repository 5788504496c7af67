#!/usr/bin/env bash
# run.sh SCENARIO: runs one interop scenario. Starts a fresh vtgt on free
# 127.0.0.1 ports with a config made for the scenario, boots the guest
# (build-guest.sh) in QEMU (TCG) with the scenario's guest script, and
# reports the guest's verdict.
#
# SCENARIO is a name under scenarios/ (e.g. 01-iscsi-basic, with or
# without .sh). Exit status: 0 passed, 1 failed, 77 skipped.
#
# The guest reaches vtgt as 10.0.2.100:PORT through one QEMU guestfwd per
# port, each spawning `socat - TCP:127.0.0.1:PORT` per guest connection (a
# real TCP connection per iSCSI/NVMe connection). The user-mode network has
# restrict=on: the guest reaches nothing else.
#
# Environment: VTGT_BIN (else cargo build), QEMU_TIMEOUT (300 s),
# VTGT_QEMU_LOGS (where logs are kept; /tmp/qemu-interop-logs).
#
# QEMU_NVMET_SELFTEST=1 checks the harness itself while vtgt has no
# NVMe/TCP: the NVMe scenarios then run against the guest kernel's own
# NVMe/TCP target (nvmet on the guest's 127.0.0.1), never against vtgt, and
# their result says so. qemu.sh never sets it; it proves nothing about vtgt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$here/../lib.sh"

[ $# -eq 1 ] || { echo "usage: $0 SCENARIO" >&2; exit 2; }
scen=$(basename "$1" .sh)
scen_file=$here/scenarios/$scen.sh
[ -f "$scen_file" ] || { echo "no scenario $scen (see $here/scenarios)" >&2; exit 2; }

need_packages qemu-system-x86 socat cpio python3

timeout_s=${QEMU_TIMEOUT:-300}
logdir=${VTGT_QEMU_LOGS:-/tmp/qemu-interop-logs}
mkdir -p "$logdir"
serial=$logdir/$scen.serial.log
vlog=$logdir/$scen.vtgt.log
rm -f "$serial" "$logdir/$scen".vtgt*.log

# (Not named /tmp/vtgt-*: a cleanup of other runs' leftovers by that glob
# must not pull the files from under a running guest.)
work=$(mktemp -d /tmp/qemu-interop.XXXXXX)
qpid=""
# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    stop_vtgt
    rm -rf "$work"
}
trap cleanup EXIT

# What each scenario needs on the host side.
portals=1 chap=0 nvme=0 restart=0
case $scen in
*-iscsi-chap-digest) chap=1 ;;
*-iscsi-multipath) portals=2 ;;
*-nvme-basic | *-nvme-digest) nvme=1 ;;
*-iscsi-nvme-shared) nvme=1 ;;
*-iscsi-restart) restart=1 ;;
*-nvme-restart) nvme=1 restart=1 ;;
esac

selftest=0
if [ "${QEMU_NVMET_SELFTEST:-0}" = 1 ] && [ "$nvme" -eq 1 ]; then
    if [ "$restart" -eq 1 ]; then
        echo "SKIP: $scen: the nvmet self-test cannot restart a target inside the guest"
        exit 77
    fi
    selftest=1
    nvme=0   # vtgt serves only the iSCSI side
fi

bin=$(vtgt_bin)
export VTGT_BIN=$bin

# free_ports N: N distinct free TCP ports on 127.0.0.1. The ports are fixed
# before vtgt starts because the advertised portal address names them (and
# a restart must come back on the same ones).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r -a ports <<<"$(free_ports 3)"
PORT1=${ports[0]} PORT2=${ports[1]} NPORT=${ports[2]}
TARGET=iqn.2026-11.org.vtgt:qemu-$scen
NQN=nqn.2026-11.org.vtgt:qemu-$scen
SIZE_MIB=128
SIZE=$((SIZE_MIB * 1024 * 1024))
CHAP_USER="guest-host"
CHAP_SECRET="guest-chap-secret-1"
CHAP_MUTUAL_USER="vtgt-target"
CHAP_MUTUAL_SECRET="target-chap-secret-2"
CTL_PORT=7

cfg=$work/vtgt.toml
{
    echo "data_dir = \"$work/data\""
    echo "[iscsi]"
    echo "nop_interval_secs = 5"
    for p in $(seq 1 "$portals"); do
        port=${ports[$((p - 1))]}
        echo "[[iscsi.portals]]"
        echo "listen = \"127.0.0.1:$port\""
        echo "advertise = \"10.0.2.100:$port\""
    done
    echo "[[volume]]"
    echo "name = \"vol\""
    echo "backend = \"file\""
    echo "path = \"vol.img\""
    echo "size = \"${SIZE_MIB}MiB\""
    echo "[[target]]"
    echo "name = \"$TARGET\""
    if [ "$chap" -eq 1 ]; then
        echo "chap = { user = \"$CHAP_USER\", secret = \"$CHAP_SECRET\", mutual_user = \"$CHAP_MUTUAL_USER\", mutual_secret = \"$CHAP_MUTUAL_SECRET\" }"
    fi
    echo "[[target.lun]]"
    echo "id = 0"
    echo "volume = \"vol\""
    if [ "$nvme" -eq 1 ]; then
        # NVMe/TCP as vtgt's config takes it (examples/nvme.toml on the
        # nvme branch): ports under [nvme], subsystems with namespaces.
        echo "[nvme]"
        echo "listen = [{ listen = \"127.0.0.1:$NPORT\", advertise = \"10.0.2.100:$NPORT\" }]"
        echo "[[subsystem]]"
        echo "nqn = \"$NQN\""
        echo "allow_any_host = true"
        echo "[[subsystem.namespace]]"
        echo "nsid = 1"
        echo "volume = \"vol\""
    fi
} >"$cfg"

# NVMe/TCP is served only once vtgt has it: its help must name it (and not
# as unserved), and its config must know [nvme] and [[subsystem]]. A config
# vtgt rejects for any other reason is a failure, not a skip.
if [ "$nvme" -eq 1 ]; then
    help=$("$bin" serve --help 2>&1 || true)
    why=""
    if ! grep -qi nvme <<<"$help"; then
        why="vtgt serve --help does not mention NVMe"
    elif grep -qi 'nvme.*not served' <<<"$help"; then
        why="vtgt serve --help says NVMe/TCP is not served yet"
    elif ! "$bin" check-config "$cfg" >"$work/check.out" 2>&1; then
        if grep -qiE 'unknown field .?(nvme|subsystem)' "$work/check.out"; then
            why="vtgt check-config: $(head -c 300 "$work/check.out" | tr '\n' ' ')"
        else
            echo "FAIL: $scen: vtgt check-config rejects the scenario's config:" >&2
            cat "$work/check.out" >&2
            exit 1
        fi
    fi
    if [ -n "$why" ]; then
        echo "SKIP: NVMe/TCP not available: vtgt has no [nvme] support ($scen: $why)"
        exit 77
    fi
fi

# start: vtgt, then (for NVMe) a bounded wait for its NVMe port to accept.
start() {
    start_vtgt "$cfg" "$1"
    if [ "$nvme" -eq 1 ]; then
        local i
        for i in $(seq 1 50); do
            socat -u /dev/null "TCP:127.0.0.1:$NPORT" 2>/dev/null && return 0
            sleep 0.1
        done
        echo "vtgt: NVMe/TCP port $NPORT never accepted (try $i)" >&2
        return 1
    fi
}
start "$vlog"

# The guest image (cached) plus a per-run cpio with /init, the helpers and
# the scenario, concatenated (the kernel unpacks both).
mapfile -t guest < <(bash "$here/build-guest.sh")
kernel=${guest[0]} base=${guest[1]}
ov=$work/overlay
mkdir -p "$ov/lib/vtgt"
install -m 0755 "$here/guest/init" "$ov/init"
cp "$here/guest/common.sh" "$ov/lib/vtgt/common.sh"
cp "$here"/scenarios/*.sh "$ov/lib/vtgt/"
cp "$scen_file" "$ov/scenario.sh"
echo "$scen" >"$ov/scenario.name"
cat >"$ov/scenario.env" <<EOF
PORT1=$PORT1
PORT2=$PORT2
NPORT=$NPORT
TARGET=$TARGET
NQN=$NQN
SIZE=$SIZE
CHAP_USER=$CHAP_USER
CHAP_SECRET=$CHAP_SECRET
CHAP_MUTUAL_USER=$CHAP_MUTUAL_USER
CHAP_MUTUAL_SECRET=$CHAP_MUTUAL_SECRET
CTL_PORT=$CTL_PORT
NVMET_SELFTEST=$selftest
EOF
(cd "$ov" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/overlay.cpio.gz"
cat "$base" "$work/overlay.cpio.gz" >"$work/initrd"

# One guestfwd per port; a control channel (CTL_PORT) serves the state file
# the restart scenario polls. QEMU hands the relay the guest connection as
# stdin, stdout AND stderr, so socat must log to a file: its messages (say,
# "Connection refused" while vtgt restarts) would otherwise land in the
# guest's TCP stream as bytes of a PDU.
: >"$work/ctl"
fwd=""
for port in "$PORT1" "$PORT2" "$NPORT"; do
    fwd+=",guestfwd=tcp:10.0.2.100:$port-cmd:socat -lf $work/relay.log - TCP:127.0.0.1:$port"
done
fwd+=",guestfwd=tcp:10.0.2.100:$CTL_PORT-cmd:cat $work/ctl"

echo "== $scen: vtgt iSCSI 127.0.0.1:$PORT1$([ "$portals" -eq 2 ] && echo ",$PORT2")$([ "$nvme" -eq 1 ] && echo " NVMe/TCP 127.0.0.1:$NPORT"), guest log $serial"
t0=$(date +%s)
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 1 -m 1024 \
    -nodefaults -no-user-config -no-reboot -display none -monitor none \
    -serial "file:$serial" \
    -kernel "$kernel" -initrd "$work/initrd" \
    -append "console=ttyS0 quiet panic=-1" \
    -netdev "user,id=n0,restrict=on$fwd" \
    -device virtio-net-pci,netdev=n0 \
    </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!

# The restart scenarios: on the guest's VTGT-RESTART-REQUEST N, stop vtgt
# (round 1 kill -9, later rounds SIGTERM), start it again on the same
# ports, and tell the guest through the control file.
if [ "$restart" -eq 1 ]; then
    round=0
    for _ in $(seq 1 $((timeout_s * 5))); do
        kill -0 "$qpid" 2>/dev/null || break
        if grep -aq "VTGT-RESTART-REQUEST $((round + 1))" "$serial" 2>/dev/null; then
            round=$((round + 1))
            if [ "$round" -eq 1 ]; then
                echo "   round $round: kill -9 vtgt (pid $VTGT_PID)"
                kill -KILL "$VTGT_PID"
                wait "$VTGT_PID" 2>/dev/null || true
                VTGT_PID=""
            else
                echo "   round $round: SIGTERM vtgt (pid $VTGT_PID)"
                stop_vtgt
            fi
            sleep 2
            if ! start "$logdir/$scen.vtgt.$round.log"; then
                echo "FAIL: $scen: vtgt did not come back up for restart round $round"
                exit 1
            fi
            echo "   round $round: vtgt restarted (pid $VTGT_PID)"
            echo "restarted $round" >"$work/ctl"
        fi
        sleep 0.2
    done
fi

qrc=0
wait "$qpid" || qrc=$?
qpid=""
elapsed=$(( $(date +%s) - t0 ))
stop_vtgt

verdict=$(grep -a '^VTGT-RESULT:' "$serial" 2>/dev/null | tail -1 | sed 's/^VTGT-RESULT: //' || true)
verdict=${verdict%$'\r'}
if grep -aqE 'panicked at|RUST_BACKTRACE' "$logdir/$scen".vtgt*.log; then
    echo "vtgt panicked:" >&2
    grep -aE -A5 'panicked at' "$logdir/$scen".vtgt*.log >&2 || true
    verdict="FAIL (vtgt panicked)"
fi
if [ -z "$verdict" ]; then
    if [ "$qrc" -eq 124 ]; then
        verdict="FAIL (timed out after ${timeout_s}s)"
    else
        verdict="FAIL (no verdict; qemu exit $qrc)"
    fi
fi

case $verdict in
PASS)
    grep -aE '^(== |SELFTEST|VTGT-GUEST|disk:|nvme|/dev/|sd[a-z]+:|wrote via|remaining|refused|all [0-9]+|restart_loop|round|host restarted|.*Digest:|dm-multipath|4 MiB)' "$serial" |
        sed 's/^/   /' || true
    if [ "$selftest" -eq 1 ]; then
        echo "SELFTEST PASS: $scen against the guest kernel's nvmet, NOT vtgt (${elapsed}s)"
    else
        echo "PASS: $scen (${elapsed}s)"
    fi
    exit 0
    ;;
SKIP)
    echo "SKIP: $scen"
    exit 77
    ;;
*)
    echo "---- guest serial log ($serial):"
    tail -n 120 "$serial" 2>/dev/null | tr -d '\r' || true
    cat "$work/qemu.out" || true
    [ -s "$work/relay.log" ] && { echo "---- relay (socat) messages:"; tail -n 10 "$work/relay.log"; }
    echo "---- vtgt log (last 40 lines):"
    tail -n 40 "$vlog" || true
    echo "FAIL: $scen: ${verdict#FAIL } (${elapsed}s)"
    exit 1
    ;;
esac
