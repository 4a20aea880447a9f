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

# shellcheck source=ops/lib/promtool.sh
source ops/lib/promtool.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
promtool=""
find_promtool "$tmp" || skip_or_fail promtool REQUIRE_PROMTOOL "see above"

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
