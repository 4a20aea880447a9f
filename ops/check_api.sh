#!/usr/bin/env bash
# Holds a live console to its own OpenAPI document and to Prometheus's
# metric linter:
#   1. schemathesis (every check) against GET /api/openapi.json of a running
#      console, with a real operator token and audit key;
#   2. `promtool check metrics` on that console's /metrics after the traffic.
# It starts two router-stub nodes and a console on free loopback ports with a
# temporary data dir, and stops them at the end. Prints PASS or FAIL.
#
# Usage: bash ops/check_api.sh [--max-examples N]
#   SOFIIA_CONSOLE_BIN / SOFIIA_STUB_BIN: the binaries (default: this
#   checkout's target/release, then target/debug builds).
# Needs schemathesis (pip install schemathesis) and promtool (found as
# ops/check_alert_rules.sh finds it).
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples=50
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-examples) max_examples="$2"; shift 2 ;;
    *) echo "usage: bash ops/check_api.sh [--max-examples N]" >&2; exit 2 ;;
  esac
done

target="${CARGO_TARGET_DIR:-target}"
pick() {
  local name="$1" given="$2"
  if [[ -n "$given" ]]; then echo "$given"; return; fi
  for dir in release debug; do
    if [[ -x "$target/$dir/$name" ]]; then echo "$target/$dir/$name"; return; fi
  done
  echo "check_api: no $name binary; build it (cargo build --release -p ...)" >&2
  exit 1
}
console_bin="$(pick sofiia-console "${SOFIIA_CONSOLE_BIN:-}")"
stub_bin="$(pick sofiia-router-stub "${SOFIIA_STUB_BIN:-}")"
# schemathesis on PATH, or where pip put it for this python3.
schemathesis="$(command -v schemathesis || true)"
if [[ -z "$schemathesis" ]]; then
  for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
    "$(python3 -c 'import site; print(site.USER_BASE)')/bin"; do
    if [[ -x "$dir/schemathesis" ]]; then schemathesis="$dir/schemathesis"; break; fi
  done
fi
[[ -n "$schemathesis" ]] || { echo "FAIL: schemathesis is not installed (pip install schemathesis)"; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() {
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "FAIL: $1 did not answer"
  exit 1
}

token="operator-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
audit_key="audit-key-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
noda1="$(free_port)"
noda2="$(free_port)"
console="$(free_port)"
"$stub_bin" --bind "127.0.0.1:$noda1" --name NODA1 >"$work/noda1.log" 2>&1 &
pids+=($!)
"$stub_bin" --bind "127.0.0.1:$noda2" --name NODA2 >"$work/noda2.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$noda1/v1/health"
wait_for "http://127.0.0.1:$noda2/v1/health"

# Quotas and the refusal limit are raised so that the fuzzer's traffic
# reaches the handlers instead of a 429 (both are still documented).
env -i PATH="$PATH" \
  SOFIIA_BIND="127.0.0.1:$console" \
  SOFIIA_DATA_DIR="$work/data" \
  SOFIIA_NODES="NODA1=http://127.0.0.1:$noda1,NODA2=http://127.0.0.1:$noda2" \
  SOFIIA_OPERATOR_TOKENS="operator:$token" \
  SOFIIA_AUDIT_KEYS="$audit_key" \
  SOFIIA_RATE_LIMIT_CHAT=100000/min \
  SOFIIA_RATE_LIMIT_OPERATOR=100000/min \
  SOFIIA_AUTH_DENIAL_LIMIT=1000000 \
  SOFIIA_WORKERS=2 \
  "$console_bin" >"$work/console.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$console"
wait_for "$base/api/health"
echo "check_api: console $console_bin at $base, nodes at :$noda1 and :$noda2"

status=0
echo "== schemathesis run (every check) against $base/api/openapi.json"
if ! "$schemathesis" --config-file ops/schemathesis.toml run "$base/api/openapi.json" \
  --checks all \
  --max-examples "$max_examples" \
  --seed 20261202 \
  -H "Authorization: Bearer $token" \
  -H "X-Audit-Key: $audit_key"; then
  echo "FAIL: schemathesis"
  status=1
fi

echo "== promtool check metrics on $base/metrics"
# shellcheck source=ops/lib/promtool.sh
source ops/lib/promtool.sh
promtool=""
mkdir -p "$work/promtool"
if ! find_promtool "$work/promtool"; then
  echo "FAIL: promtool not available"
  status=1
else
  curl -fsS "$base/metrics" >"$work/metrics.txt"
  if lint="$("$promtool" check metrics <"$work/metrics.txt" 2>&1)" && [[ -z "$lint" ]]; then
    echo "PASS: promtool check metrics found nothing to say ($(grep -c '^# HELP' "$work/metrics.txt") metrics)"
  else
    echo "$lint"
    echo "FAIL: promtool check metrics"
    status=1
  fi
fi

if [[ "$status" != 0 ]]; then
  echo "-- console log (last 20 lines)"
  tail -n 20 "$work/console.log"
  echo "FAIL"
else
  echo "PASS"
fi
exit "$status"
