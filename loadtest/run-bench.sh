#!/usr/bin/env bash
# Benchmarks for the Spreekkamer SFU (docs/BENCHMARKS.md).
#
#   loadtest/run-bench.sh            full run: consults, group, ramp vs the SFU
#                                    and vs a plain UDP relay; results in
#                                    loadtest/results/
#   loadtest/run-bench.sh --smoke    CI: 2 consults for 5 s; fails unless media
#                                    was forwarded and latency measured
#
# Everything runs inside a private network namespace with only loopback
# (needs root for `ip netns`). Environment: RAMP_START, RAMP_STEP, RAMP_MAX,
# DURATION, CONSULTS, OUT (results directory), NO_BUILD=1 (use the binaries
# already in target/release).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1

OUT=${OUT:-$ROOT/loadtest/results}
[[ $SMOKE == 1 ]] && OUT=$(mktemp -d)
mkdir -p "$OUT"
NS="ltbench-$$"
PORT=18080
SECRET="loadtest-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=

cleanup() {
    # SERVER_PID is the backgrounded shell, not necessarily the server itself:
    # end everything still running in our namespace before removing it.
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        for _ in $(seq 1 50); do
            [[ -z "$(ip netns pids "$NS" 2>/dev/null)" ]] && break
            sleep 0.1
        done
    fi
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${NO_BUILD:-}" ]]; then
    echo "building (release)..." >&2
    cargo build --release -q -p spreekkamer -p loadtest
fi
BIN=$ROOT/target/release

ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

start_server() {
    # shellcheck disable=SC2016
    in_ns bash -c 'ulimit -n 65536 2>/dev/null || ulimit -n 4096 || true; exec "$@"' _ \
        "$BIN/spreekkamer" serve --listen "127.0.0.1:$PORT" --jwt-secret "$SECRET" \
        --announce-ip 127.0.0.1 --audit-log /dev/null --log-level error --demo-links false \
        --consult-grace 1s --waiting-room=false >"${TMPDIR:-/tmp}/ltbench-server-$$.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        if in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: the server did not start; log:" >&2
    cat "${TMPDIR:-/tmp}/ltbench-server-$$.log" >&2
    exit 1
}

lt() {
    in_ns bash -c 'ulimit -n 65536 2>/dev/null || ulimit -n 4096 || true; exec "$@"' _ \
        env SPREEKKAMER_JWT_SECRET="$SECRET" "$BIN/loadtest" "$@"
}

start_server
TARGET="ws://127.0.0.1:$PORT/ws"

if [[ $SMOKE == 1 ]]; then
    lt consults -n 2 --duration 5 --target "$TARGET" --quiet --json "$OUT/smoke.json"
    echo "loadtest smoke: ok ($OUT/smoke.json)"
    exit 0
fi

DURATION=${DURATION:-10}
CONSULTS=${CONSULTS:-50}
RAMP_START=${RAMP_START:-25}
RAMP_STEP=${RAMP_STEP:-25}
RAMP_MAX=${RAMP_MAX:-400}

echo "== consults ($CONSULTS 1:1) ==" >&2
lt consults -n "$CONSULTS" --duration "$DURATION" --target "$TARGET" \
    --json "$OUT/consults.json" | tee "$OUT/consults.txt"
echo "== group (6) ==" >&2
lt group --size 6 --duration "$DURATION" --target "$TARGET" \
    --json "$OUT/group.json" | tee "$OUT/group.txt"
echo "== ramp vs the SFU ==" >&2
lt ramp --start "$RAMP_START" --step "$RAMP_STEP" --max-consults "$RAMP_MAX" \
    --duration "$DURATION" --target "$TARGET" --json "$OUT/ramp-sfu.json" | tee "$OUT/ramp-sfu.txt"
echo "== ramp vs a plain UDP relay ==" >&2
lt ramp --relay --start "$RAMP_START" --step "$RAMP_STEP" --max-consults "$RAMP_MAX" \
    --duration "$DURATION" --json "$OUT/ramp-relay.json" | tee "$OUT/ramp-relay.txt"
"$BIN/loadtest" plot --out "$OUT/ramp.svg" "$OUT/ramp-sfu.json" "$OUT/ramp-relay.json"
"$BIN/loadtest" compare "$OUT/ramp-sfu.json" "$OUT/ramp-relay.json" | tee "$OUT/compare.txt" || true
echo "results in $OUT" >&2
