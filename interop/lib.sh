# Shared helpers for the interop scripts. Source it; do not run it.

# Installs Debian packages that are missing (needs root, or sudo).
need_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Builds vtgt (debug profile, shared with cargo test) unless VTGT_BIN is set.
vtgt_bin() {
    if [ -n "${VTGT_BIN:-}" ]; then
        echo "$VTGT_BIN"
        return
    fi
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    (cd "$root" && cargo build -q --bin vtgt) >&2
    echo "$root/build/debug/vtgt"
}

# start_vtgt CONFIG LOG [SERVE-ARGS...]: starts vtgt, waits for its portals,
# sets VTGT_PID and PORTALS (the bound addresses, one per line, in config
# order).
start_vtgt() {
    local cfg=$1 log=$2 bin
    shift 2
    bin=$(vtgt_bin)
    "$bin" serve --config "$cfg" --metrics-listen "${VTGT_METRICS_LISTEN:-127.0.0.1:0}" "$@" >"$log" 2>&1 &
    VTGT_PID=$!
    for _ in $(seq 1 100); do
        PORTALS=$(sed -n 's/.*iSCSI portal up listen=\([0-9.:]*\).*/\1/p' "$log")
        local want
        want=$(grep -c '^\[\[iscsi.portals\]\]' "$cfg")
        if [ -n "$PORTALS" ] && [ "$(echo "$PORTALS" | wc -l)" -ge "$want" ]; then
            return 0
        fi
        if ! kill -0 "$VTGT_PID" 2>/dev/null; then
            echo "vtgt exited during start-up:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "vtgt did not come up" >&2
    cat "$log" >&2
    return 1
}

stop_vtgt() {
    if [ -n "${VTGT_PID:-}" ] && kill -0 "$VTGT_PID" 2>/dev/null; then
        kill -TERM "$VTGT_PID"
        for _ in $(seq 1 50); do
            kill -0 "$VTGT_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$VTGT_PID" 2>/dev/null || true
    fi
    VTGT_PID=""
}

# A free loopback port: nothing answers a connect to it.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
