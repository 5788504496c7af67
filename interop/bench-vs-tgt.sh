#!/usr/bin/env bash
# Side-by-side benchmark of vtgt and Debian's tgt on this machine, in one
# run: the same-size file-backed LUN from both, runs alternating
# (vtgt, tgt, vtgt, tgt, ...), PAIRS pairs per point, medians and per-pair
# ratios. Clients: libiscsi's iscsi-perf (reads) and `vtgt bench` (writes,
# mixes, latency). Also vtgt's NVMe/TCP on the same points, and the
# loopback ceiling (iperf3, one stream). Prints a Markdown report.
#
#   interop/bench-vs-tgt.sh [SECONDS_PER_RUN] [PAIRS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

secs=${1:-5}
pairs=${2:-3}
need_packages tgt libiscsi-bin iperf3 jq

if [ -z "${VTGT_BIN:-}" ]; then
    (cd "$root" && cargo build -q --release --bin vtgt) >&2
    VTGT_BIN="$root/build/release/vtgt"
fi
export VTGT_BIN
bin=$VTGT_BIN

work=$(mktemp -d /tmp/vtgt-bvt.XXXXXX)
TGT_PID=""
QUIET_PID=""
cleanup() {
    stop_vtgt
    # tgtd ignores SIGTERM while it has targets; it would keep a core busy.
    if [ -n "$TGT_PID" ]; then
        kill -9 "$TGT_PID" 2>/dev/null || true
        wait "$TGT_PID" 2>/dev/null || true
    fi
    [ -n "$QUIET_PID" ] && kill "$QUIET_PID" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

size=1G
tport=$(free_port)
tctl=$((RANDOM % 200 + 20))
truncate -s $size "$work/tgt.img"
tgtd -f --iscsi "portal=127.0.0.1:$tport" -C "$tctl" >"$work/tgtd.log" 2>&1 &
TGT_PID=$!
for _ in $(seq 1 50); do
    tgtadm -C "$tctl" --lld iscsi --op show --mode target >/dev/null 2>&1 && break
    sleep 0.1
done
tgtadm -C "$tctl" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.org.tgt:bench
tgtadm -C "$tctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
tgtadm -C "$tctl" --lld iscsi --op bind --mode target --tid 1 -I ALL

nport=$(free_port)
cat >"$work/vtgt.toml" <<TOML
data_dir = "$work/vdata"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[nvme]
listen = ["127.0.0.1:$nport"]
[[volume]]
name = "bench"
backend = "file"
path = "bench.img"
size = "1GiB"
[[volume]]
name = "mirror"
backend = "file"
size = "1GiB"
[volume.layout]
mirror = [{ file = "mirror-0.img" }, { file = "mirror-1.img" }]
[[target]]
name = "iqn.2026-11.org.vtgt:bench"
[[target.lun]]
id = 0
volume = "bench"
[[target.lun]]
id = 1
volume = "mirror"
[[subsystem]]
nqn = "nqn.2026-11.org.vtgt:bench"
allow_any_host = true
[[subsystem.namespace]]
nsid = 1
volume = "bench"
TOML
start_vtgt "$work/vtgt.toml" "$work/vtgt.log"
vportal=$(echo "$PORTALS" | head -1)

# Fill the LUNs so reads hit allocated blocks, not holes, all the same way:
# how a file was written decides its page-cache folio sizes, and with them
# what a 4 KiB buffered write costs the kernel.
dd if=/dev/urandom of="$work/fill" bs=1M count=64 status=none
fill() { # FILE
    for i in $(seq 0 15); do
        dd if="$work/fill" of="$1" bs=1M seek=$((i * 64)) conv=notrunc status=none
    done
}
for f in "$work/tgt.img" "$work/vdata/bench.img" "$work/vdata/mirror-0.img" "$work/vdata/mirror-1.img"; do
    fill "$f"
done
sync

perf_iops() { # URL QD
    timeout $((secs + 20)) iscsi-perf -m "$2" -b 8 -r -t "$secs" "$1" 2>&1 | tr '\r' '\n' |
        sed -n 's/^iops average \([0-9]*\).*/\1/p' | tail -1
}
bench() { # PORTAL TARGET LUN ARGS... -> JSON
    local portal=$1 target=$2 lun=$3
    shift 3
    "$bin" bench --portal "$portal" --target "$target" --lun "$lun" --duration "${secs}s" --json "$@" 2>/dev/null
}
cpu_per_command() { # PID URL -> microseconds of the target's CPU per 4 KiB read at QD 32
    local t0 t1 iops
    t0=$(awk '{print $14 + $15}' "/proc/$1/stat")
    iops=$(perf_iops "$2" 32)
    t1=$(awk '{print $14 + $15}' "/proc/$1/stat")
    awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$iops" -v s="$secs" \
        'BEGIN { printf "%.2f", (n > 0) ? d / hz * 1e6 / (n * s) : 0 }'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

report="$work/report.md"
{
    echo "| point | metric | vtgt (median) | tgt (median) | vtgt/tgt per pair |"
    echo "|---|---|---|---|---|"
} >"$report"

point() { # NAME METRIC VCMD TCMD (commands print one number)
    local name=$1 metric=$2 vcmd=$3 tcmd=$4 v t vs=() ts=() ratios=()
    for i in $(seq 1 "$pairs"); do
        # Alternate which side goes first, so drift favours neither.
        if [ $((i % 2)) -eq 1 ]; then
            v=$(eval "$vcmd")
            t=$(eval "$tcmd")
        else
            t=$(eval "$tcmd")
            v=$(eval "$vcmd")
        fi
        vs+=("$v")
        ts+=("$t")
        ratios+=("$(awk -v a="$v" -v b="$t" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')")
    done
    echo "| $name | $metric | $(printf '%s\n' "${vs[@]}" | median) | $(printf '%s\n' "${ts[@]}" | median) | ${ratios[*]} |" | tee -a "$report"
}

vt=iqn.2026-11.org.vtgt:bench
tt=iqn.2026-11.org.tgt:bench
vurl="iscsi://$vportal/$vt/0"
turl="iscsi://127.0.0.1:$tport/$tt/1"
echo "== side by side (${secs}s per run, $pairs pairs)"
point "4K rand read QD1 (iscsi-perf)" IOPS "perf_iops $vurl 1" "perf_iops $turl 1"
point "4K rand read QD32 (iscsi-perf)" IOPS "perf_iops $vurl 32" "perf_iops $turl 32"
point "4K rand read QD1 (vtgt bench)" "p50 us" \
    "bench $vportal $vt 0 --rw randread --bs 4k --qd 1 | jq .latency_us_p50" \
    "bench 127.0.0.1:$tport $tt 1 --rw randread --bs 4k --qd 1 | jq .latency_us_p50"
point "4K rand write QD32" IOPS \
    "bench $vportal $vt 0 --rw randwrite --bs 4k --qd 32 | jq .iops" \
    "bench 127.0.0.1:$tport $tt 1 --rw randwrite --bs 4k --qd 32 | jq .iops"
point "128K seq read QD8" "MB/s" \
    "bench $vportal $vt 0 --rw read --bs 128k --qd 8 | jq .mb_per_sec" \
    "bench 127.0.0.1:$tport $tt 1 --rw read --bs 128k --qd 8 | jq .mb_per_sec"
point "128K seq write QD8" "MB/s" \
    "bench $vportal $vt 0 --rw write --bs 128k --qd 8 | jq .mb_per_sec" \
    "bench 127.0.0.1:$tport $tt 1 --rw write --bs 128k --qd 8 | jq .mb_per_sec"
point "8K 70/30 rand mix QD16" IOPS \
    "bench $vportal $vt 0 --rw randrw --mix 70 --bs 8k --qd 16 | jq .iops" \
    "bench 127.0.0.1:$tport $tt 1 --rw randrw --mix 70 --bs 8k --qd 16 | jq .iops"

if "$bin" bench --help 2>/dev/null | grep -q nvme; then
    echo "== vtgt NVMe/TCP vs vtgt iSCSI"
    {
        echo
        echo "| point (vtgt) | metric | NVMe/TCP (median) | iSCSI (median) | NVMe/iSCSI per pair |"
        echo "|---|---|---|---|---|"
    } >>"$report"
    nb() { "$bin" bench --protocol nvme --portal "127.0.0.1:$nport" --target nqn.2026-11.org.vtgt:bench --lun 1 --duration "${secs}s" --json "$@" 2>/dev/null; }
    point "4K rand read QD32" IOPS "nb --rw randread --bs 4k --qd 32 | jq .iops" \
        "bench $vportal $vt 0 --rw randread --bs 4k --qd 32 | jq .iops"
    point "4K rand write QD32" IOPS "nb --rw randwrite --bs 4k --qd 32 | jq .iops" \
        "bench $vportal $vt 0 --rw randwrite --bs 4k --qd 32 | jq .iops"
    point "128K seq read QD8" "MB/s" "nb --rw read --bs 128k --qd 8 | jq .mb_per_sec" \
        "bench $vportal $vt 0 --rw read --bs 128k --qd 8 | jq .mb_per_sec"
fi

echo "== vtgt 2-leg mirror (tagged) vs plain volume"
{
    echo
    echo "| point (vtgt iSCSI) | metric | mirror (median) | plain (median) | mirror/plain per pair |"
    echo "|---|---|---|---|---|"
} >>"$report"
point "4K rand write QD32" IOPS \
    "bench $vportal $vt 1 --rw randwrite --bs 4k --qd 32 | jq .iops" \
    "bench $vportal $vt 0 --rw randwrite --bs 4k --qd 32 | jq .iops"

echo "== cost of metrics: two fresh vtgts, the same config, one with --no-metrics"
# Fresh and alike, so nothing but recording differs: the same one-volume
# config, each over its own copy of the same filled image.
stop_vtgt
for side in on off; do
    mkdir -p "$work/m-$side"
    fill "$work/m-$side/bench.img"
    cat >"$work/m-$side.toml" <<TOML
data_dir = "$work/m-$side"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[volume]]
name = "bench"
backend = "file"
path = "bench.img"
size = "1GiB"
[[target]]
name = "$vt"
[[target.lun]]
id = 0
volume = "bench"
TOML
done
sync
start_vtgt "$work/m-off.toml" "$work/m-off.log" --no-metrics --nvme-listen 127.0.0.1:0
QUIET_PID=$VTGT_PID
qportal=$(echo "$PORTALS" | head -1)
start_vtgt "$work/m-on.toml" "$work/m-on.log" --nvme-listen 127.0.0.1:0
oportal=$(echo "$PORTALS" | head -1)
{
    echo
    echo "| point (vtgt iSCSI) | metric | metrics on (median) | --no-metrics (median) | on/off per pair |"
    echo "|---|---|---|---|---|"
} >>"$report"
# IOPS on two cores move with the client's scheduling; the CPU time each
# target spends per command moves less.
point "4K rand read QD32 (iscsi-perf)" "CPU us/command" \
    "cpu_per_command $VTGT_PID iscsi://$oportal/$vt/0" "cpu_per_command $QUIET_PID iscsi://$qportal/$vt/0"
point "4K rand read QD32 (iscsi-perf)" IOPS \
    "perf_iops iscsi://$oportal/$vt/0 32" "perf_iops iscsi://$qportal/$vt/0 32"
point "4K rand write QD32" IOPS \
    "bench $oportal $vt 0 --rw randwrite --bs 4k --qd 32 | jq .iops" \
    "bench $qportal $vt 0 --rw randwrite --bs 4k --qd 32 | jq .iops"
kill "$QUIET_PID" 2>/dev/null || true
QUIET_PID=""
# A bound that noise cannot blur: what recording costs per command against
# the CPU time vtgt spends per command.
cpu_us=$(cpu_per_command "$VTGT_PID" "iscsi://$oportal/$vt/0")
rec=$(cd "$root" && cargo bench -q -p vtgt --bench metrics_cost 2>/dev/null | tail -1)
rec_ns=$(echo "$rec" | sed -n 's/.*: \([0-9.]*\) ns of recording.*/\1/p')
{
    echo
    echo "vtgt CPU per 4 KiB read at QD 32: $cpu_us us. $rec"
    awk -v r="${rec_ns:-0}" -v c="$cpu_us" 'BEGIN { if (c > 0) printf "Recording metrics: %.2f %% of vtgt CPU per command.\n", r / 1000 / c * 100 }'
} | tee -a "$report"

echo "== loopback ceiling (iperf3, one stream)"
ip_port=$(free_port)
iperf3 -s -1 -B 127.0.0.1 -p "$ip_port" >/dev/null 2>&1 &
sleep 0.5
ceiling=$(iperf3 -c 127.0.0.1 -p "$ip_port" -t "$secs" -J 2>/dev/null | jq '.end.sum_received.bits_per_second / 8e6' || echo 0)
echo "loopback iperf3: $ceiling MB/s" | tee -a "$report"
echo
echo "## Machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); $(tgtd --version 2>/dev/null | head -1 || echo tgt); $(dpkg-query -W -f='libiscsi-bin ${Version}' libiscsi-bin)"
echo
cat "$report"
