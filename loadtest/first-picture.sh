#!/usr/bin/env bash
# First-picture benchmark (issue 13): two headless Chromiums and the release
# server in a loopback-only network namespace; prints the breakdown from Join
# click to the other person's picture. Needs root (ip netns), the release
# binary (cargo build --release -p spreekkamer) and tests/browser's npm packages.
# Env: RUNS (default 9), OUT (JSON file for the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/spreekkamer ] || cargo build --release -p spreekkamer
[ -d tests/browser/node_modules ] || (cd tests/browser && npm ci --no-audit --no-fund)
ns="skfp-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip netns exec "$ns" node loadtest/first-picture.mjs
