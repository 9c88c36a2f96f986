#!/usr/bin/env bash
# The attack suite (issue 10): reproduces six ways an outsider or a
# participant tried to take the service down, against the release binary,
# inside a fresh network namespace that has only loopback. Each attack is
# bounded in time; the whole suite takes a few minutes.
#
#   tests/attack/run.sh                  # all six
#   tests/attack/run.sh 2 5              # only findings 2 and 5 (file prefixes)
#   tests/attack/run.sh soak             # the soak instead (see loadtest/soak.sh)
#
# Needs root (or passwordless sudo) for the namespace, Node.js 20+, python3
# (raw-socket STUN spray, lib/spray.py) and
# `cargo build --release` (spreekkamer and loadtest). Figures go to stderr and
# tests/attack/out/results.jsonl; server logs to tests/attack/out/*/server.log.
#
# Environment (defaults in brackets; none is needed):
#   ATTACK_SERVE_ARGS        extra `spreekkamer serve` flags for every server [none]
#   ATTACK_SERVER_NOFILE     the server's open-file limit [1024, systemd's default]
#   ATTACK_RSS_LIMIT_MIB     resident memory the server may use under attack [200]
#   ATTACK_SLOW_HEADERS_LIMIT_SECS, ATTACK_AUDIT_MAX_BYTES_PER_SEC,
#   ATTACK_SUPPRESSED_WAIT_SECS, ... see the test files.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else echo "attack suite: '$*' needs root (run as root or with passwordless sudo)" >&2; return 1
  fi
}

for b in target/release/spreekkamer target/release/loadtest; do
  [[ -x $b ]] || { echo "attack suite: $b missing: run cargo build --release --workspace --bins" >&2; exit 1; }
done

files=()
soak=false
if [[ ${1:-} == soak ]]; then
  soak=true
elif [[ $# -gt 0 ]]; then
  for n in "$@"; do
    f=$(ls tests/attack/"$n"-*.test.mjs 2>/dev/null | head -1) || true
    [[ -n $f ]] || { echo "attack suite: no tests/attack/$n-*.test.mjs" >&2; exit 2; }
    files+=("$f")
  done
else
  files=(tests/attack/*.test.mjs)
fi

rm -rf tests/attack/out
mkdir -p tests/attack/out

NS="spreekkamer-attack-$$-$RANDOM"
as_root ip netns add "$NS" || { echo "attack suite: could not create network namespace $NS" >&2; exit 1; }
cleanup() { as_root ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
as_root ip -n "$NS" link set lo up
echo "network namespace $NS: $(as_root ip -n "$NS" -brief link | tr '\n' ' ')"

t0=$(date +%s)
rc=0
# The attacker needs thousands of sockets; the server gets its own limit (lib/server.mjs).
if $soak; then
  as_root ip netns exec "$NS" env HOME="${HOME:-/root}" bash -c 'ulimit -n "$(ulimit -Hn)" && exec "$@"' _ \
    node tests/attack/soak.mjs || rc=$?
  echo "soak: $(( $(date +%s) - t0 )) s, exit $rc"
else
  as_root ip netns exec "$NS" env HOME="${HOME:-/root}" bash -c 'ulimit -n "$(ulimit -Hn)" && exec "$@"' _ \
    node --test --test-concurrency=1 --test-reporter=spec "${files[@]}" || rc=$?
  echo "attack suite: $(( $(date +%s) - t0 )) s, exit $rc; figures in tests/attack/out/results.jsonl"
fi
exit "$rc"
