#!/usr/bin/env bash
# Checks the Prometheus rules in deploy/prometheus with promtool:
#   promtool check rules deploy/prometheus/sofiia-alerts.yml       (syntax, PromQL)
#   promtool test rules  deploy/prometheus/sofiia-alerts.test.yml  (unit tests)
# and prints PASS or FAIL.
#
# promtool is taken from, in order: $PROMTOOL, promtool on PATH, or Debian's
# (or Ubuntu's) `prometheus` package fetched with `apt-get download` into a
# temporary directory and unpacked with `dpkg -x`, without installing it.
# With none of them it prints `SKIP: promtool not available` and exits 0,
# or exits 1 when REQUIRE_PROMTOOL=1.
#
# Usage: bash ops/check_alert_rules.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=deploy/prometheus/sofiia-alerts.yml
TESTS=deploy/prometheus/sofiia-alerts.test.yml

skip_or_fail() {
  echo "SKIP: promtool not available ($1)"
  if [[ "${REQUIRE_PROMTOOL:-0}" == "1" ]]; then
    echo "FAIL: REQUIRE_PROMTOOL=1 and promtool is not available"
    exit 1
  fi
  exit 0
}

tmp=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [[ -n "$tmp" ]]; then
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

# Fetches the prometheus package into the directory $1 and unpacks it there;
# fails quietly (apt's output is in $1/apt.log) when it cannot.
fetch_promtool() {
  command -v dpkg >/dev/null 2>&1 || return 1
  (
    cd "$1"
    if ! apt-get download prometheus >apt.log 2>&1; then
      # No package lists yet (a fresh container): refresh them if allowed.
      [[ "$(id -u)" == "0" ]] || exit 1
      apt-get update >>apt.log 2>&1 || exit 1
      apt-get download prometheus >>apt.log 2>&1 || exit 1
    fi
    debs=(prometheus_*.deb)
    [[ -f "${debs[0]}" ]] || exit 1
    dpkg -x "${debs[0]}" root >>apt.log 2>&1
  ) || return 1
  [[ -x "$1/root/usr/bin/promtool" ]]
}

if [[ -n "${PROMTOOL:-}" ]]; then
  promtool="$PROMTOOL"
  [[ -x "$promtool" ]] || skip_or_fail "PROMTOOL=$PROMTOOL is not executable"
elif command -v promtool >/dev/null 2>&1; then
  promtool="$(command -v promtool)"
elif command -v apt-get >/dev/null 2>&1; then
  echo "promtool is not on PATH; fetching Debian's prometheus package (not installing it)"
  tmp="$(mktemp -d)"
  # Readable by apt's unprivileged downloader.
  chmod 0755 "$tmp"
  if ! fetch_promtool "$tmp"; then
    if [[ -f "$tmp/apt.log" ]]; then
      tail -n 5 "$tmp/apt.log" | sed 's/^/  apt: /'
    fi
    skip_or_fail "apt-get download prometheus failed"
  fi
  promtool="$tmp/root/usr/bin/promtool"
else
  skip_or_fail "not on PATH, and no apt-get to fetch it"
fi

echo "promtool: $promtool ($("$promtool" --version 2>&1 | head -n 1))"

status=0
echo "== promtool check rules $RULES"
if "$promtool" check rules "$RULES"; then
  echo "PASS: check rules"
else
  echo "FAIL: check rules"
  status=1
fi

echo "== promtool test rules $TESTS"
if "$promtool" test rules "$TESTS"; then
  echo "PASS: test rules"
else
  echo "FAIL: test rules"
  status=1
fi

if [[ "$status" == "0" ]]; then
  echo "PASS"
else
  echo "FAIL"
fi
exit "$status"
