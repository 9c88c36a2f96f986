#!/usr/bin/env bash
# First-picture benchmark (issue 13): headless Chromiums and the release
# server in a network namespace of our own; prints the breakdown from Join
# click to the other person's picture. Needs root (ip netns), the release
# binary (cargo build --release -p spreekkamer) and tests/browser's npm
# packages.
#
# Env: RUNS (default 9), OUT (JSON file for the figures), TARGETS
# (`spreekkamer` by default; `spreekkamer,janus` adds Janus VideoRoom's own
# demo page, interleaved, installing janus and janus-demos from Debian when
# missing). The namespace has only loopback, plus for Janus a veth jan0
# holding 127.0.0.2/32 (Janus never gathers candidates on an interface
# flagged loopback); no address outside 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/spreekkamer ] || cargo build --release -p spreekkamer
[ -d tests/browser/node_modules ] || (cd tests/browser && npm ci --no-audit --no-fund)
janus=0
[[ ",${TARGETS:-spreekkamer}," == *,janus,* ]] && janus=1
if [[ $janus == 1 ]] && { ! command -v janus >/dev/null || [ ! -d /usr/share/janus/demos ]; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q janus janus-demos >/dev/null
fi
ns="skfp-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
if [[ $janus == 1 ]]; then
    ip -n "$ns" link add jan0 type veth peer name jan1
    ip -n "$ns" addr add 127.0.0.2/32 dev jan0
    ip -n "$ns" link set jan0 up
    ip -n "$ns" link set jan1 up
fi
ip netns exec "$ns" node loadtest/first-picture.mjs
