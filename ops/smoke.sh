#!/usr/bin/env bash
# Release-day smoke of a running sofiia-console, over HTTP.
#
#   SOFIIA_SMOKE_TOKEN=... SOFIIA_SMOKE_AUDIT_KEY=... bash ops/smoke.sh BASE_URL
#
# BASE_URL is one console instance, e.g. http://127.0.0.1:8080, not a load
# balancer: the audit trail is per host, so the send and the audit read must
# reach the same instance.
#
# Environment:
#   SOFIIA_SMOKE_TOKEN        an operator token of the console (or
#   SOFIIA_SMOKE_TOKEN_FILE   a file holding it); the smoke sends one message
#                             as that operator, to a new chat named
#                             release-smoke-<UTC time>-<random>
#   SOFIIA_SMOKE_AUDIT_KEY    a key of SOFIIA_AUDIT_KEYS (or
#   SOFIIA_SMOKE_AUDIT_KEY_FILE)
#   SOFIIA_SMOKE_REDIS        1: run the Redis idempotency A/B smoke
#                             (ops/redis_idempotency_smoke.sh) against A_URL
#                             and B_URL; 0: do not; unset (auto): run it when
#                             the console's /api/ready reports idempotency on
#                             redis, when A_URL and B_URL are set, or when this
#                             environment has SOFIIA_IDEMPOTENCY_BACKEND=redis
#   A_URL, B_URL              two instances sharing the Redis (default: both
#                             BASE_URL, which then checks the replay through
#                             Redis on one instance only)
#   SOFIIA_SMOKE_TIMEOUT      seconds per request (default 10)
#
# Checks, in order (each prints PASS, FAIL or SKIP and the check's name):
#   health                    GET /api/health is 200 with status ok
#   ready                     GET /api/ready is 200 (every backend answers)
#   nodes                     every node in /api/ready answers its probe
#   metrics before traffic    GET /metrics is 200 with sofiia_build_info
#   audit without key         GET /api/audit without X-Audit-Key is 401
#   audit with a wrong key    ... with a random key is 401
#   audit with key            ... with SOFIIA_SMOKE_AUDIT_KEY is 200
#   send                      POST /api/chats/{chat}/send is 200 with a reply
#   send replay               the same Idempotency-Key again: the same body,
#                             Idempotent-Replayed: true
#   audit write/read          /api/audit?actor=...&action=chat.send has the
#                             send's event, found by its X-Request-Id, and the
#                             replay's chat.send.replay event
#   metrics after traffic     /metrics has every metric a send produces:
#                             sofiia_http_requests_total,
#                             sofiia_http_request_duration_seconds,
#                             sofiia_infer_total, sofiia_infer_duration_seconds,
#                             sofiia_idempotency_total, sofiia_ratelimit_total,
#                             sofiia_build_info; and
#                             sofiia_audit_write_failures_total is 0 if present
#   redis idempotency A/B     ops/redis_idempotency_smoke.sh prints PASS
# then `smoke: N pass, N fail, N skip` and `RESULT: PASS|FAIL`; exit 0 on
# PASS, 1 on FAIL, 2 on a usage error. Tokens and keys are never printed
# (nor put on a command line: curl reads them from private header files).
set -uo pipefail

# shellcheck source=ops/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  '')
    echo "usage: bash ops/smoke.sh BASE_URL (see --help)" >&2
    exit 2
    ;;
esac
[ $# -eq 1 ] || { echo "usage: bash ops/smoke.sh BASE_URL (see --help)" >&2; exit 2; }
base="${1%/}"
case "$base" in
  http://* | https://*) ;;
  *)
    echo "smoke: BASE_URL must start with http:// or https://" >&2
    exit 2
    ;;
esac
timeout="${SOFIIA_SMOKE_TIMEOUT:-10}"

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

read_secret() { # VAR FILE_VAR: the value, or the first line of the file
  local value="${!1:-}" file_var="$2"
  if [ -z "$value" ] && [ -n "${!file_var:-}" ]; then
    IFS= read -r value <"${!file_var}" || true
  fi
  printf '%s' "$value"
}
token="$(read_secret SOFIIA_SMOKE_TOKEN SOFIIA_SMOKE_TOKEN_FILE)"
audit_key="$(read_secret SOFIIA_SMOKE_AUDIT_KEY SOFIIA_SMOKE_AUDIT_KEY_FILE)"
[ -n "$token" ] && printf 'Authorization: Bearer %s\n' "$token" >"$work/auth.header"
[ -n "$audit_key" ] && printf 'X-Audit-Key: %s\n' "$audit_key" >"$work/audit.header"
printf 'X-Audit-Key: smoke-wrong-%s\n' "$(python3 -c 'import secrets; print(secrets.token_hex(16))')" >"$work/wrong.header"

n_pass=0 n_fail=0 n_skip=0
report() { # STATUS CHECK [DETAIL]
  case "$1" in
    PASS) n_pass=$((n_pass + 1)) ;;
    FAIL) n_fail=$((n_fail + 1)) ;;
    SKIP) n_skip=$((n_skip + 1)) ;;
  esac
  echo "$1 $2${3:+: $3}"
}

# http NAME METHOD PATH [curl args...]: the status code (000 when there was
# no HTTP answer); the body in $work/NAME.body, headers in $work/NAME.headers,
# curl's error in $work/NAME.err.
http() {
  local name="$1" method="$2" path="$3"
  shift 3
  curl -sS --max-time "$timeout" -X "$method" -o "$work/$name.body" -D "$work/$name.headers" \
    -w '%{http_code}' "$@" "$base$path" 2>"$work/$name.err"
  return 0
}
no_answer() { # NAME: curl's reason
  local reason
  reason="$(sed 's/^curl: ([0-9]*) //' "$work/$1.err" | head -1)"
  echo "no HTTP answer (${reason:-unknown error})"
}
body_excerpt() { head -c 300 "$work/$1.body" 2>/dev/null | tr '\n' ' '; }
unexpected() { # NAME STATUS EXPECTED: why the answer is not the expected one
  if [ "$2" = 000 ]; then
    no_answer "$1"
  else
    echo "got $2, expected $3"
  fi
}
# json NAME EXPR: a Python expression over the parsed body `b`.
json() {
  python3 - "$work/$1.body" "$2" <<'EOF' 2>/dev/null
import json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    b = json.load(f)
v = eval(sys.argv[2], {"b": b})
print("" if v is None else v)
EOF
}
header() { # NAME HEADER: its value
  grep -i "^$2:" "$work/$1.headers" | tail -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'
}

shown_base="$(redact_url "$base")"
echo "smoke: $shown_base at $(utc_now)"

# --- health -----------------------------------------------------------------
status="$(http health GET /api/health)"
if [ "$status" = 200 ] && [ "$(json health 'b["status"]')" = ok ]; then
  report PASS health "200 (version $(json health 'b.get("version")'), git $(json health 'b.get("git_sha")'))"
elif [ "$status" = 000 ]; then
  report FAIL health "$(no_answer health)"
else
  report FAIL health "got $status: $(body_excerpt health)"
fi

# --- ready and nodes ----------------------------------------------------------
status="$(http ready GET /api/ready)"
checks="" nodes="" bad_nodes=""
if [ "$status" != 000 ] && checks="$(opsutil ready-summary "$work/ready.body" checks 2>/dev/null)"; then
  nodes="$(opsutil ready-summary "$work/ready.body" nodes)"
  bad_nodes="$(opsutil ready-summary "$work/ready.body" bad-nodes)"
else
  checks=""
fi
if [ "$status" = 200 ]; then
  report PASS ready "200 ($checks)"
elif [ "$status" = 000 ]; then
  report FAIL ready "$(no_answer ready)"
else
  report FAIL ready "got $status: ${checks:-$(body_excerpt ready)}"
fi
if [ -z "$nodes" ]; then
  report FAIL nodes "no node report from /api/ready"
elif [ -n "$bad_nodes" ]; then
  report FAIL nodes "$nodes"
else
  report PASS nodes "$nodes"
fi

# --- metrics before traffic -------------------------------------------------
status="$(http metrics0 GET /metrics)"
if [ "$status" = 200 ] && grep -q '^sofiia_build_info{' "$work/metrics0.body"; then
  report PASS "metrics before traffic" "200, $(grep -c '^sofiia_' "$work/metrics0.body") sofiia_* samples, sofiia_build_info present"
elif [ "$status" = 200 ]; then
  report FAIL "metrics before traffic" "200 but no sofiia_build_info sample"
elif [ "$status" = 000 ]; then
  report FAIL "metrics before traffic" "$(no_answer metrics0)"
else
  report FAIL "metrics before traffic" "$(unexpected metrics0 "$status" 200)"
fi

# --- audit auth ---------------------------------------------------------------
status="$(http audit_none GET '/api/audit?limit=1')"
if [ "$status" = 401 ]; then
  report PASS "audit without key" "401"
else
  report FAIL "audit without key" "$(unexpected audit_none "$status" 401)"
fi
status="$(http audit_wrong GET '/api/audit?limit=1' -H "@$work/wrong.header")"
if [ "$status" = 401 ]; then
  report PASS "audit with a wrong key" "401"
else
  report FAIL "audit with a wrong key" "$(unexpected audit_wrong "$status" 401)"
fi
if [ -z "$audit_key" ]; then
  report FAIL "audit with key" "SOFIIA_SMOKE_AUDIT_KEY is unset"
else
  status="$(http audit_key GET '/api/audit?limit=1' -H "@$work/audit.header")"
  if [ "$status" = 200 ] && [ -n "$(json audit_key 'isinstance(b["items"], list) or None')" ]; then
    report PASS "audit with key" "200"
  else
    report FAIL "audit with key" "$(unexpected audit_key "$status" 200)"
  fi
fi

# --- send and replay ----------------------------------------------------------
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
nonce="$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
chat="release-smoke-$stamp-$nonce"
key="release-smoke-key-$stamp-$nonce"
send_request_id="release-smoke-send-$stamp-$nonce"
replay_request_id="release-smoke-replay-$stamp-$nonce"
send_body='{"text":"release smoke: please answer"}'
sent=0
operator=""
if [ -z "$token" ]; then
  report FAIL send "SOFIIA_SMOKE_TOKEN is unset"
else
  status="$(http send POST "/api/chats/$chat/send" -H "@$work/auth.header" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
    -H "X-Request-Id: $send_request_id" --data "$send_body")"
  reply="$(json send 'b["reply"]["text"]')"
  if [ "$status" = 200 ] && [ -n "$reply" ]; then
    sent=1
    operator="$(json send 'b["message"]["operator_id"]')"
    sent_ts="$(json send 'b["message"]["ts"]')"
    report PASS send "200 from node $(json send 'b["node"]') in chat $chat as operator $operator (request $send_request_id)"
  elif [ "$status" = 000 ]; then
    report FAIL send "$(no_answer send)"
  else
    report FAIL send "got $status: $(body_excerpt send)"
  fi
fi
if [ "$sent" = 1 ]; then
  status="$(http replay POST "/api/chats/$chat/send" -H "@$work/auth.header" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
    -H "X-Request-Id: $replay_request_id" --data "$send_body")"
  replayed="$(header replay Idempotent-Replayed)"
  if [ "$status" = 200 ] && [ "$replayed" = true ] && cmp -s "$work/send.body" "$work/replay.body"; then
    report PASS "send replay" "200, Idempotent-Replayed: true, the first answer byte for byte"
  else
    same=no
    cmp -s "$work/send.body" "$work/replay.body" && same=yes
    report FAIL "send replay" "got $status, Idempotent-Replayed: ${replayed:-absent}, same body: $same"
  fi
else
  report SKIP "send replay" "needs a successful send"
fi

# --- audit write/read ---------------------------------------------------------
find_event() { # NAME ACTION REQUEST_ID: "id hash" of the event, if listed
  http "$1" GET /api/audit -G -H "@$work/audit.header" \
    --data-urlencode "actor=$operator" --data-urlencode "action=$2" \
    --data-urlencode "since=$sent_ts" --data-urlencode "limit=200" >"$work/$1.status"
  opsutil audit-find "$work/$1.body" "$3" 2>/dev/null
}
if [ "$sent" != 1 ]; then
  report SKIP "audit write/read" "needs a successful send"
elif [ -z "$audit_key" ]; then
  report FAIL "audit write/read" "SOFIIA_SMOKE_AUDIT_KEY is unset"
else
  send_event="$(find_event audit_send chat.send "$send_request_id")"
  replay_event="$(find_event audit_replay chat.send.replay "$replay_request_id")"
  read -r send_id send_hash send_outcome send_target <<<"$send_event"
  if [ -n "${send_id:-}" ] && [ "$send_outcome" = ok ] && [ "$send_target" = "$chat" ] && [ -n "$replay_event" ]; then
    report PASS "audit write/read" "chat.send event $send_id (hash ${send_hash:0:16}...) and its chat.send.replay event found by request id"
  elif [ -z "${send_id:-}" ]; then
    report FAIL "audit write/read" "no chat.send event with request id $send_request_id (audit read answered $(cat "$work/audit_send.status"))"
  elif [ -z "$replay_event" ]; then
    report FAIL "audit write/read" "no chat.send.replay event with request id $replay_request_id"
  else
    report FAIL "audit write/read" "chat.send event $send_id has outcome $send_outcome, target $send_target"
  fi
fi

# --- metrics after traffic ----------------------------------------------------
status="$(http metrics1 GET /metrics)"
if [ "$status" != 200 ]; then
  report FAIL "metrics after traffic" "$(unexpected metrics1 "$status" 200)"
else
  missing=()
  for name in sofiia_http_requests_total sofiia_http_request_duration_seconds \
    sofiia_infer_total sofiia_infer_duration_seconds sofiia_idempotency_total \
    sofiia_ratelimit_total sofiia_build_info; do
    grep -Eq "^${name}(_bucket|_sum|_count)?[{ ]" "$work/metrics1.body" || missing+=("$name")
  done
  failures="$(opsutil metric-sum "$work/metrics1.body" sofiia_audit_write_failures_total)"
  read -r failures_sum failures_n <<<"$failures"
  if [ "${#missing[@]}" -gt 0 ]; then
    report FAIL "metrics after traffic" "missing ${missing[*]}"
  elif [ "$failures_n" -gt 0 ] && [ "$failures_sum" != 0 ]; then
    report FAIL "metrics after traffic" "sofiia_audit_write_failures_total is $failures_sum: the audit trail refused actions"
  elif [ "$failures_n" -eq 0 ]; then
    report PASS "metrics after traffic" "the send's 7 metrics present (sofiia_audit_write_failures_total not exported: no failure counted)"
  else
    report PASS "metrics after traffic" "the send's 7 metrics present, sofiia_audit_write_failures_total 0"
  fi
fi

# --- redis idempotency A/B ------------------------------------------------------
run_redis="${SOFIIA_SMOKE_REDIS:-auto}"
ready_idempotency=""
if [ -s "$work/ready.body" ]; then
  ready_idempotency="$(opsutil ready-summary "$work/ready.body" backend:idempotency 2>/dev/null || true)"
fi
if [ "$run_redis" = auto ]; then
  if { [ -n "${A_URL:-}" ] && [ -n "${B_URL:-}" ]; } || [ "${SOFIIA_IDEMPOTENCY_BACKEND:-}" = redis ] ||
    [ "$ready_idempotency" = redis ]; then
    run_redis=1
  else
    run_redis=0
  fi
fi
if [ "$run_redis" != 1 ]; then
  if [ "${SOFIIA_SMOKE_REDIS:-auto}" = 0 ]; then
    why="SOFIIA_SMOKE_REDIS=0"
  elif [ -n "$ready_idempotency" ]; then
    why="idempotency is on $ready_idempotency (/api/ready)"
  else
    why="/api/ready did not say where idempotency is"
  fi
  report SKIP "redis idempotency A/B" "$why; force it with SOFIIA_SMOKE_REDIS=1, or A_URL and B_URL"
elif [ -z "$token" ]; then
  report FAIL "redis idempotency A/B" "SOFIIA_SMOKE_TOKEN is unset"
else
  a="${A_URL:-$base}"
  b="${B_URL:-$base}"
  # The A/B script reads the token from its environment only.
  A_URL="$a" B_URL="$b" SOFIIA_SMOKE_TOKEN="$token" \
    bash "$OPS_ROOT/ops/redis_idempotency_smoke.sh" >"$work/redis.out" 2>&1
  rc=$?
  sed 's/^/    | /' "$work/redis.out"
  where="A $(redact_url "$a"), B $(redact_url "$b")"
  [ "$a" = "$b" ] && where="$where: one instance; set A_URL and B_URL for a cross-instance check"
  if [ "$rc" -eq 0 ] && [ "$(tail -1 "$work/redis.out")" = PASS ]; then
    report PASS "redis idempotency A/B" "$where"
  else
    report FAIL "redis idempotency A/B" "ops/redis_idempotency_smoke.sh exited $rc ($where)"
  fi
fi

echo "smoke: $n_pass pass, $n_fail fail, $n_skip skip"
if [ "$n_fail" -gt 0 ]; then
  echo "RESULT: FAIL"
  exit 1
fi
echo "RESULT: PASS"
exit 0
