#!/usr/bin/env bash
# Redis idempotency A/B smoke: one Idempotency-Key sent to console A, then the
# same request to console B; B must replay A's answer byte for byte
# (Idempotent-Replayed: true) and the node must have seen one call.
#
# Self-contained (the default): builds and starts a router-stub node and two
# consoles on one Redis ($SOFIIA_REDIS_URL, default redis://127.0.0.1:6379)
# under a fresh key prefix, then stops them.
#
# Against running consoles (release day): set A_URL, B_URL and
# SOFIIA_SMOKE_TOKEN (an operator token both accept); the node call count is
# then not checked.
#
# Prints PASS or FAIL per check and a final PASS or FAIL; exits 0 on PASS.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
redis_url="${SOFIIA_REDIS_URL:-redis://127.0.0.1:6379}"
work="$(mktemp -d)"
pids=()
failed=0

prefix=""
cleanup() {
  # ${pids[@]+...}: an empty array is an unbound variable to older bash.
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null; done
  for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" 2>/dev/null; done
  # The keys of a self-contained run (its own prefix) go with it.
  if [ -n "$prefix" ]; then
    redis-cli -u "$redis_url" --scan --pattern "${prefix}*" 2>/dev/null |
      xargs -r -n 500 redis-cli -u "$redis_url" UNLINK >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT

check() { # name, condition-result (0 = pass), detail
  if [ "$2" -eq 0 ]; then
    echo "PASS $1"
  else
    echo "FAIL $1${3:+: $3}"
    failed=1
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_healthy() { # url, name
  for _ in $(seq 1 100); do
    curl -fsS "$1/api/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "FAIL $2 did not become healthy at $1 (log: $work/$2.log)"
  tail -5 "$work/$2.log" 2>/dev/null
  exit 1
}

if [ -n "${A_URL:-}" ] || [ -n "${B_URL:-}" ]; then
  : "${A_URL:?set A_URL and B_URL together}" "${B_URL:?set A_URL and B_URL together}"
  token="${SOFIIA_SMOKE_TOKEN:?set SOFIIA_SMOKE_TOKEN to an operator token}"
  stub_url=""
else
  bin_dir="${SOFIIA_BIN_DIR:-}"
  if [ -z "$bin_dir" ]; then
    (cd "$root" && cargo build --quiet -p sofiia-console -p sofiia-router-stub) || {
      echo "FAIL build"; echo FAIL; exit 1; }
    bin_dir="${CARGO_TARGET_DIR:-$root/target}/debug"
  fi
  if ! redis-cli -u "$redis_url" ping 2>/dev/null | grep -q PONG; then
    echo "FAIL redis does not answer at $redis_url"
    echo FAIL
    exit 1
  fi
  token="smoke-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  prefix="sofiia-smoke:$(python3 -c 'import secrets; print(secrets.token_hex(6))'):"
  echo "redis: keys under $prefix, deleted at the end"

  stub_port=$(free_port)
  "$bin_dir/sofiia-router-stub" --bind "127.0.0.1:$stub_port" --name NODA1 >"$work/stub.log" 2>&1 &
  pids+=($!)
  stub_url="http://127.0.0.1:$stub_port"

  # Not in a command substitution: that would run it in a subshell, whose
  # pids+= the cleanup never sees, leaving the consoles running.
  start_console() { # name, variable for its URL
    local port dir
    port=$(free_port)
    dir="$work/$1"
    mkdir -p "$dir"
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
      SOFIIA_BIND="127.0.0.1:$port" SOFIIA_DATA_DIR="$dir" \
      SOFIIA_NODES="NODA1=$stub_url" SOFIIA_OPERATOR_TOKENS="smoke:$token" \
      SOFIIA_IDEMPOTENCY_BACKEND=redis SOFIIA_RATE_LIMIT_BACKEND=redis \
      SOFIIA_REDIS_URL="$redis_url" SOFIIA_REDIS_PREFIX="$prefix" SOFIIA_WORKERS=2 \
      "$bin_dir/sofiia-console" >"$work/$1.log" 2>&1 &
    pids+=($!)
    printf -v "$2" '%s' "http://127.0.0.1:$port"
  }
  start_console a A_URL
  start_console b B_URL
  for _ in $(seq 1 100); do curl -fsS "$stub_url/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
  wait_healthy "$A_URL" a
  wait_healthy "$B_URL" b
fi

# The token goes to curl in a private header file, never on its command line
# (where ps would show it).
auth_header="$work/auth.header"
(umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$auth_header")

key="smoke-$(date +%s)-$RANDOM$RANDOM"
chat="smoke-$RANDOM$RANDOM"
body='{"text":"redis idempotency smoke"}'
send() { # url, name
  curl -sS -o "$work/$2.body" -D "$work/$2.headers" -w '%{http_code}' \
    -X POST "$1/api/chats/$chat/send" \
    -H "@$auth_header" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: $key" --data "$body"
}

status_a=$(send "$A_URL" a)
check "A answers 200" "$([ "$status_a" = 200 ]; echo $?)" "got $status_a: $(head -c 300 "$work/a.body" 2>/dev/null)"
status_b=$(send "$B_URL" b)
check "B answers 200" "$([ "$status_b" = 200 ]; echo $?)" "got $status_b: $(head -c 300 "$work/b.body" 2>/dev/null)"
grep -qi '^idempotent-replayed: true' "$work/b.headers"
check "B marks its answer Idempotent-Replayed: true" $?
cmp -s "$work/a.body" "$work/b.body"
check "B's body is A's body byte for byte" $?
if [ -n "$stub_url" ]; then
  calls=$(curl -fsS "$stub_url/_stub/calls" | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
  check "the node saw exactly one call" "$([ "$calls" = 1 ]; echo $?)" "it saw $calls"
fi

if [ "$failed" -eq 0 ]; then echo PASS; exit 0; else echo FAIL; exit 1; fi
