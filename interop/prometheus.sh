#!/usr/bin/env bash
# Checks vtgt's metrics, dashboards and alert rules against a real
# Prometheus: vtgt runs with some I/O, Prometheus scrapes it every second,
# and every dashboard panel expression and alert expression is evaluated
# through the HTTP query API. promtool checks the rules and the exposition.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"

need_packages prometheus jq curl

work=$(mktemp -d /tmp/vtgt-prom.XXXXXX)
PROM_PID=""
cleanup() {
    stop_vtgt
    [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mport=$(free_port)
pport=$(free_port)
target=iqn.2026-11.org.vtgt:prom
cat >"$work/vtgt.toml" <<TOML
data_dir = "$work/data"
[[iscsi.portals]]
listen = "127.0.0.1:0"
[[volume]]
name = "prom"
backend = "file"
path = "prom.img"
size = "64MiB"
[[target]]
name = "$target"
[[target.lun]]
id = 0
volume = "prom"
[nvme]
listen = ["127.0.0.1:0"]
[[subsystem]]
nqn = "nqn.2026-11.org.vtgt:prom"
allow_any_host = true
[[subsystem.namespace]]
nsid = 1
volume = "prom"
TOML
VTGT_METRICS_LISTEN="127.0.0.1:$mport" start_vtgt "$work/vtgt.toml" "$work/vtgt.log"
portal=$(echo "$PORTALS" | head -1)
bin=$(vtgt_bin)

cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/dashboards/alerts.yml
scrape_configs:
  - job_name: vtgt
    static_configs:
      - targets: ["127.0.0.1:$mport"]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$work/prom.log" 2>&1 &
PROM_PID=$!

q() {
    curl -fsS --max-time 10 "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$1"
}

echo "== waiting for the scrape target to be up"
up=""
for _ in $(seq 1 60); do
    up=$(q 'up{job="vtgt"}' 2>/dev/null | jq -r '.data.result[0].value[1] // empty' || true)
    [ "$up" = "1" ] && break
    sleep 1
done
[ "$up" = "1" ] || { echo "vtgt scrape target never came up" >&2; cat "$work/prom.log" >&2; exit 1; }

echo "== I/O through vtgt's initiator, iSCSI and NVMe/TCP"
nvme_port=$(sed -n 's/.*NVMe\/TCP port up listen=\([0-9.:]*\).*/\1/p' "$work/vtgt.log" | head -1)
[ -n "$nvme_port" ] || { echo "no NVMe/TCP port in the log" >&2; exit 1; }
"$bin" bench --portal "$portal" --target "$target" --rw randrw --bs 4k --qd 4 --ios 4000 --verify --json
rw_ops() { # reads and writes of volume "prom", as a scrape sees them now
    curl -fsS --max-time 10 "http://127.0.0.1:$mport/metrics" |
        awk '/^vtgt_volume_ops_total\{volume="prom",op="(read|write)"\}/ { n += $2 } END { print n + 0 }'
}
before=$(rw_ops)
"$bin" bench --protocol nvme --portal "$nvme_port" --target nqn.2026-11.org.vtgt:prom \
    --rw randrw --bs 4k --qd 4 --ios 4000 --verify --json
nvme_ops=$(($(rw_ops) - before))
# A refused login and a refused connect, so the failure series exist.
"$bin" bench --portal "$portal" --target iqn.2026-11.org.vtgt:nope --ios 1 --json >/dev/null 2>&1 || true
"$bin" bench --protocol nvme --portal "$nvme_port" --target nqn.2026-11.org.vtgt:nope \
    --ios 1 --json >/dev/null 2>&1 || true
# Let rates see a few samples after the I/O.
sleep 4

fail=0
checked=0
check() { # NAME EXPR MUST_HAVE_SERIES
    local name=$1 expr=$2 need=$3 out status n
    out=$(q "$expr" 2>&1) || { echo "FAIL $name: query error: $out"; fail=$((fail + 1)); return; }
    status=$(echo "$out" | jq -r .status)
    n=$(echo "$out" | jq -r '.data.result | length')
    checked=$((checked + 1))
    if [ "$status" != "success" ]; then
        echo "FAIL $name: $out"
        fail=$((fail + 1))
    elif [ "$need" = 1 ] && [ "$n" -eq 0 ]; then
        echo "FAIL $name: no series for: $expr"
        fail=$((fail + 1))
    else
        echo "ok   $name ($n series)"
    fi
}

echo "== dashboard panel expressions"
for d in "$root"/dashboards/*.json; do
    while IFS=$'\t' read -r title expr; do
        # Grafana variables: every volume, a rate window that spans samples.
        expr=${expr//\$__rate_interval/1m}
        expr=${expr//\$volume/.*}
        check "$(basename "$d" .json): $title" "$expr" 1
    done < <(jq -r '.panels[] | .title as $t | .targets[] | [$t, .expr] | @tsv' "$d")
    while IFS= read -r expr; do
        check "$(basename "$d" .json): variable" "${expr#label_values(}" 0
    done < <(jq -r '.templating.list[] | select(.type=="query") | .definition | capture("label_values\\((?<m>[a-z_]+)") | .m' "$d")
done

echo "== alert expressions (must evaluate; their metrics must exist)"
while IFS=$'\t' read -r name expr; do
    check "alert $name" "$expr" 0
    for m in $(echo "$expr" | grep -oE 'vtgt_[a-z_]+|\bup\b' | sed -E 's/_(bucket|count|sum)$//' | sort -u); do
        case $m in
            up) check "alert $name uses up" 'up{job="vtgt"}' 1 ;;
            *) check "alert $name uses $m" "{__name__=~\"${m}(_bucket|_count|_sum)?\"}" 1 ;;
        esac
    done
done < <(sed -n '/^ *- alert:/,$p' "$root/dashboards/alerts.yml" | awk '
    /^ *- alert:/ { if (n) print n "\t" e; n=$3; e=""; inexpr=0; next }
    /^ *expr: *\|/ { inexpr=1; next }
    /^ *expr:/ { sub(/^ *expr: */, ""); e=$0; inexpr=0; next }
    inexpr && /^ *(for|labels|annotations):/ { inexpr=0 }
    inexpr && !/^ *#/ { gsub(/^ +/, ""); e = e " " $0 }
    END { if (n) print n "\t" e }')

echo "== both front ends recorded into the volume's statistics"
for proto in iscsi nvme; do
    check "logins by $proto" "vtgt_logins_total{protocol=\"$proto\",result=\"success\"} > 0" 1
    check "refused $proto logins" "vtgt_logins_total{protocol=\"$proto\",result!=\"success\"} > 0" 1
done
checked=$((checked + 1))
if [ "$nvme_ops" -ge 4000 ]; then
    echo "ok   the NVMe bench's 4000 I/Os counted on the volume ($nvme_ops reads and writes)"
else
    echo "FAIL the NVMe bench's 4000 I/Os counted on the volume: $nvme_ops"
    fail=$((fail + 1))
fi

echo "== promtool"
promtool check rules "$root/dashboards/alerts.yml"
curl -fsS "http://127.0.0.1:$mport/metrics" | promtool check metrics

echo "prometheus: $((checked - fail)) passed, $fail failed"
[ "$fail" -eq 0 ]
