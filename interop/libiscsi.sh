#!/usr/bin/env bash
# Runs libiscsi's conformance suite (iscsi-test-cu, family ALL, with a second
# portal for the multipath tests) against a fresh vtgt on loopback, and
# checks that iscsi-ls lists the target and its LUN. Extra passes: the
# ReadOnly family on a write-protected LU, the removable-medium families
# (PreventAllow, NoMedia, StartStopUnit) on a removable LU, the Sanitize
# family (iscsi-test-cu -S) on an LU of its own, and the Read and Write
# suites on a RAID10 volume and on a journaled mirror.
#
# CUnit counts a skipped test as passed, so this script reports real passes,
# skips and failures separately, and fails on any failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

need_packages libiscsi-bin

work=$(mktemp -d /tmp/vtgt-libiscsi.XXXXXX)
# LIBISCSI_LOG_DIR=DIR keeps the iscsi-test-cu and vtgt logs there.
keep_logs() {
    if [ -n "${LIBISCSI_LOG_DIR:-}" ]; then
        mkdir -p "$LIBISCSI_LOG_DIR" && cp "$work"/*.log "$LIBISCSI_LOG_DIR"/ 2>/dev/null || true
    fi
}
trap 'stop_vtgt; keep_logs; rm -rf "$work"' EXIT
target=iqn.2026-11.org.vtgt:libiscsi
cat >"$work/vtgt.toml" <<TOML
data_dir = "$work/data"
[iscsi]
nop_interval_secs = 10
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[iscsi.portals]]
listen = "127.0.0.2:0"
[[volume]]
name = "libiscsi"
backend = "file"
path = "libiscsi.img"
size = "256MiB"
[[volume]]
name = "libiscsi-ro"
backend = "file"
path = "libiscsi-ro.img"
size = "16MiB"
[[volume]]
name = "libiscsi-rm"
backend = "file"
path = "libiscsi-rm.img"
size = "16MiB"
[[volume]]
name = "libiscsi-san"
backend = "file"
path = "libiscsi-san.img"
size = "32MiB"
[[volume]]
name = "libiscsi-r10"
backend = "file"
size = "64MiB"
[volume.layout]
unit = "64KiB"
stripe = [
  { mirror = [{ file = "r10-a0.img" }, { file = "r10-a1.img" }] },
  { mirror = [{ file = "r10-b0.img" }, { file = "r10-b1.img" }] },
]
[[volume]]
name = "libiscsi-j"
backend = "file"
size = "64MiB"
[volume.layout]
mirror = [{ file = "j-a.img" }, { file = "j-b.img" }]
[volume.journal]
size = "8MiB"
count = 2
[[target]]
name = "$target"
[[target.lun]]
id = 0
volume = "libiscsi"
# A RAID10 volume (stripe over two mirrors) for the Read and Write suites.
[[target]]
name = "$target-r10"
[[target.lun]]
id = 0
volume = "libiscsi-r10"
# A journaled two-leg mirror (8 MiB journals, so long writes go in pieces
# and the journals fill and are recycled) for the Read and Write suites.
[[target]]
name = "$target-j"
[[target.lun]]
id = 0
volume = "libiscsi-j"
# A second target whose LU starts write protected, for the ReadOnly family:
# iscsi-test-cu decides once, from MODE SENSE WP, whether the LU is
# read-only, and skips ReadOnly.ReadOnlySBC on a writable one.
[[target]]
name = "$target-ro"
[[target.lun]]
id = 0
volume = "libiscsi-ro"
write_protect = true
# A removable LU, for PreventAllow, NoMedia and StartStopUnit.
[[target]]
name = "$target-rm"
[[target.lun]]
id = 0
volume = "libiscsi-rm"
removable = true
# An LU for the Sanitize family. Its overwrite is capped at 4 MiB/s, so a
# 32 MiB overwrite takes 8 s: Sanitize.Reset checks that a sanitize goes on
# across task management functions, resets and a reconnect (about 5 s).
[[target]]
name = "$target-san"
[[target.lun]]
id = 0
volume = "libiscsi-san"
sanitize_rate_mib = 4
TOML
start_vtgt "$work/vtgt.toml" "$work/vtgt.log"
p1=$(echo "$PORTALS" | sed -n 1p)
p2=$(echo "$PORTALS" | sed -n 2p)

echo "== iscsi-ls -s iscsi://$p1"
ls_out=$(iscsi-ls -s "iscsi://$p1")
echo "$ls_out"
echo "$ls_out" | grep -q "Target:$target" || { echo "iscsi-ls: target missing" >&2; exit 1; }
echo "$ls_out" | grep -q "Lun:0 .*DIRECT_ACCESS" || { echo "iscsi-ls: LUN 0 missing" >&2; exit 1; }

tests=${LIBISCSI_TESTS:-ALL}
echo "== iscsi-test-cu -d -t $tests (multipath URL on a second portal)"
set +e
timeout 1200 iscsi-test-cu -d -V -t "$tests" \
    "iscsi://$p1/$target/0" "iscsi://$p2/$target/0" >"$work/cu.log" 2>&1
rc=$?
# The ReadOnly family against the write-protected LU; its results are
# reported as "ro:ReadOnly.*".
ro_rc=0
ro_tests=${LIBISCSI_RO_TESTS-ALL.ReadOnly}
: >"$work/cu-ro.log"
if [ -n "$ro_tests" ]; then
    echo "== iscsi-test-cu -d -t $ro_tests (write-protected LU)"
    timeout 600 iscsi-test-cu -d -V -t "$ro_tests" \
        "iscsi://$p1/$target-ro/0" >"$work/cu-ro.log" 2>&1
    ro_rc=$?
fi
# The removable-medium families against the removable LU ("rm:"), with the
# multipath URL for the tests that want a second nexus.
rm_rc=0
rm_tests=${LIBISCSI_RM_TESTS-ALL.PreventAllow*,ALL.NoMedia*,ALL.StartStopUnit*}
: >"$work/cu-rm.log"
if [ -n "$rm_tests" ]; then
    echo "== iscsi-test-cu -d -t $rm_tests (removable LU)"
    timeout 600 iscsi-test-cu -d -V -t "$rm_tests" \
        "iscsi://$p1/$target-rm/0" "iscsi://$p2/$target-rm/0" >"$work/cu-rm.log" 2>&1
    rm_rc=$?
fi
# The Sanitize family (-S allows the SANITIZE tests) against its own LU
# ("san:"). No multipath URL: with one, Sanitize.Reservations takes its
# RESERVE(6) on the multipath session, which lives on to the end of the
# run, and the reservation then makes Sanitize.Reset a RESERVATION
# CONFLICT; without, the test's own second session ends, and the
# reservation with it.
san_rc=0
san_tests=${LIBISCSI_SANITIZE_TESTS-ALL.Sanitize*}
: >"$work/cu-san.log"
if [ -n "$san_tests" ]; then
    echo "== iscsi-test-cu -d -S -t $san_tests (sanitize LU)"
    timeout 900 iscsi-test-cu -d -S -V -t "$san_tests" \
        "iscsi://$p1/$target-san/0" >"$work/cu-san.log" 2>&1
    san_rc=$?
fi
# The Read and Write suites on the RAID10 volume, reported on their own
# line (they repeat main-suite tests on another composition).
r10_rc=0
rw_tests=ALL.Read6*,ALL.Read10*,ALL.Read12*,ALL.Read16*,ALL.Write10*,ALL.Write12*,ALL.Write16*
r10_tests=${LIBISCSI_R10_TESTS-$rw_tests}
: >"$work/cu-r10.log"
if [ -n "$r10_tests" ]; then
    echo "== iscsi-test-cu -d -t $r10_tests (RAID10 volume)"
    timeout 900 iscsi-test-cu -d -V -t "$r10_tests" \
        "iscsi://$p1/$target-r10/0" >"$work/cu-r10.log" 2>&1
    r10_rc=$?
fi
# The same suites on the journaled mirror.
j_rc=0
j_tests=${LIBISCSI_J_TESTS-$rw_tests}
: >"$work/cu-j.log"
if [ -n "$j_tests" ]; then
    echo "== iscsi-test-cu -d -t $j_tests (journaled mirror)"
    timeout 900 iscsi-test-cu -d -V -t "$j_tests" \
        "iscsi://$p1/$target-j/0" >"$work/cu-j.log" 2>&1
    j_rc=$?
fi
set -e

# One record per test: a test's result is the first "passed"/"FAILED" after
# its "Test: NAME ..." marker; any "[SKIPPED]" before that makes it a skip.
parse_cu() {
perl -ne '
    BEGIN { $suite = ""; }
    $suite = $1 if /^Suite: (\S+)/;
    while (/(Test: (\S+) \.\.\.|\[SKIPPED\]|\[FAILED\]|(?<![\[\w])passed\b|(?<![\[\w])FAILED(?!\]))/g) {
        my $m = $1;
        if ($m =~ /^Test: (\S+)/) { $cur = "$suite.$1"; $skip = 0; }
        elsif ($m eq "[SKIPPED]") { $skip = 1 if defined $cur; }
        elsif ($m eq "[FAILED]") { }
        elsif (defined $cur) {
            print(($m eq "passed" ? ($skip ? "SKIP" : "PASS") : "FAIL"), " $ENV{CU_PREFIX}$cur\n");
            undef $cur;
        }
    }
' "$1"
}
{
    CU_PREFIX= parse_cu "$work/cu.log"
    CU_PREFIX=ro: parse_cu "$work/cu-ro.log"
    CU_PREFIX=rm: parse_cu "$work/cu-rm.log"
    CU_PREFIX=san: parse_cu "$work/cu-san.log"
} >"$work/results"
CU_PREFIX=r10: parse_cu "$work/cu-r10.log" >"$work/results-r10"
r10_pass=$(grep -c '^PASS' "$work/results-r10" || true)
r10_skip=$(grep -c '^SKIP' "$work/results-r10" || true)
r10_fail=$(grep -c '^FAIL' "$work/results-r10" || true)
if [ -n "$r10_tests" ]; then
    echo "libiscsi on RAID10: $r10_pass passed, $r10_fail failed, $r10_skip skipped"
    if [ "$r10_fail" -gt 0 ] || [ "$r10_rc" -ne 0 ] || [ "$r10_pass" -eq 0 ]; then
        grep '^FAIL' "$work/results-r10" >&2 || true
        echo "libiscsi on RAID10 failed" >&2
        exit 1
    fi
fi

CU_PREFIX=j: parse_cu "$work/cu-j.log" >"$work/results-j"
j_pass=$(grep -c '^PASS' "$work/results-j" || true)
j_skip=$(grep -c '^SKIP' "$work/results-j" || true)
j_fail=$(grep -c '^FAIL' "$work/results-j" || true)
if [ -n "$j_tests" ]; then
    echo "libiscsi on a journaled mirror: $j_pass passed, $j_fail failed, $j_skip skipped"
    if [ "$j_fail" -gt 0 ] || [ "$j_rc" -ne 0 ] || [ "$j_pass" -eq 0 ]; then
        grep '^FAIL' "$work/results-j" >&2 || true
        echo "libiscsi on a journaled mirror failed" >&2
        exit 1
    fi
fi

pass=$(grep -c '^PASS' "$work/results" || true)
skip=$(grep -c '^SKIP' "$work/results" || true)
fail=$(grep -c '^FAIL' "$work/results" || true)
logs=("$work/cu.log" "$work/cu-ro.log" "$work/cu-rm.log" "$work/cu-san.log" "$work/cu-r10.log" "$work/cu-j.log")
grep -h -A4 'Run Summary' "${logs[@]}" || true
# A main-run skip whose test passes in an extra pass (ro:, rm:, san:) is
# covered; the others are not run anywhere.
sed -n 's/^PASS [a-z]*:\(.*\)/\1/p' "$work/results" | sort -u >"$work/extra-passed"
{ grep '^SKIP' "$work/results" || true; } | sed 's/^SKIP //' | sort -u >"$work/skipped"
covered=$(comm -12 "$work/skipped" "$work/extra-passed" | wc -l)
if [ "$skip" -gt 0 ]; then
    echo "-- skipped (+: passes in an extra pass):"
    while read -r t; do
        if grep -qxF "$t" "$work/extra-passed"; then echo " + $t"; else echo "   $t"; fi
    done <"$work/skipped"
fi
if [ "$fail" -gt 0 ] || [ "$rc" -ne 0 ] || [ "$ro_rc" -ne 0 ] \
    || [ "$rm_rc" -ne 0 ] || [ "$san_rc" -ne 0 ]; then
    echo "-- failed:"
    grep '^FAIL' "$work/results" | sed 's/^FAIL /   /'
    grep -n '\[FAILED\]\|CU_ASSERT' "${logs[@]}" | head -50
    [ "$fail" -eq 0 ] && fail=1
fi
if [ $((pass + skip + fail)) -eq 0 ]; then
    echo "no libiscsi test ran" >&2
    tail -20 "$work/cu.log" >&2
    exit 1
fi
echo "libiscsi: $pass passed, $fail failed, $skip skipped ($covered of the skips pass in an extra pass, $((skip - covered)) not run anywhere)"
[ "$fail" -eq 0 ]
