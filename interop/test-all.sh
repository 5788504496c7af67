#!/usr/bin/env bash
# Every test vtgt has: unit, property and integration tests (cargo test),
# then the interop suites against real external clients. This is the
# README's test command and what CI runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. interop/lib.sh

# Debian packages the interop suites use.
need_packages libiscsi-bin prometheus jq curl

log=$(mktemp /tmp/cargo-test.XXXXXX)
trap 'rm -f "$log"' EXIT
echo "== cargo test --workspace"
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" | grep -E '^(test result|running|error|failures|---- )|panicked' || true
if grep -qE '^test result: FAILED|^error(\[|:)' "$log"; then
    echo "cargo test failed" >&2
    grep -A30 '^failures:' "$log" | head -80 >&2 || true
    exit 1
fi
summary=$(awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d ignored", p, f, i}' "$log")
echo "cargo: $summary"

echo "== interop: libiscsi"
bash interop/libiscsi.sh

echo "== interop: prometheus"
bash interop/prometheus.sh

# Real Linux hosts (open-iscsi, nvme-cli) in a QEMU guest; a few minutes on
# 2 cores. VTGT_SKIP_QEMU=1 leaves it out.
if [ "${VTGT_SKIP_QEMU:-0}" != 1 ]; then
    echo "== interop: real hosts in QEMU"
    bash interop/qemu.sh
fi
