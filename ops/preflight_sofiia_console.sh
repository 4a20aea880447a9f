#!/usr/bin/env bash
# Release-day preflight of a sofiia-console deployment.
#
#   STRICT=1 bash ops/preflight_sofiia_console.sh [--config FILE]
#
# Run it on the console's host, as the console's user, from the console's
# working directory, with the console's environment (the same SOFIIA_*
# variables, or the same env file through --config FILE / SOFIIA_CONFIG): it
# checks the configuration the console will start with, and everything that
# configuration points at.
#
# One line per check:
#   PASS <check>[: detail]
#   WARN <check>: <reason>
#   FAIL <check>: <reason>
#   SKIP <check>: <why it does not apply>
# then `preflight: N pass, N warn, N fail, N skip` and `RESULT: PASS|WARN|FAIL`.
# Exit 1 on any FAIL, and on any WARN too when STRICT=1; otherwise 0. Exit 2
# on a usage error. Tokens and keys are never printed.
#
# Checks, in order:
#   binary             the sofiia-console binary ($SOFIIA_CONSOLE_BIN, PATH,
#                      else this checkout's target/release or target/debug)
#                      and its version
#   config             `sofiia-console check-config` accepts the settings
#                      (exactly what `serve` would refuse, named)
#   git-sha            the binary knows its git revision (WARN if unknown),
#                      and it is this checkout's HEAD when run from a checkout
#                      (WARN if not)
#   unknown-variables  SOFIIA_* variables the console does not know (WARN)
#   operator-tokens    SOFIIA_OPERATOR_TOKENS set (not the generated dev
#                      token) and every token >= 32 characters (else FAIL)
#   audit-keys         SOFIIA_AUDIT_KEYS set and every key >= 32 characters
#                      (else FAIL)
#   backends           the chat index, idempotency and rate-limit backends
#                      (WARN for an in-memory chat index: lost on restart)
#   cursor-secret      SOFIIA_CURSOR_SECRET set when instances share the Redis
#                      chat index (WARN otherwise: each instance would refuse
#                      the others' cursors)
#   redis              the Redis of the redis backends answers PING; with
#                      SOFIIA_REDIS_CLUSTER_NODES, every listed node answers
#                      CLUSTER INFO with cluster_state:ok
#                      (SKIP when no backend uses Redis)
#   postgres           the PostgreSQL of the postgres backends accepts a
#                      session to its database (SKIP when none uses it)
#   node NAME          GET {url}/v1/health answers, like the console's own
#                      readiness probe (any HTTP status counts); the built-in
#                      echo node is a WARN (`nodes`): not for production
#   data-dir           exists and is writable (WARN if it does not exist yet
#                      but can be created: expected only on a first deploy)
#   disk               free space on the data dir's filesystem: WARN below
#                      PREFLIGHT_WARN_FREE_MB (default 1024), FAIL below
#                      PREFLIGHT_FAIL_FREE_MB (default 100)
#   sqlite FILE        PRAGMA integrity_check of each SQLite file the stores
#                      keep their tables in (sofiia.db; a store's own file of
#                      an earlier release while it still uses it), when present
#                      (PREFLIGHT_SQLITE_CHECK=quick_check for a faster,
#                      shallower check on big files)
#   audit-verify       `sofiia-console audit-verify`: the hash chain is intact
#   alert-rules        `bash ops/check_alert_rules.sh` (promtool check and
#                      test of deploy/prometheus) when it exists and promtool
#                      is installed (PATH or PROMTOOL); else SKIP, since the
#                      script would otherwise download promtool
set -uo pipefail

# shellcheck source=ops/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

config_file="${SOFIIA_CONFIG:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --config)
      [ $# -ge 2 ] || { echo "preflight: --config needs a file" >&2; exit 2; }
      config_file="$2"
      shift 2
      ;;
    --config=*)
      config_file="${1#--config=}"
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "preflight: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
done

strict="${STRICT:-0}"
warn_free_mb="${PREFLIGHT_WARN_FREE_MB:-1024}"
fail_free_mb="${PREFLIGHT_FAIL_FREE_MB:-100}"
sqlite_check="${PREFLIGHT_SQLITE_CHECK:-integrity_check}"
min_secret_len=32
probe_timeout=2
for number in "$warn_free_mb" "$fail_free_mb"; do
  case "$number" in
    '' | *[!0-9]*)
      echo "preflight: PREFLIGHT_WARN_FREE_MB and PREFLIGHT_FAIL_FREE_MB must be whole numbers of MiB" >&2
      exit 2
      ;;
  esac
done
case "$sqlite_check" in
  integrity_check | quick_check) ;;
  *)
    echo "preflight: PREFLIGHT_SQLITE_CHECK must be integrity_check or quick_check" >&2
    exit 2
    ;;
esac

whoami_() { id -un 2>/dev/null || id -u; }

n_pass=0 n_warn=0 n_fail=0 n_skip=0
report() { # STATUS CHECK [DETAIL]
  local status="$1" check="$2" detail="${3:-}"
  case "$status" in
    PASS) n_pass=$((n_pass + 1)) ;;
    WARN) n_warn=$((n_warn + 1)) ;;
    FAIL) n_fail=$((n_fail + 1)) ;;
    SKIP) n_skip=$((n_skip + 1)) ;;
  esac
  echo "$status $check${detail:+: $detail}"
}

finish() {
  local result=PASS code=0
  if [ "$n_fail" -gt 0 ]; then
    result=FAIL
    code=1
  elif [ "$n_warn" -gt 0 ]; then
    result=WARN
    [ "$strict" = 1 ] && code=1
  fi
  echo "preflight: $n_pass pass, $n_warn warn, $n_fail fail, $n_skip skip"
  echo "RESULT: $result"
  exit "$code"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

config_args=()
if [ -n "$config_file" ]; then
  if [ ! -r "$config_file" ]; then
    report FAIL config "config file $config_file cannot be read"
    finish
  fi
  config_args=(--config "$config_file")
fi

console() {
  run_console "$bin" ${config_args[@]+"${config_args[@]}"} "$@"
}

# --- binary -----------------------------------------------------------------
if ! bin="$(find_console_bin)"; then
  report FAIL binary "$bin"
  finish
fi
if ! version="$(run_console "$bin" --version 2>&1)"; then
  report FAIL binary "$bin --version failed: $(echo "$version" | tail -1)"
  finish
fi
report PASS binary "$bin ($version)"

# --- config -----------------------------------------------------------------
cfg="$work/config.json"
console check-config >"$cfg" 2>"$work/config.err"
rc=$?
if [ "$rc" -ne 0 ]; then
  reason="$(sed -n 's/^sofiia-console: invalid configuration: //p' "$work/config.err" | head -1)"
  [ -n "$reason" ] || reason="check-config exited $rc: $(tail -1 "$work/config.err")"
  report FAIL config "$reason"
  finish
fi
if ! vars="$(opsutil shell-vars "$cfg" cfg_)"; then
  report FAIL config "cannot read the check-config report: $vars"
  finish
fi
cfg_node_names=()
cfg_node_urls=()
eval "$vars"
data_dir="${cfg_data_dir:-}"
case "$data_dir" in
  /*) ;;
  *) data_dir="$(pwd -P)/${data_dir#./}" ;;
esac
report PASS config "check-config accepts the settings${config_file:+ (env file $config_file)}; bind ${cfg_bind:-?}, data dir $data_dir"

# --- git-sha ----------------------------------------------------------------
git_sha="${cfg_git_sha:-}"
if [ -z "$git_sha" ] || [ "$git_sha" = unknown ]; then
  report WARN git-sha "the binary does not know its git revision (built outside git without SOFIIA_BUILD_GIT_SHA): it cannot be tied to a commit"
elif head="$(git -C "$OPS_ROOT" rev-parse HEAD 2>/dev/null)"; then
  case "$head" in
    "$git_sha"*) report PASS git-sha "$git_sha (this checkout's HEAD)" ;;
    *) report WARN git-sha "the binary was built from $git_sha but this checkout is at ${head:0:12}: is this the binary to release?" ;;
  esac
else
  report PASS git-sha "$git_sha (no git checkout here to compare with)"
fi

# --- unknown-variables ------------------------------------------------------
unknown="${cfg_unknown_variables:-}"
if [ -n "$unknown" ]; then
  report WARN unknown-variables "${unknown//,/, } (not settings of this console: typos?)"
else
  report PASS unknown-variables "none"
fi

# --- operator-tokens --------------------------------------------------------
if [ "${cfg_operator_tokens_source:-}" != SOFIIA_OPERATOR_TOKENS ]; then
  report FAIL operator-tokens "SOFIIA_OPERATOR_TOKENS is unset: the console would generate a development token"
else
  operators="${cfg_operator_tokens_operators:-}"
  shortest="${cfg_operator_tokens_shortest:-0}"
  if [ "$shortest" -lt "$min_secret_len" ]; then
    report FAIL operator-tokens "the shortest token has $shortest characters; at least $min_secret_len required"
  else
    report PASS operator-tokens "operators ${operators//,/, }; shortest token $shortest characters"
  fi
fi

# --- audit-keys -------------------------------------------------------------
key_count="${cfg_audit_keys_count:-0}"
key_shortest="${cfg_audit_keys_shortest:-0}"
if [ "$key_count" -eq 0 ]; then
  report FAIL audit-keys "SOFIIA_AUDIT_KEYS is unset: /api/audit would refuse every reader"
elif [ "$key_shortest" -lt "$min_secret_len" ]; then
  report FAIL audit-keys "the shortest key has $key_shortest characters; at least $min_secret_len required"
else
  overlap=""
  [ "$key_count" -gt 1 ] && overlap=" (rotation overlap: remove the old key once audit-key:N shows it unused)"
  report PASS audit-keys "$key_count key(s); shortest $key_shortest characters$overlap"
fi

# --- backends -----------------------------------------------------------------
chat_backend="${cfg_chat_index_backend:-}"
audit_backend="${cfg_audit_backend:-sqlite}"
idem_backend="${cfg_idempotency_backend:-}"
rl_backend="${cfg_rate_limit_backend:-}"
fail_mode="${cfg_rate_limit_fail_mode:-}"
backends="audit $audit_backend, chat index $chat_backend, idempotency $idem_backend, rate limit $rl_backend (fail mode $fail_mode)"
if [ "$chat_backend" = inmemory ]; then
  report WARN backends "$backends: an in-memory chat index loses every chat on restart"
else
  report PASS backends "$backends"
fi

# --- cursor-secret ------------------------------------------------------------
if [ "${cfg_cursor_keys_source:-generated}" = SOFIIA_CURSOR_SECRET ]; then
  report PASS cursor-secret "${cfg_cursor_keys_count:-1} key(s) from SOFIIA_CURSOR_SECRET"
elif [ "$chat_backend" = redis ] || [ "$chat_backend" = postgres ]; then
  report WARN cursor-secret "SOFIIA_CURSOR_SECRET is unset while the chat index is shared ($chat_backend): each instance signs cursors with its own generated key and refuses the others' (400); set the same SOFIIA_CURSOR_SECRET on every instance"
else
  report PASS cursor-secret "generated into $data_dir/cursor-secret (one instance)"
fi

# --- redis ------------------------------------------------------------------
redis_users=()
[ "$chat_backend" = redis ] && redis_users+=("chat index")
[ "$idem_backend" = redis ] && redis_users+=(idempotency)
[ "$rl_backend" = redis ] && redis_users+=("rate limit")
if [ "${#redis_users[@]}" -eq 0 ]; then
  report SKIP redis "no backend uses Redis"
else
  users="$(printf '%s, ' "${redis_users[@]}")"
  users="${users%, }"
  if [ -n "${cfg_redis_cluster_nodes:-}" ]; then
    # check-config redacts passwords; the probe needs the real list.
    nodes="$(opsutil setting SOFIIA_REDIS_CLUSTER_NODES "$config_file")" || nodes=""
    if answer="$(opsutil probe-redis-cluster "$nodes" "$probe_timeout")"; then
      report PASS redis "Redis Cluster ${cfg_redis_cluster_nodes}: $answer ($users)"
    else
      report FAIL redis "Redis Cluster ${cfg_redis_cluster_nodes}: $answer ($users)"
    fi
  else
    shown_url="${cfg_redis_url:-}"
    # check-config redacts the password; the probe needs the real URL, resolved
    # as the console resolves it (the environment wins over the env file).
    redis_url="$(opsutil setting SOFIIA_REDIS_URL "$config_file")" || redis_url="redis://127.0.0.1:6379"
    if answer="$(opsutil probe-redis "$redis_url" "$probe_timeout")"; then
      report PASS redis "$shown_url answers PING ($users)"
    else
      report FAIL redis "$shown_url does not answer PING ($users): $answer"
    fi
  fi
fi

# --- postgres -----------------------------------------------------------------
postgres_users=()
[ "$audit_backend" = postgres ] && postgres_users+=("audit trail")
[ "$chat_backend" = postgres ] && postgres_users+=("chat index")
if [ "${#postgres_users[@]}" -eq 0 ]; then
  report SKIP postgres "no backend uses PostgreSQL"
else
  users="$(printf '%s, ' "${postgres_users[@]}")"
  users="${users%, }"
  shown_url="${cfg_postgres_url:-}"
  postgres_url="$(opsutil setting SOFIIA_POSTGRES_URL "$config_file")" || postgres_url="postgres://127.0.0.1:5432/sofiia"
  if answer="$(opsutil probe-postgres "$postgres_url" "$probe_timeout")"; then
    report PASS postgres "$shown_url: $answer ($users)"
  else
    report FAIL postgres "$shown_url: $answer ($users)"
  fi
fi

# --- nodes ------------------------------------------------------------------
if [ "${cfg_nodes_set:-false}" != true ]; then
  report WARN nodes "SOFIIA_NODES is unset: the built-in echo node answers every send (not for production)"
else
  for i in "${!cfg_node_names[@]}"; do
    name="${cfg_node_names[$i]}"
    url="${cfg_node_urls[$i]}"
    if answer="$(opsutil probe-http "$url" "$probe_timeout")"; then
      report PASS "node $name" "$url/v1/health answered $answer"
    else
      report FAIL "node $name" "$url/v1/health does not answer: $answer"
    fi
  done
fi

# --- data-dir ---------------------------------------------------------------
existing="$data_dir"
if [ -d "$data_dir" ]; then
  if probe_file="$(mktemp "$data_dir/.preflight-write-test.XXXXXX" 2>/dev/null)"; then
    rm -f "$probe_file"
    report PASS data-dir "$data_dir exists and is writable by $(whoami_)"
  else
    report FAIL data-dir "$data_dir is not writable by $(whoami_)"
  fi
elif [ -e "$data_dir" ]; then
  report FAIL data-dir "$data_dir exists but is not a directory"
  existing=""
else
  existing="$(dirname "$data_dir")"
  while [ ! -e "$existing" ]; do existing="$(dirname "$existing")"; done
  if [ -d "$existing" ] && [ -w "$existing" ]; then
    report WARN data-dir "$data_dir does not exist yet; the console will create it ($existing is writable): expected only on a first deployment"
  else
    report FAIL data-dir "$data_dir does not exist and cannot be created: $existing is not a writable directory for $(whoami_)"
    existing=""
  fi
fi

# --- disk -------------------------------------------------------------------
if [ -n "$existing" ] && df_line="$(df -Pk "$existing" 2>/dev/null | awk 'NR == 2 {print $4, $6}')" && [ -n "$df_line" ]; then
  read -r free_kib mount <<<"$df_line"
  free_mib=$((free_kib / 1024))
  if [ "$free_mib" -ge 1024 ]; then
    shown="$(awk -v m="$free_mib" 'BEGIN {printf "%.1f GiB", m / 1024}')"
  else
    shown="$free_mib MiB"
  fi
  limits="warn below $warn_free_mb MiB, fail below $fail_free_mb MiB"
  if [ "$free_mib" -lt "$fail_free_mb" ]; then
    report FAIL disk "only $shown free on $mount ($limits)"
  elif [ "$free_mib" -lt "$warn_free_mb" ]; then
    report WARN disk "only $shown free on $mount ($limits)"
  else
    report PASS disk "$shown free on $mount ($limits)"
  fi
else
  report FAIL disk "cannot measure the free space of ${existing:-$data_dir}"
fi

# --- sqlite -----------------------------------------------------------------
# The files check-config names, each once; a store on another backend names
# none.
sqlite_files=()
for db in "${cfg_sqlite_files_audit:-}" "${cfg_sqlite_files_chat_index:-}" "${cfg_sqlite_files_idempotency:-}"; do
  [ -n "$db" ] || continue
  case " ${sqlite_files[*]+"${sqlite_files[*]}"} " in *" $db "*) continue ;; esac
  sqlite_files+=("$db")
done
for db in ${sqlite_files[@]+"${sqlite_files[@]}"}; do
  if [ ! -f "$data_dir/$db" ]; then
    report SKIP "sqlite $db" "not present in $data_dir"
  elif answer="$(opsutil sqlite-check "$data_dir/$db" "$sqlite_check")"; then
    report PASS "sqlite $db" "$answer"
  else
    report FAIL "sqlite $db" "$answer"
  fi
done

# --- audit-verify -------------------------------------------------------------
audit_file="$data_dir/${cfg_sqlite_files_audit:-sofiia.db}"
if [ "$audit_backend" != postgres ] && [ ! -f "$audit_file" ]; then
  report WARN audit-verify "no audit trail at $audit_file yet, nothing to verify: expected only on a first deployment"
else
  console audit-verify >"$work/verify.out" 2>"$work/verify.err"
  rc=$?
  line="$(grep -E '^audit chain ' "$work/verify.out" | tail -1)"
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    report PASS audit-verify "$line"
  elif [ -n "$line" ]; then
    report FAIL audit-verify "$line"
  else
    report FAIL audit-verify "exit $rc: $(sed 's/^sofiia-console: //' "$work/verify.err" | tail -1)"
  fi
fi

# --- alert-rules ------------------------------------------------------------
# Only with a promtool at hand: without one, check_alert_rules.sh would
# download Debian's prometheus package, which is neither quick nor something a
# production host should do during a preflight.
rules_script="$OPS_ROOT/ops/check_alert_rules.sh"
if [ ! -f "$rules_script" ]; then
  report SKIP alert-rules "ops/check_alert_rules.sh is not in this checkout"
elif [ -z "${PROMTOOL:-}" ] && ! command -v promtool >/dev/null 2>&1; then
  report SKIP alert-rules "promtool is not installed here (PATH or PROMTOOL); run bash ops/check_alert_rules.sh where it is"
else
  out="$(bash "$rules_script" 2>&1)"
  rc=$?
  last="$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -1)"
  failed="$(printf '%s\n' "$out" | grep '^FAIL: ' | sed 's/^FAIL: //' | paste -sd ',' - | sed 's/,/, /g')"
  if [ "$rc" -eq 0 ] && [ "$last" = PASS ]; then
    report PASS alert-rules "promtool check rules and test rules pass (ops/check_alert_rules.sh)"
  elif [ "$rc" -eq 0 ] && [ "${last#SKIP: }" != "$last" ]; then
    report SKIP alert-rules "${last#SKIP: }"
  elif [ -n "$failed" ]; then
    report FAIL alert-rules "promtool $failed failed (ops/check_alert_rules.sh exited $rc)"
  else
    report FAIL alert-rules "ops/check_alert_rules.sh exited $rc: ${last:-no output}"
  fi
fi

finish
