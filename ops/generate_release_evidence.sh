#!/usr/bin/env bash
# Writes the release evidence document of a sofiia-console release: a Markdown
# file shaped like the v1.0 release readiness summary, with what was observed.
#
#   bash ops/generate_release_evidence.sh [options] [OUTPUT.md]
#
# Run it like the preflight: on the console's host, as its user, from its
# working directory, with its environment (or --config FILE). OUTPUT.md
# defaults to ./release-evidence-<version>-<UTC time>.md.
#
# Options (each also an environment variable):
#   --base-url URL     smoke the running console at URL and snapshot its
#                      metrics (SOFIIA_EVIDENCE_BASE_URL). Without it the
#                      smoke, the metrics and every criterion that needs them
#                      are NOT RUN: the evidence is about the deployment, so
#                      no stand-in console is started. The smoke needs
#                      SOFIIA_SMOKE_TOKEN and SOFIIA_SMOKE_AUDIT_KEY (see
#                      ops/smoke.sh; A_URL/B_URL for the cross-instance Redis
#                      A/B smoke).
#   --run-tests        run the README's test command, `cargo test --workspace
#                      --all-features`, here (minutes) (SOFIIA_EVIDENCE_RUN_TESTS=1)
#   --test-log FILE    or read the results of a run from its log
#                      (SOFIIA_EVIDENCE_TEST_LOG); by default tests are NOT RUN
#   --observe SECS     snapshot the metrics again after SECS seconds and judge
#                      the 5xx criterion on the difference (the summary asks
#                      for the first 5-10 minutes: 300-600)
#                      (SOFIIA_EVIDENCE_OBSERVE_SECS)
#   --config FILE      the console's env file (SOFIIA_CONFIG)
#
# Also read: SOFIIA_RELEASE_BY (prepared by; default $USER),
# SOFIIA_EVIDENCE_ROUTER_SHA and SOFIIA_EVIDENCE_GATEWAY_SHA (recorded as given).
#
# The document holds, in this order: scope and version, effective
# configuration and its residual risks, test results, the preflight
# transcript (`STRICT=1 bash ops/preflight_sofiia_console.sh`), the smoke
# transcript (`bash ops/smoke.sh URL`), the audit-verify result with the
# newest audit event's hash (the external anchor to keep), the sofiia_*
# metrics (histogram buckets omitted), the go/no-go criteria of the summary
# with each one's observed state (PASS, WARN, FAIL, NOT RUN or N/A) and its
# evidence line, and the rollback readiness statement. Times are UTC. Tokens
# and keys are never written; any value of SOFIIA_OPERATOR_TOKENS,
# SOFIIA_AUDIT_KEYS, the smoke's secrets or the Redis password that shows up
# anyway is replaced by [REDACTED].
#
# Exit 0 when the document was written and no criterion FAILed, 1 when it was
# written with a FAIL (a NO-GO), 2 on a usage error or when it could not be
# written.
set -uo pipefail

# shellcheck source=ops/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
die() {
  echo "release evidence: $*" >&2
  exit 2
}
say() { echo "release evidence: $*" >&2; }

base_url="${SOFIIA_EVIDENCE_BASE_URL:-}"
run_tests="${SOFIIA_EVIDENCE_RUN_TESTS:-0}"
test_log="${SOFIIA_EVIDENCE_TEST_LOG:-}"
observe="${SOFIIA_EVIDENCE_OBSERVE_SECS:-0}"
config_file="${SOFIIA_CONFIG:-}"
output=""
while [ $# -gt 0 ]; do
  case "$1" in
    --base-url) [ $# -ge 2 ] || die "--base-url needs a URL"; base_url="$2"; shift 2 ;;
    --base-url=*) base_url="${1#*=}"; shift ;;
    --run-tests) run_tests=1; shift ;;
    --test-log) [ $# -ge 2 ] || die "--test-log needs a file"; test_log="$2"; shift 2 ;;
    --test-log=*) test_log="${1#*=}"; shift ;;
    --observe) [ $# -ge 2 ] || die "--observe needs seconds"; observe="$2"; shift 2 ;;
    --observe=*) observe="${1#*=}"; shift ;;
    --config) [ $# -ge 2 ] || die "--config needs a file"; config_file="$2"; shift 2 ;;
    --config=*) config_file="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      [ -z "$output" ] || die "one output file only (see --help)"
      output="$1"
      shift
      ;;
  esac
done
case "$observe" in '' | *[!0-9]*) die "--observe takes whole seconds" ;; esac
[ "$run_tests" = 1 ] && [ -n "$test_log" ] && die "--run-tests and --test-log exclude each other"
[ -z "$test_log" ] || [ -r "$test_log" ] || die "cannot read the test log $test_log"
[ -z "$config_file" ] || [ -r "$config_file" ] || die "cannot read the config file $config_file"
base_url="${base_url%/}"

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/meta"
meta() { printf '%s' "$2" >"$work/meta/$1"; }

config_args=()
[ -n "$config_file" ] && config_args=(--config "$config_file")

# --- scope and version -------------------------------------------------------
meta generated_at "$(utc_now)"
meta prepared_by "${SOFIIA_RELEASE_BY:-${USER:-$(id -un)}}"
meta root "$OPS_ROOT"
meta config_file "$config_file"
meta router_sha "${SOFIIA_EVIDENCE_ROUTER_SHA:-}"
meta gateway_sha "${SOFIIA_EVIDENCE_GATEWAY_SHA:-}"
meta observe_secs "$observe"
meta base_url "$( [ -n "$base_url" ] && redact_url "$base_url")"
if head="$(git -C "$OPS_ROOT" rev-parse HEAD 2>/dev/null)"; then
  meta head_sha "$head"
  meta head_tag "$(git -C "$OPS_ROOT" describe --tags --exact-match HEAD 2>/dev/null)"
  meta previous_tag "$(git -C "$OPS_ROOT" describe --tags --abbrev=0 HEAD^ 2>/dev/null)"
  if [ -n "$(git -C "$OPS_ROOT" --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    meta dirty yes
  else
    meta dirty no
  fi
fi
if bin="$(find_console_bin)"; then
  meta binary "$bin"
  meta binary_version "$(run_console "$bin" --version 2>&1)"
  run_console "$bin" ${config_args[@]+"${config_args[@]}"} check-config >"$work/config.json" 2>"$work/config.err"
  echo $? >"$work/config.rc"
else
  meta binary_missing "$bin"
fi

# --- tests ------------------------------------------------------------------
test_cmd="cargo test --workspace --all-features"
if [ "$run_tests" = 1 ]; then
  say "running $test_cmd (minutes)"
  meta tests_mode run
  meta tests_cmd "$test_cmd"
  # The tests must not see the console's settings, only their own variables.
  unset_args=()
  while IFS= read -r name; do
    case "$name" in
      SOFIIA_TEST_* | SOFIIA_REQUIRE_*) ;;
      SOFIIA_*) unset_args+=(-u "$name") ;;
    esac
  done < <(compgen -e)
  (cd "$OPS_ROOT" && env ${unset_args[@]+"${unset_args[@]}"} cargo test --workspace --all-features) >"$work/tests.log" 2>&1
  echo $? >"$work/tests.rc"
elif [ -n "$test_log" ]; then
  meta tests_mode log
  meta tests_cmd "$test_cmd"
  meta tests_source "$test_log"
  cp "$test_log" "$work/tests.log"
else
  meta tests_mode none
fi

# --- preflight ----------------------------------------------------------------
say "running the preflight"
preflight_cmd="STRICT=1 bash ops/preflight_sofiia_console.sh${config_file:+ --config $config_file}"
meta preflight_cmd "$preflight_cmd"
STRICT=1 bash "$OPS_ROOT/ops/preflight_sofiia_console.sh" ${config_args[@]+"${config_args[@]}"} >"$work/preflight.out" 2>&1
echo $? >"$work/preflight.rc"

# --- smoke ------------------------------------------------------------------
config_value() { # FIELD of the check-config report, or nothing
  [ -s "$work/config.json" ] && opsutil json-get "$work/config.json" "$1" 2>/dev/null
}
if [ -n "$base_url" ]; then
  say "running the smoke against $(redact_url "$base_url")"
  meta smoke_cmd "bash ops/smoke.sh $(redact_url "$base_url")"
  smoke_redis="${SOFIIA_SMOKE_REDIS:-}"
  if [ -z "$smoke_redis" ] && [ "$(config_value idempotency_backend)" = redis ]; then
    smoke_redis=1
  fi
  SOFIIA_SMOKE_REDIS="${smoke_redis:-auto}" bash "$OPS_ROOT/ops/smoke.sh" "$base_url" >"$work/smoke.out" 2>&1
  echo $? >"$work/smoke.rc"
fi

# --- audit trail ----------------------------------------------------------------
data_dir="$(config_value data_dir)"
if [ -n "$data_dir" ]; then
  case "$data_dir" in /*) ;; *) data_dir="$(pwd -P)/${data_dir#./}" ;; esac
  audit_file="$(config_value sqlite_files.audit)"
  audit_file="$data_dir/${audit_file:-sofiia.db}"
  meta audit_db "$audit_file"
  if [ -f "$audit_file" ]; then
    run_console "$bin" ${config_args[@]+"${config_args[@]}"} audit-verify >"$work/verify.out" 2>&1
    echo $? >"$work/verify.rc"
    opsutil audit-anchor "$audit_file" >"$work/anchor.out" 2>&1
    echo $? >"$work/anchor.rc"
  fi
fi

# --- metrics ------------------------------------------------------------------
snapshot() { # FILE: the sofiia_* lines of /metrics
  local raw="$work/metrics.raw"
  if curl -sS --max-time 10 -o "$raw" -w '%{http_code}' "$base_url/metrics" 2>"$work/metrics.err" | grep -qx 200; then
    grep '^sofiia_' "$raw" >"$1"
    date -u +%Y-%m-%dT%H:%M:%SZ >"$1.at"
    return 0
  fi
  return 1
}
if [ -n "$base_url" ]; then
  if snapshot "$work/metrics_start.txt"; then
    if [ "$observe" -gt 0 ]; then
      say "observing the metrics for $observe s"
      sleep "$observe"
      snapshot "$work/metrics_end.txt" || echo "the second snapshot failed: $(head -1 "$work/metrics.err")" >"$work/metrics_end.err"
    fi
  else
    echo "GET /metrics failed: $(head -1 "$work/metrics.err")" >"$work/metrics_start.err"
  fi
fi

# --- render -------------------------------------------------------------------
if [ -z "$output" ]; then
  version="$(sed 's/^sofiia-console //' "$work/meta/binary_version" 2>/dev/null)"
  output="release-evidence-${version:-unknown}-$(date -u +%Y%m%dT%H%M%SZ).md"
fi
python3 "$OPS_LIB/render_evidence.py" "$work" "$output" ${config_file:+"$config_file"}
rc=$?
case "$rc" in
  0 | 1) say "wrote $output" ;;
  *) die "could not write $output" ;;
esac
exit "$rc"
