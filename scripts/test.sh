#!/usr/bin/env bash
# Runs all of Spreekkamer's tests, installing what they need first.
#
#   scripts/test.sh            # everything (what CI runs via .ci/run)
#   scripts/test.sh browser    # only some steps: deps fmt k8s clippy unit fuzz build image crypto web loadtest browser attack soak
#
# Made for a fresh Debian 12 machine with Rust and Node.js 20 installed, run as
# root (or with passwordless sudo): it apt-installs Chromium, Firefox ESR and
# iproute2 when they are missing, runs `npm ci` for the browser tests (no
# browser downloads: the system browsers are used), then checks formatting and
# lints, runs the Rust tests, builds the release binary and runs the
# real-browser tests inside a fresh network namespace that has only loopback,
# so nothing in a test can reach (or be reached from) any network.
#
# Environment: SPREEKKAMER_TEST_SLOWDOWN=2 doubles every browser-test timeout.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

export CI="${CI:-true}"
export DEBIAN_FRONTEND=noninteractive
export PUPPETEER_SKIP_DOWNLOAD=1
export PUPPETEER_SKIP_CHROME_DOWNLOAD=1
export PUPPETEER_SKIP_CHROME_HEADLESS_SHELL_DOWNLOAD=1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export NO_UPDATE_NOTIFIER=1 npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

ALL_STEPS=(deps fmt k8s clippy unit fuzz build image crypto web loadtest browser attack soak)
if [[ $# -gt 0 ]]; then STEPS=("$@"); else STEPS=("${ALL_STEPS[@]}"); fi
for s in "${STEPS[@]}"; do
  [[ " ${ALL_STEPS[*]} " == *" $s "* ]] || { echo "test.sh: unknown step '$s' (steps: ${ALL_STEPS[*]})" >&2; exit 2; }
done
wants() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }

SUMMARY=()
T_START=$(date +%s)

print_summary() {
  echo
  echo "==== summary ($(( $(date +%s) - T_START )) s) ===="
  local line
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
}

# step NAME DESCRIPTION COMMAND...: run it, time it, stop everything on failure.
step() {
  local name=$1 desc=$2
  shift 2
  echo
  echo "==== [$name] $desc ===="
  local t0 rc=0
  t0=$(date +%s)
  "$@" || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [[ $rc -ne 0 ]]; then
    SUMMARY+=("FAIL  $name (${dt} s): $desc — exit $rc")
    print_summary
    echo
    echo "test.sh: step '$name' failed (exit $rc): $desc" >&2
    exit "$rc"
  fi
  SUMMARY+=("ok    $name (${dt} s): $desc")
}

skip() { SUMMARY+=("skip  $1: $2"); echo; echo "==== [$1] skipped: $2 ===="; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else echo "test.sh: '$*' needs root (run as root or with passwordless sudo)" >&2; return 1
  fi
}

# ---- steps -------------------------------------------------------------------
# Step functions run inside `step`'s `|| rc=$?`, where bash ignores `set -e`:
# every command that can fail says `|| return` explicitly.

install_system_packages() {
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  [[ -x /usr/bin/firefox-esr ]] || missing+=(firefox-esr)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v strace >/dev/null || missing+=(strace)
  # tests/browser/degraded.test.mjs impairs the network without sch_netem (the kernel lacks it):
  # loss with nf_tables, delay with an NFQUEUE rule (iptables-legacy) and a python3 script
  command -v nft >/dev/null || missing+=(nftables)
  command -v iptables-legacy >/dev/null || missing+=(iptables)
  [[ -x /usr/bin/python3 ]] || missing+=(python3)
  # The cluster's directory (issue 11): registry and cluster tests start their own redis-server.
  [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
  # The k8s step puts its pinned Python tools into a venv; the image step builds with podman.
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  command -v podman >/dev/null || missing+=(podman)
  # TURN (issue 12): tests/browser/turn.test.mjs starts its own coturn.
  [[ -x /usr/bin/turnserver ]] || missing+=(coturn)
  command -v openssl >/dev/null || missing+=(openssl)
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "chromium, firefox-esr, iproute2, nftables, iptables, python3, redis-server, podman, coturn already installed"
  else
    echo "installing: ${missing[*]}"
    as_root apt-get update -q || return
    as_root apt-get install -y -q "${missing[@]}" || return
  fi
  /usr/bin/chromium --version 2>/dev/null | head -1 || true
  /usr/bin/firefox-esr --version 2>/dev/null | head -1 || true
  command -v node >/dev/null || { echo "node is missing (Node.js 20 or newer is required)" >&2; return 1; }
  command -v npm >/dev/null || { echo "npm is missing (it comes with Node.js)" >&2; return 1; }
  echo "node $(node --version), npm $(npm --version)"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]') || return
  [[ $major -ge 20 ]] || { echo "Node.js $major is too old: 20 or newer is required" >&2; return 1; }
  # rustfmt and clippy are part of rustup's default profile; add them if a minimal one is installed.
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || { echo "cargo fmt / cargo clippy missing and no rustup to add them" >&2; return 1; }
    rustup component add rustfmt clippy || return
  fi
}

install_node_packages() {
  # `npm ci` wipes node_modules; skip it when the lockfile is unchanged since the last one.
  local dir=tests/browser stamp=tests/browser/node_modules/.spreekkamer-lock.sha256 want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) || return
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "tests/browser/node_modules matches package-lock.json"
    return 0
  fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return
  echo "$want" >"$stamp" || return
}

deps() { install_system_packages && install_node_packages; }

run_crypto_tests() { node --test --test-reporter=spec tests/crypto/; }
run_web_tests() { node --test --test-reporter=spec tests/web/; }
# A few seconds of real load through the SFU: checks the load generator works, not the figures.
run_loadtest_smoke() { NO_BUILD=1 loadtest/run-bench.sh --smoke; }

NETNS=""
del_netns() {
  if [[ -n $NETNS ]]; then as_root ip netns del "$NETNS" 2>/dev/null || true; NETNS=""; fi
}

run_browser_tests() {
  [[ -x target/release/spreekkamer ]] || { echo "target/release/spreekkamer missing: run the build step" >&2; return 1; }
  [[ -d tests/browser/node_modules ]] || { echo "tests/browser/node_modules missing: run the deps step" >&2; return 1; }
  local ns="spreekkamer-test-$$-$RANDOM"
  as_root ip netns add "$ns" || { echo "could not create network namespace $ns (needs root / CAP_SYS_ADMIN)" >&2; return 1; }
  # The namespace must go whatever happens (failure, Ctrl-C, kill).
  NETNS="$ns"
  trap 'del_netns' EXIT
  trap 'del_netns; exit 130' INT
  trap 'del_netns; exit 143' TERM
  as_root ip -n "$ns" link set lo up || return
  echo "network namespace $ns: $(as_root ip -n "$ns" -brief link | tr '\n' ' ')"
  local rc=0
  # Browser tests get one file at a time: each starts a server and browsers, which fill 2 cores.
  as_root ip netns exec "$ns" env HOME="${HOME:-/root}" node --test --test-concurrency=1 --test-reporter=spec \
    tests/browser/ || rc=$?
  del_netns
  trap - EXIT INT TERM
  if [[ $rc -ne 0 ]]; then
    echo "browser tests failed; screenshots, console logs and server logs are under tests/browser/out/" >&2
  fi
  return "$rc"
}

# ---- run ---------------------------------------------------------------------

echo "Spreekkamer tests in $ROOT (steps: ${STEPS[*]}); $(nproc) cores"

if wants deps; then step deps "install Chromium, Firefox ESR, iproute2, nftables, iptables, redis-server, podman, coturn (apt) and browser-test packages (npm ci)" deps; fi
if wants fmt; then step fmt "cargo fmt --check" cargo fmt --all -- --check; fi
if wants k8s; then step k8s "k8s/: kustomize render, yamllint, kubernetes-validate, checkov, property tests (scripts/k8s-check.sh)" scripts/k8s-check.sh; fi
if wants clippy; then
  step clippy "cargo clippy (all targets, release, warnings are errors)" \
    cargo clippy --workspace --all-targets --release -- -D warnings
fi
if wants unit; then step unit "cargo test --workspace --release" cargo test --workspace --release; fi
if wants fuzz; then step fuzz "fuzz targets, 10 s each, unoptimised build (scripts/fuzz.sh)" env FUZZ_SECONDS="${FUZZ_SECONDS:-10}" FUZZ_DEV=1 scripts/fuzz.sh; fi
if wants build; then step build "cargo build --release (spreekkamer and loadtest)" cargo build --release --workspace --bins; fi
if wants image; then step image "container image: podman build (no registry), then --version and serve + /healthz from it (scripts/image.sh)" scripts/image.sh; fi
if wants crypto; then
  if [[ -d tests/crypto ]]; then step crypto "node --test tests/crypto/" run_crypto_tests
  else skip crypto "tests/crypto/ does not exist"; fi
fi
if wants web; then step web "node --test tests/web/" run_web_tests; fi
if wants loadtest; then step loadtest "loadtest smoke run against the SFU" run_loadtest_smoke; fi
if wants browser; then
  step browser "real-browser tests (Chromium + Firefox ESR) in a loopback-only network namespace" run_browser_tests
fi
if wants attack; then step attack "attack suite (issue 10) in a loopback-only network namespace" tests/attack/run.sh; fi
if wants soak; then step soak "short soak: load generator plus hostile traffic, RSS/fds/threads flat" loadtest/soak.sh "${SOAK_SECS:-90}"; fi

print_summary
echo
echo "all tests passed"
