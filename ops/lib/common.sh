# shellcheck shell=bash
# Shared by the release-day scripts (preflight, smoke, release evidence).
# Source it; it defines functions and OPS_ROOT / OPS_LIB, nothing else.

OPS_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OPS_ROOT="$(cd "$OPS_LIB/../.." && pwd)"

# python3 ops/lib/opsutil.py SUBCOMMAND ...
opsutil() {
  python3 "$OPS_LIB/opsutil.py" "$@"
}

utc_now() {
  date -u +%Y-%m-%dT%H:%M:%SZ
}

# The sofiia-console binary, in the order prune_audit_db.py uses:
# $SOFIIA_CONSOLE_BIN, bin/sofiia-console of the release these scripts came
# in, `sofiia-console` on PATH, then this checkout's
# target/release and target/debug builds (under $CARGO_TARGET_DIR if set).
# Prints the path; returns 1 with a reason on stdout when there is none.
find_console_bin() {
  if [ -n "${SOFIIA_CONSOLE_BIN:-}" ]; then
    if [ -x "$SOFIIA_CONSOLE_BIN" ] && [ -f "$SOFIIA_CONSOLE_BIN" ]; then
      echo "$SOFIIA_CONSOLE_BIN"
      return 0
    fi
    echo "SOFIIA_CONSOLE_BIN=$SOFIIA_CONSOLE_BIN is not an executable file"
    return 1
  fi
  # A release tarball ships the binary in bin/ beside ops/: these scripts
  # belong to that binary, so it wins over whatever is on PATH.
  if [ -x "$OPS_ROOT/bin/sofiia-console" ] && [ -f "$OPS_ROOT/bin/sofiia-console" ]; then
    echo "$OPS_ROOT/bin/sofiia-console"
    return 0
  fi
  local found
  if found="$(command -v sofiia-console 2>/dev/null)"; then
    echo "$found"
    return 0
  fi
  local target="${CARGO_TARGET_DIR:-$OPS_ROOT/target}" profile
  for profile in release debug; do
    if [ -x "$target/$profile/sofiia-console" ]; then
      echo "$target/$profile/sofiia-console"
      return 0
    fi
  done
  echo "sofiia-console not found: set SOFIIA_CONSOLE_BIN, put it on PATH, or run cargo build --release -p sofiia-console"
  return 1
}

# The ops scripts' own SOFIIA_* variables. The console would report them as
# unknown settings (a likely typo), so they are removed from the environment
# of every console command the scripts run.
is_script_variable() {
  case "$1" in
    SOFIIA_CONSOLE_BIN | SOFIIA_BIN_DIR | SOFIIA_SMOKE_* | SOFIIA_EVIDENCE_* | SOFIIA_RELEASE_* | SOFIIA_PREFLIGHT_*)
      return 0
      ;;
  esac
  return 1
}

# run_console BIN [--config FILE] ARGS...: BIN with the console's environment,
# minus the scripts' own variables.
run_console() {
  local bin="$1" name
  shift
  local unset_args=()
  while IFS= read -r name; do
    if is_script_variable "$name"; then
      unset_args+=(-u "$name")
    fi
  done < <(compgen -e)
  env ${unset_args[@]+"${unset_args[@]}"} "$bin" "$@"
}

# A free loopback TCP port (racy by nature; good enough for local helpers).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Prints a URL with any user:password@ replaced by ***@.
redact_url() {
  opsutil redact-url "$1"
}
