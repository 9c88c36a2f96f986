#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ for a bounded time each,
# one after the other; fails on the first crash, leak or assertion.
#
#   scripts/fuzz.sh                 # every target, 30 s each (what CI runs)
#   scripts/fuzz.sh --long          # every target, 10 million runs each
#   scripts/fuzz.sh token sdp_answer
#   FUZZ_SECONDS=120 scripts/fuzz.sh
#   FUZZ_DEV=1 scripts/fuzz.sh      # unoptimised build (compiles in about half
#                                   # the time; what CI uses, with FUZZ_SECONDS=10)
#
# Needs only the stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# nightly flags (-Zsanitizer=address). Installs cargo-fuzz when missing.
# Builds into fuzz/target. Runs start from the committed seeds in
# fuzz/corpus/<target> but write what they find to fuzz/corpus-run/<target>
# (git-ignored); a crash lands in fuzz/artifacts/<target>/ and is replayed
# with `cargo fuzz run --fuzz-dir fuzz <target> <file>`. docs/FUZZING.md.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
ALL_TARGETS=(client_message token sdp_answer media_plane media_port media_out media_in rtcp_in)
SECONDS_EACH="${FUZZ_SECONDS:-30}"
PROFILE=()
[[ ${FUZZ_DEV:-0} == 1 ]] && PROFILE=(--dev)
LONG=0
TARGETS=()
for arg in "$@"; do
  case $arg in
    --long) LONG=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *)
      [[ " ${ALL_TARGETS[*]} " == *" $arg "* ]] || { echo "fuzz.sh: unknown target '$arg' (targets: ${ALL_TARGETS[*]})" >&2; exit 2; }
      TARGETS+=("$arg") ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Per target: the biggest input worth trying (the WebSocket message limit for
# what arrives as a message, an ICE-TCP frame and a bit for the media port).
max_len() {
  case $1 in
    client_message|sdp_answer) echo 65600 ;;
    token) echo 9000 ;;
    media_port) echo 12000 ;;
    *) echo 8192 ;;
  esac
}

cargo fuzz build "${PROFILE[@]}" --fuzz-dir fuzz

for t in "${TARGETS[@]}"; do
  seeds=fuzz/corpus/$t
  work=fuzz/corpus-run/$t
  mkdir -p "$work"
  dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=("-dict=fuzz/dict/$t.dict")
  if [[ $LONG -eq 1 ]]; then budget=(-runs="${FUZZ_RUNS:-10000000}"); else budget=(-max_total_time="$SECONDS_EACH"); fi
  echo
  echo "==== fuzz $t (${budget[*]}) ===="
  # One job, one worker: the machine is shared. -print_final_stats gives the
  # exec count and rate for docs/FUZZING.md.
  cargo fuzz run "${PROFILE[@]}" --fuzz-dir fuzz "$t" "$work" "$seeds" -- \
    "${budget[@]}" -max_len="$(max_len "$t")" -print_final_stats=1 "${dict[@]}" \
    -timeout=10 -rss_limit_mb=2048 \
    || { echo "fuzz.sh: target '$t' failed: see fuzz/artifacts/$t/" >&2; exit 1; }
done
echo
echo "fuzz.sh: all targets ran without a crash"
