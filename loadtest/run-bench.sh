#!/usr/bin/env bash
# Benchmarks for the Spreekkamer SFU (docs/BENCHMARKS.md).
#
#   loadtest/run-bench.sh            full run: consults, group, ramp vs the SFU
#                                    and vs a plain UDP relay; results in
#                                    loadtest/results/
#   loadtest/run-bench.sh --smoke    CI: 2 consults for 5 s; fails unless media
#                                    was forwarded and latency measured; then
#                                    1 consult for 3 s against Janus (skipped,
#                                    saying why, when Janus cannot be installed)
#   loadtest/run-bench.sh --compare  consults and group of 6 against Spreekkamer
#                                    and Janus VideoRoom, then the same ramp
#                                    against both and the plain UDP relay;
#                                    prints the ratios (compare-ratios.txt);
#                                    results/compare-*,
#                                    results/compare.svg
#
# Everything runs inside a private network namespace (needs root for
# `ip netns`) with loopback and a veth pair jan0/jan1 holding 10.77.0.1/32:
# Janus never gathers loopback candidates, so its media (and the generator's
# peers talking to it) use that address. Janus is installed from Debian
# (apt-get install janus) when missing; the config is loadtest/janus/.
# Environment: RAMP_START, RAMP_STEP, RAMP_MAX, DURATION, CONSULTS, OUT
# (results directory), NO_BUILD=1 (use the binaries already in
# target/release), NO_JANUS=1 (skip Janus in --smoke).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0
COMPARE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    --compare) COMPARE=1 ;;
    "") ;;
    *) echo "usage: $0 [--smoke|--compare]" >&2; exit 1 ;;
esac

OUT=${OUT:-$ROOT/loadtest/results}
[[ $SMOKE == 1 ]] && OUT=$(mktemp -d)
mkdir -p "$OUT"
NS="ltbench-$$"
PORT=18080
JANUS_PORT=8188
JANUS_IP=10.77.0.1
JANUS_PLUGINS=/usr/lib/x86_64-linux-gnu/janus/plugins
JANUS_LOG="${TMPDIR:-/tmp}/ltbench-janus-$$.log"
JANUS_PID=
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
# An address that is not loopback, for Janus (libnice skips loopback).
ip -n "$NS" link add jan0 type veth peer name jan1
ip -n "$NS" addr add "$JANUS_IP/32" dev jan0
ip -n "$NS" link set jan0 up
ip -n "$NS" link set jan1 up
in_ns() { ip netns exec "$NS" "$@"; }

# Janus from Debian, installed quietly when missing. Prints why not on
# failure. A freshly installed package's service (which would listen on all
# interfaces with the stock config) is disabled again: we only ever run
# Janus ourselves, inside the namespace, with loadtest/janus/.
ensure_janus() {
    if command -v janus >/dev/null && [[ -e "$JANUS_PLUGINS/libjanus_videoroom.so" ]]; then
        return 0
    fi
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "janus: not installed, and cannot install it here (needs root and apt-get)" >&2
        return 1
    fi
    echo "installing janus (apt-get install janus)..." >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus >/dev/null 2>&1; }; }; then
        echo "janus: apt-get install janus failed (no package repository reachable?)" >&2
        return 1
    fi
    if command -v systemctl >/dev/null; then
        systemctl disable --now janus >/dev/null 2>&1 || true
    fi
    if ! [[ -e "$JANUS_PLUGINS/libjanus_videoroom.so" ]]; then
        echo "janus: installed, but $JANUS_PLUGINS/libjanus_videoroom.so is missing" >&2
        return 1
    fi
}

start_janus() {
    in_ns bash -c 'ulimit -n 65536 2>/dev/null || ulimit -n 4096 || true; exec "$@"' _ \
        janus -C "$ROOT/loadtest/janus/janus.jcfg" -F "$ROOT/loadtest/janus" -o \
        >"$JANUS_LOG" 2>&1 &
    JANUS_PID=$!
    for _ in $(seq 1 100); do
        if in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$JANUS_PORT" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: Janus did not start; log:" >&2
    cat "$JANUS_LOG" >&2
    return 1
}

stop_janus() {
    local pid
    pid=$(in_ns ss -Hltnp "sport = :$JANUS_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null
    [[ -n "$JANUS_PID" ]] && wait "$JANUS_PID" 2>/dev/null
    JANUS_PID=
    return 0
}

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
JANUS_URL="ws://127.0.0.1:$JANUS_PORT/"
lt_janus() {
    lt "$@" --janus "$JANUS_URL" --local-ip "$JANUS_IP"
}

if [[ $SMOKE == 1 ]]; then
    lt consults -n 2 --duration 5 --target "$TARGET" --quiet --json "$OUT/smoke.json"
    echo "loadtest smoke: ok ($OUT/smoke.json)"
    if [[ -n "${NO_JANUS:-}" ]]; then
        echo "loadtest smoke: Janus skipped (NO_JANUS set)"
    elif ensure_janus; then
        start_janus
        lt_janus consults -n 1 --duration 3 --quiet --json "$OUT/smoke-janus.json"
        stop_janus
        echo "loadtest smoke: Janus ok ($OUT/smoke-janus.json)"
    else
        echo "loadtest smoke: Janus skipped (see above)"
    fi
    exit 0
fi

if [[ $COMPARE == 1 ]]; then
    DURATION=${DURATION:-10}
    RAMP_START=${RAMP_START:-25}
    RAMP_STEP=${RAMP_STEP:-25}
    RAMP_MAX=${RAMP_MAX:-200}
    # The ramp's stop thresholds (the tool's defaults: 0.5 % loss, p99 50 ms).
    # On a shared machine they may end every ramp at its first step; raise
    # them to compare CPU per packet at higher loads (capacity figures are
    # then only valid for the thresholds used, which the reports record).
    MAX_LOSS=${MAX_LOSS:-0.005}
    MAX_P99_MS=${MAX_P99_MS:-50}
    ensure_janus || exit 1
    RAMP=(ramp --start "$RAMP_START" --step "$RAMP_STEP" --max-consults "$RAMP_MAX"
        --duration "$DURATION" --max-loss "$MAX_LOSS" --max-p99-ms "$MAX_P99_MS")
    CONSULTS=${CONSULTS:-20}
    echo "== $CONSULTS consults vs Spreekkamer ==" >&2
    lt consults -n "$CONSULTS" --duration "$DURATION" --target "$TARGET" \
        --json "$OUT/compare-consults-spreekkamer.json" | tee "$OUT/compare-consults-spreekkamer.txt"
    echo "== $CONSULTS consults vs Janus VideoRoom ==" >&2
    start_janus
    lt_janus consults -n "$CONSULTS" --duration "$DURATION" \
        --json "$OUT/compare-consults-janus.json" | tee "$OUT/compare-consults-janus.txt"
    stop_janus
    echo "== group of 6 vs Spreekkamer ==" >&2
    lt group --size 6 --duration "$DURATION" --target "$TARGET" \
        --json "$OUT/compare-group-spreekkamer.json" | tee "$OUT/compare-group-spreekkamer.txt"
    echo "== group of 6 vs Janus VideoRoom ==" >&2
    start_janus
    lt_janus group --size 6 --duration "$DURATION" \
        --json "$OUT/compare-group-janus.json" | tee "$OUT/compare-group-janus.txt"
    stop_janus
    echo "== ramp vs Spreekkamer ==" >&2
    lt "${RAMP[@]}" --target "$TARGET" --json "$OUT/compare-spreekkamer.json" |
        tee "$OUT/compare-spreekkamer.txt"
    echo "== ramp vs Janus VideoRoom ==" >&2
    start_janus
    lt_janus "${RAMP[@]}" --json "$OUT/compare-janus.json" | tee "$OUT/compare-janus.txt"
    stop_janus
    echo "== ramp vs a plain UDP relay ==" >&2
    lt "${RAMP[@]}" --relay --json "$OUT/compare-relay.json" | tee "$OUT/compare-relay.txt"
    "$BIN/loadtest" plot --out "$OUT/compare.svg" "$OUT/compare-spreekkamer.json" \
        "$OUT/compare-janus.json" "$OUT/compare-relay.json"
    {
        echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "$CONSULTS consults:"
        "$BIN/loadtest" compare "$OUT/compare-consults-spreekkamer.json" "$OUT/compare-consults-janus.json" || true
        echo "group of 6:"
        "$BIN/loadtest" compare "$OUT/compare-group-spreekkamer.json" "$OUT/compare-group-janus.json" || true
        echo "ramp (1:1 consults):"
        "$BIN/loadtest" compare "$OUT/compare-spreekkamer.json" "$OUT/compare-janus.json" || true
        "$BIN/loadtest" compare "$OUT/compare-spreekkamer.json" "$OUT/compare-relay.json" || true
        "$BIN/loadtest" compare "$OUT/compare-janus.json" "$OUT/compare-relay.json" || true
    } | tee "$OUT/compare-ratios.txt"
    echo "results in $OUT" >&2
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
