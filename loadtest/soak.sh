#!/usr/bin/env bash
# Soak (issue 10): consults join and leave through the load generator while
# hostile traffic (junk joins, idle and slow HTTP, ping floods, STUN and junk
# media, idle ICE-TCP, revocations) keeps coming; the server's RSS, open
# descriptors and threads are sampled and must be flat at the end (the
# definition of flat is in tests/attack/soak.mjs). Prints one table row per
# sample. Runs in a loopback-only network namespace (needs root).
#
#   loadtest/soak.sh              # 30 minutes
#   loadtest/soak.sh 90           # 90 seconds (what CI runs)
#
# Environment: SOAK_SAMPLE_SECS [5], SOAK_LOAD_LOOPS [2], SOAK_RUN_SECS [15],
# plus the attack suite's ATTACK_* settings (tests/attack/run.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SOAK_SECS="${1:-${SOAK_SECS:-1800}}"
exec tests/attack/run.sh soak
