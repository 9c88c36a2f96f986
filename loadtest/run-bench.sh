#!/usr/bin/env bash
# Benchmarks for the Spreekkamer SFU (docs/BENCHMARKS.md).
#
#   loadtest/run-bench.sh              full run: consults, group, ramp vs the SFU
#                                      and vs a plain UDP relay; results in
#                                      loadtest/results/
#   loadtest/run-bench.sh --smoke      CI: 2 consults for 5 s; fails unless media
#                                      was forwarded, latency measured and the
#                                      peers' TWCC feedback, padding and NACKs
#                                      really went out (and feedback came back);
#                                      then 1 consult for 3 s against Janus
#                                      (skipped, saying why, when Janus cannot
#                                      be installed)
#   loadtest/run-bench.sh --compare    consults and group of 6 against
#                                      Spreekkamer, Janus VideoRoom and the
#                                      UDP relay (plain, and batched: the
#                                      kernel's floor), a ramp against the
#                                      first three, each RUNS times
#                                      (interleaved) and
#                                      reduced to the median with its range;
#                                      then the callgrind step; prints the
#                                      ratios (compare-ratios.txt);
#                                      results/compare-*, results/compare.svg
#   loadtest/run-bench.sh --callgrind  only the callgrind step: instructions per
#                                      forwarded packet of Spreekkamer, the
#                                      relay and Janus (results/callgrind-*)
#   BASE_BIN=path [BASE_ARGS=flags] loadtest/run-bench.sh --ab
#                                      A/B of a change: CONSULTS [20] 1:1
#                                      consults against this build and against
#                                      the spreekkamer binary BASE_BIN (built
#                                      from the commit before), RUNS [5]
#                                      interleaved runs each, medians and the
#                                      ratio (results/ab-*); with CG=1 also
#                                      callgrind instructions per packet of both;
#                                      BASE_ARGS: extra flags for the base server
#                                      (e.g. BASE_BIN=target/release/spreekkamer
#                                      BASE_ARGS='--media-path rtc': the media
#                                      path before issue 13, same build)
#
# Fair by construction: the server under test (Spreekkamer with --workers 1,
# Janus with event_loops = 1, the relay with one thread) is pinned to core
# SERVER_CPU with taskset, the load generator to GEN_CPU; every figure is
# printed with the load average before and after its window and with what
# else ran on the server's core (/proc/stat). Machines with fewer than two
# cores run unpinned (said so).
#
# Everything runs inside a private network namespace (needs root for
# `ip netns`) with loopback and a veth pair jan0/jan1 holding 127.0.0.2/32:
# Janus never gathers candidates on an interface flagged loopback, so its
# media (and the generator's peers talking to it) use that address on jan0.
# No address outside 127.0.0.0/8 is used. Janus and valgrind are installed
# from Debian (apt-get install) when missing; the Janus config is
# loadtest/janus/.
#
# Environment: RUNS (runs per figure; 3 for --compare, else 1), DURATION,
# CONSULTS, RAMP_START, RAMP_STEP, RAMP_MAX, MAX_LOSS, MAX_P99_MS, OUT
# (results directory), SERVER_CPU [0], GEN_CPU [1], NO_PIN=1 (no taskset),
# GEN_THREADS [1] (generator media threads), PROBE_PACKETS [20] and
# PROBE_EVERY (padding probe clusters: every 5 s, 1 s for --smoke), RX_DROP
# (received video dropped before SRTP so the peers NACK: 0.002, 0.01 for
# --smoke), CG_CONSULTS [1], CG_DURATION [20], CG_JANUS [1] (callgrind
# Janus too), KEEP_CG=1 (keep the callgrind files for callgrind_annotate),
# NO_CALLGRIND=1 (skip the callgrind step in --compare), COMPARE_KINDS
# (targets of --compare's fixed scenarios: "spreekkamer janus relay
# relay-batch"), NO_RAMP=1 (skip --compare's ramp), RAMP_KINDS (its
# targets: "spreekkamer janus relay"),
# NO_BUILD=1 (use the binaries already in target/release), NO_JANUS=1 (skip
# Janus in --smoke), KEEP_LOGS=1 (keep the servers' logs; the last run's
# each), SERVER_LOG_LEVEL [error] (Spreekkamer's --log-level), GEN_EXTRA (more generator flags: --rtc-media for the
# generator's media through rtc's pipeline, as before it had its own path).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=full
case "${1:-}" in
    --smoke) MODE=smoke ;;
    --compare) MODE=compare ;;
    --callgrind) MODE=callgrind ;;
    --ab) MODE=ab ;;
    "") ;;
    *) echo "usage: $0 [--smoke|--compare|--callgrind|--ab]" >&2; exit 1 ;;
esac

OUT=${OUT:-$ROOT/loadtest/results}
[[ $MODE == smoke ]] && OUT=$(mktemp -d)
mkdir -p "$OUT"
NS="ltbench-$$"
PORT=18080
RELAY_PORT=40000
JANUS_PORT=8188
JANUS_IP=127.0.0.2
JANUS_PLUGINS=/usr/lib/x86_64-linux-gnu/janus/plugins
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/ltbench-$$.XXXX")
JANUS_LOG="$LOGDIR/janus.log"
SERVER_LOG="$LOGDIR/server.log"
RELAY_LOG="$LOGDIR/relay.log"
SECRET="loadtest-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=
JANUS_PID=
RELAY_PID=

if [[ $MODE == compare ]]; then RUNS=${RUNS:-3}; elif [[ $MODE == ab ]]; then RUNS=${RUNS:-5}; else RUNS=${RUNS:-1}; fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 1; }
# The smoke's windows are 3-5 s: a probe cluster every second (not every
# 5 s) so that every window has padding in it, and 1 % loss so it has NACKs.
if [[ $MODE == smoke ]]; then
    RX_DROP=${RX_DROP:-0.01}
    PROBE_EVERY=${PROBE_EVERY:-1}
else
    RX_DROP=${RX_DROP:-0.002}
    PROBE_EVERY=${PROBE_EVERY:-5}
fi
GEN_ARGS=(--threads "${GEN_THREADS:-1}" --probe-packets "${PROBE_PACKETS:-20}"
    --probe-every "$PROBE_EVERY" --rx-drop "$RX_DROP")
# GEN_EXTRA: more generator flags, e.g. --rtc-media (the generator's media
# through rtc's pipeline, as before it had its own path).
read -r -a EXTRA <<< "${GEN_EXTRA:-}"
GEN_ARGS+=(${EXTRA[@]+"${EXTRA[@]}"})

# Pinning: the server under test on one core, the generator on another.
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
PIN_SERVER=()
PIN_GEN=()
if [[ -n "${NO_PIN:-}" ]]; then
    echo "note: NO_PIN set: server and generator are not pinned" >&2
elif ! command -v taskset >/dev/null; then
    echo "note: taskset missing: server and generator are not pinned" >&2
elif [[ $(nproc --all) -lt 2 ]]; then
    echo "note: fewer than 2 cores: server and generator are not pinned" >&2
else
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_GEN=(taskset -c "$GEN_CPU")
fi

cleanup() {
    # End everything still running in our namespace before removing it.
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
    for pid in "$SERVER_PID" "$JANUS_PID" "$RELAY_PID"; do
        [[ -n "$pid" ]] || continue
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    ip netns del "$NS" 2>/dev/null || true
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        echo "server, Janus and relay logs kept in $LOGDIR" >&2
    else
        rm -rf "$LOGDIR"
    fi
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
# A loopback-range address on an interface not flagged loopback, for Janus
# (it never gathers on loopback interfaces).
ip -n "$NS" link add jan0 type veth peer name jan1
ip -n "$NS" addr add "$JANUS_IP/32" dev jan0
ip -n "$NS" link set jan0 up
ip -n "$NS" link set jan1 up
in_ns() { ip netns exec "$NS" "$@"; }
# Servers are started with `ip netns exec … &` directly (not through the
# in_ns function, which would fork a subshell): `ip netns exec`, taskset,
# the fd-limit shell and valgrind all exec, so $! is the server's own pid,
# which is what stop_* kill and what callgrind_control talks to.
# shellcheck disable=SC2016
WITH_FDS=(bash -c 'ulimit -n 65536 2>/dev/null || ulimit -n 4096 || true; exec "$@"' _)

# Install a Debian package quietly when its command is missing. Prints why
# not on failure.
apt_install() {
    local pkg=$1
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "$pkg: not installed, and cannot install it here (needs root and apt-get)" >&2
        return 1
    fi
    echo "installing $pkg (apt-get install $pkg)..." >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; }; }; then
        echo "$pkg: apt-get install $pkg failed (no package repository reachable?)" >&2
        return 1
    fi
}

# Janus from Debian. A freshly installed package's service (which would
# listen on all interfaces with the stock config) is disabled again: we
# only ever run Janus ourselves, inside the namespace, with loadtest/janus/.
ensure_janus() {
    if command -v janus >/dev/null && [[ -e "$JANUS_PLUGINS/libjanus_videoroom.so" ]]; then
        return 0
    fi
    apt_install janus || return 1
    if command -v systemctl >/dev/null; then
        systemctl disable --now janus >/dev/null 2>&1 || true
    fi
    if ! [[ -e "$JANUS_PLUGINS/libjanus_videoroom.so" ]]; then
        echo "janus: installed, but $JANUS_PLUGINS/libjanus_videoroom.so is missing" >&2
        return 1
    fi
}

ensure_valgrind() {
    if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
        return 0
    fi
    apt_install valgrind
}

# VALGRIND is empty, or the callgrind command line the next server starts under.
VALGRIND=()
CG_TMP=
use_callgrind() {
    # KEEP_CG: outside the log directory, which is removed on exit.
    if [[ -n "${KEEP_CG:-}" ]]; then CG_TMP=${CG_TMP:-$(mktemp -d /tmp/spreekkamer-cg.XXXX)}; fi
    CG_TMP=${CG_TMP:-$(mktemp -d "$LOGDIR/cg.XXXX")}
    VALGRIND=(valgrind --tool=callgrind --instr-atstart=no
        "--callgrind-out-file=$CG_TMP/callgrind.out.%p")
}
no_callgrind() { VALGRIND=(); }

# Wait until something in the namespace listens on TCP $1 (up to $2 s).
wait_tcp() {
    local i
    for i in $(seq 1 $(($2 * 10))); do
        if in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Every generated participant connects from 127.0.0.1: the per-address
# connection cap (default 256) would refuse the ramp at 150 consults.
start_server() {
    local bin=${1:-$BIN/spreekkamer}
    shift || true
    ip netns exec "$NS" "${PIN_SERVER[@]}" "${WITH_FDS[@]}" "${VALGRIND[@]}" \
        "$bin" serve --listen "127.0.0.1:$PORT" --jwt-secret "$SECRET" \
        --announce-ip 127.0.0.1 --audit-log /dev/null --log-level "${SERVER_LOG_LEVEL:-error}" --demo-links false \
        --consult-grace 1s --waiting-room=false --workers 1 \
        --max-connections-per-ip 4096 "$@" >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    if ! wait_tcp "$PORT" $((${#VALGRIND[@]} ? 120 : 10)); then
        echo "error: the server did not start; log:" >&2
        cat "$SERVER_LOG" >&2
        exit 1
    fi
}

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

start_janus() {
    ip netns exec "$NS" "${PIN_SERVER[@]}" "${WITH_FDS[@]}" "${VALGRIND[@]}" \
        janus -C "$ROOT/loadtest/janus/janus.jcfg" -F "$ROOT/loadtest/janus" -o \
        >"$JANUS_LOG" 2>&1 &
    JANUS_PID=$!
    if ! wait_tcp "$JANUS_PORT" $((${#VALGRIND[@]} ? 120 : 10)); then
        echo "error: Janus did not start; log:" >&2
        cat "$JANUS_LOG" >&2
        return 1
    fi
}

stop_janus() {
    [[ -n "$JANUS_PID" ]] || return 0
    kill "$JANUS_PID" 2>/dev/null || true
    # Janus 1.1 sometimes hangs in its shutdown (seen once in a --compare
    # run: a futex wait for 10 minutes): SIGKILL after 15 s.
    local i
    for i in $(seq 1 30); do
        kill -0 "$JANUS_PID" 2>/dev/null || break
        sleep 0.5
    done
    kill -9 "$JANUS_PID" 2>/dev/null || true
    wait "$JANUS_PID" 2>/dev/null || true
    JANUS_PID=
}

# The plain UDP relay, one thread, started here (not by the generator) so
# that it is pinned (and under callgrind) like the servers.
# start_relay [--batch]: --batch reads and sends with recvmmsg/sendmmsg in
# batches of 32, as the SFU does (the kernel's floor).
start_relay() {
    ip netns exec "$NS" "${PIN_SERVER[@]}" "${VALGRIND[@]}" "$BIN/loadtest" relay-server \
        --bind 127.0.0.1 --port "$RELAY_PORT" --threads 1 "$@" >"$RELAY_LOG" 2>&1 &
    RELAY_PID=$!
    local i
    for i in $(seq 1 $((${#VALGRIND[@]} ? 600 : 100))); do
        if in_ns ss -Hlun "sport = :$RELAY_PORT" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: the relay did not start; log:" >&2
    cat "$RELAY_LOG" >&2
    exit 1
}

stop_relay() {
    [[ -n "$RELAY_PID" ]] || return 0
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
    RELAY_PID=
}

lt() {
    in_ns "${PIN_GEN[@]}" "${WITH_FDS[@]}" \
        env SPREEKKAMER_JWT_SECRET="$SECRET" "$BIN/loadtest" "$@" "${GEN_ARGS[@]}"
}

TARGET="ws://127.0.0.1:$PORT/ws"
JANUS_URL="ws://127.0.0.1:$JANUS_PORT/"

# run_one KIND JSON ARGS...: one loadtest run against a freshly started
# server of KIND (spreekkamer, janus or relay), its table on stdout. A
# failed run is reported and leaves no JSON; the caller goes on.
run_one() {
    local kind=$1 json=$2 rc=0
    shift 2
    case $kind in
        spreekkamer)
            start_server
            lt "$@" --target "$TARGET" --json "$json" || rc=$?
            stop_server
            ;;
        base)
            # shellcheck disable=SC2086
            start_server "$BASE_BIN" ${BASE_ARGS:-}
            lt "$@" --target "$TARGET" --json "$json" || rc=$?
            stop_server
            ;;
        janus)
            if ! start_janus; then
                echo "warning: Janus did not start: $json not written" >&2
                return 0
            fi
            lt "$@" --janus "$JANUS_URL" --local-ip "$JANUS_IP" --json "$json" || rc=$?
            stop_janus
            ;;
        relay|relay-batch)
            if [[ $kind == relay-batch ]]; then start_relay --batch; else start_relay; fi
            lt "$@" --relay --relay-running --relay-port "$RELAY_PORT" --relay-threads 1 \
                --json "$json" || rc=$?
            stop_relay
            ;;
    esac
    if [[ $rc != 0 ]]; then
        echo "warning: $kind run failed (exit $rc): $json not written" >&2
        rm -f "$json"
    fi
    return 0
}

# series NAME "KINDS" ARGS...: RUNS runs of `loadtest ARGS` against each
# kind, interleaved (run 1 of every kind, then run 2, ...: a drift in the
# machine's load hits all alike); per kind the runs' JSON in
# $OUT/NAME-KIND-rN.json and their median (with the range) in
# $OUT/NAME-KIND.json and .txt.
series() {
    local name=$1 kinds=$2 r kind
    shift 2
    for r in $(seq 1 "$RUNS"); do
        for kind in $kinds; do
            echo "== $name vs $kind, run $r of $RUNS (load $(cut -d' ' -f1-3 /proc/loadavg)) ==" >&2
            run_one "$kind" "$OUT/$name-$kind-r$r.json" "$@" | tee "$OUT/$name-$kind-r$r.txt"
        done
    done
    for kind in $kinds; do
        local files=()
        for r in $(seq 1 "$RUNS"); do
            [[ -e "$OUT/$name-$kind-r$r.json" ]] && files+=("$OUT/$name-$kind-r$r.json")
        done
        if [[ ${#files[@]} == 0 ]]; then
            echo "warning: no run of $name against $kind succeeded" >&2
            continue
        fi
        echo "== $name vs $kind: median of ${#files[@]} ==" >&2
        "$BIN/loadtest" median --out "$OUT/$name-$kind.json" "${files[@]}" |
            tee "$OUT/$name-$kind.txt"
    done
}

# The callgrind step: each server alone on its core under callgrind, a
# light fixed load (valgrind runs the server ~50× slower: one 1:1 consult
# at full bitrate keeps up on a shared core, two often do not, and the
# report then says CALLGRIND FELL BEHIND), instrumentation on only for the
# window; Ir (user-space instructions, all threads) / forwarded packets.
callgrind_step() {
    ensure_valgrind || { echo "callgrind step skipped (no valgrind)" >&2; return 0; }
    local cg=(consults -n "${CG_CONSULTS:-1}" --duration "${CG_DURATION:-20}" --callgrind --quiet)
    local kinds="spreekkamer relay"
    if [[ "${CG_JANUS:-1}" == 1 ]] && ensure_janus; then kinds="spreekkamer relay janus"; fi
    use_callgrind
    local kind
    for kind in $kinds; do
        echo "== callgrind: ${CG_CONSULTS:-1} consults vs $kind (load $(cut -d' ' -f1-3 /proc/loadavg)) ==" >&2
        run_one "$kind" "$OUT/callgrind-$kind.json" "${cg[@]}" | tee "$OUT/callgrind-$kind.txt"
    done
    no_callgrind
    if [[ -n "${KEEP_CG:-}" ]]; then
        echo "callgrind files kept in $CG_TMP (callgrind_annotate --inclusive=yes FILE)" >&2
    else
        rm -rf "$CG_TMP"
    fi
    CG_TMP=
    {
        echo "callgrind, ${CG_CONSULTS:-1} consults, ${CG_DURATION:-20} s window (instructions per forwarded packet):"
        for kind in janus relay; do
            if [[ -e "$OUT/callgrind-spreekkamer.json" && -e "$OUT/callgrind-$kind.json" ]]; then
                "$BIN/loadtest" compare "$OUT/callgrind-spreekkamer.json" "$OUT/callgrind-$kind.json" || true
            fi
        done
    } | tee "$OUT/callgrind-ratios.txt"
}

pinning_note() {
    if [[ ${#PIN_SERVER[@]} -gt 0 ]]; then
        echo "server under test pinned to cpu $SERVER_CPU, generator to cpu $GEN_CPU"
    else
        echo "not pinned"
    fi
}

if [[ $MODE == smoke ]]; then
    start_server
    lt consults -n 2 --duration 5 --target "$TARGET" --quiet --require-feedback \
        --json "$OUT/smoke.json"
    stop_server
    echo "loadtest smoke: ok ($OUT/smoke.json; $(pinning_note))"
    if [[ -n "${NO_JANUS:-}" ]]; then
        echo "loadtest smoke: Janus skipped (NO_JANUS set)"
    elif ensure_janus; then
        start_janus
        lt consults -n 1 --duration 3 --janus "$JANUS_URL" --local-ip "$JANUS_IP" --quiet \
            --require-feedback --json "$OUT/smoke-janus.json"
        stop_janus
        echo "loadtest smoke: Janus ok ($OUT/smoke-janus.json)"
    else
        echo "loadtest smoke: Janus skipped (see above)"
    fi
    exit 0
fi

echo "$(pinning_note); $RUNS run(s) per figure; load now $(cut -d' ' -f1-3 /proc/loadavg)" >&2

if [[ $MODE == callgrind ]]; then
    callgrind_step
    echo "results in $OUT" >&2
    exit 0
fi

if [[ $MODE == ab ]]; then
    [[ -x "${BASE_BIN:-}" ]] || { echo "--ab needs BASE_BIN: the spreekkamer binary to compare with" >&2; exit 1; }
    CONSULTS=${CONSULTS:-20}
    series ab-consults "spreekkamer base" consults -n "$CONSULTS" --duration "${DURATION:-10}" --quiet
    if [[ "${CG:-0}" == 1 ]]; then
        ensure_valgrind
        use_callgrind
        for kind in spreekkamer base; do
            echo "== callgrind: ${CG_CONSULTS:-1} consults vs $kind ==" >&2
            run_one "$kind" "$OUT/ab-callgrind-$kind.json" consults -n "${CG_CONSULTS:-1}" \
                --duration "${CG_DURATION:-20}" --callgrind --quiet | tee "$OUT/ab-callgrind-$kind.txt"
        done
        no_callgrind
        rm -rf "$CG_TMP"
        CG_TMP=
    fi
    {
        echo "A/B: this build vs $BASE_BIN; $(pinning_note); medians of $RUNS runs; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "$CONSULTS consults (this build vs base):"
        "$BIN/loadtest" compare "$OUT/ab-consults-spreekkamer.json" "$OUT/ab-consults-base.json" || true
        if [[ -e "$OUT/ab-callgrind-spreekkamer.json" && -e "$OUT/ab-callgrind-base.json" ]]; then
            "$BIN/loadtest" compare "$OUT/ab-callgrind-spreekkamer.json" "$OUT/ab-callgrind-base.json" || true
        fi
    } | tee "$OUT/ab-ratios.txt"
    echo "results in $OUT" >&2
    exit 0
fi

DURATION=${DURATION:-10}
RAMP_START=${RAMP_START:-25}
RAMP_STEP=${RAMP_STEP:-25}
# The ramp's stop thresholds (the tool's defaults: 0.5 % loss, p99 50 ms).
MAX_LOSS=${MAX_LOSS:-0.005}
MAX_P99_MS=${MAX_P99_MS:-50}

if [[ $MODE == compare ]]; then
    RAMP_MAX=${RAMP_MAX:-200}
    CONSULTS=${CONSULTS:-20}
    ensure_janus || exit 1
    RAMP=(ramp --start "$RAMP_START" --step "$RAMP_STEP" --max-consults "$RAMP_MAX"
        --duration "$DURATION" --max-loss "$MAX_LOSS" --max-p99-ms "$MAX_P99_MS" --quiet)
    # The relay in every scenario, plain (one system call per datagram and
    # destination: the baseline issue 13's ratio names) and batched
    # (recvmmsg/sendmmsg as our worker does: what the kernel alone costs per
    # forwarded packet, the floor under any server's figure on this machine).
    # COMPARE_KINDS narrows the fixed scenarios, NO_RAMP=1 skips the ramp
    # (e.g. COMPARE_KINDS=relay-batch NO_RAMP=1 NO_CALLGRIND=1: add the floor
    # to an earlier OUT).
    kinds=${COMPARE_KINDS:-spreekkamer janus relay relay-batch}
    series compare-consults "$kinds" consults -n "$CONSULTS" --duration "$DURATION" --quiet
    series compare-group "$kinds" group --size 6 --duration "$DURATION" --quiet
    if [[ -z "${NO_RAMP:-}" ]]; then
        series compare-ramp "${RAMP_KINDS:-spreekkamer janus relay}" "${RAMP[@]}"
    fi
    plots=()
    for kind in spreekkamer janus relay; do
        [[ -e "$OUT/compare-ramp-$kind.json" ]] && plots+=("$OUT/compare-ramp-$kind.json")
    done
    [[ ${#plots[@]} -gt 0 ]] && "$BIN/loadtest" plot --out "$OUT/compare.svg" "${plots[@]}"
    if [[ -z "${NO_CALLGRIND:-}" ]]; then
        callgrind_step
    fi
    pair() {
        if [[ -e "$1" && -e "$2" ]]; then
            "$BIN/loadtest" compare "$1" "$2" || true
        else
            echo "(missing: $(basename "$1") or $(basename "$2"))"
        fi
    }
    {
        echo "$(pinning_note); medians of $RUNS runs; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "$CONSULTS consults:"
        for scenario in consults group; do
            [[ $scenario == group ]] && echo "group of 6:"
            pair "$OUT/compare-$scenario-spreekkamer.json" "$OUT/compare-$scenario-janus.json"
            pair "$OUT/compare-$scenario-spreekkamer.json" "$OUT/compare-$scenario-relay.json"
            pair "$OUT/compare-$scenario-janus.json" "$OUT/compare-$scenario-relay.json"
            pair "$OUT/compare-$scenario-spreekkamer.json" "$OUT/compare-$scenario-relay-batch.json"
            pair "$OUT/compare-$scenario-janus.json" "$OUT/compare-$scenario-relay-batch.json"
        done
        echo "ramp (1:1 consults):"
        pair "$OUT/compare-ramp-spreekkamer.json" "$OUT/compare-ramp-janus.json"
        pair "$OUT/compare-ramp-spreekkamer.json" "$OUT/compare-ramp-relay.json"
        pair "$OUT/compare-ramp-janus.json" "$OUT/compare-ramp-relay.json"
        if [[ -e "$OUT/callgrind-ratios.txt" ]]; then cat "$OUT/callgrind-ratios.txt"; fi
    } | tee "$OUT/compare-ratios.txt"
    echo "results in $OUT" >&2
    exit 0
fi

CONSULTS=${CONSULTS:-50}
RAMP_MAX=${RAMP_MAX:-400}
series consults "spreekkamer" consults -n "$CONSULTS" --duration "$DURATION" --quiet
series group "spreekkamer" group --size 6 --duration "$DURATION" --quiet
series ramp "spreekkamer relay" ramp --start "$RAMP_START" --step "$RAMP_STEP" \
    --max-consults "$RAMP_MAX" --duration "$DURATION" --max-loss "$MAX_LOSS" \
    --max-p99-ms "$MAX_P99_MS" --quiet
if [[ -e "$OUT/ramp-spreekkamer.json" && -e "$OUT/ramp-relay.json" ]]; then
    "$BIN/loadtest" plot --out "$OUT/ramp.svg" "$OUT/ramp-spreekkamer.json" "$OUT/ramp-relay.json"
    "$BIN/loadtest" compare "$OUT/ramp-spreekkamer.json" "$OUT/ramp-relay.json" |
        tee "$OUT/compare.txt" || true
fi
echo "results in $OUT" >&2
