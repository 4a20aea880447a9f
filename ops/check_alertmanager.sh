#!/usr/bin/env bash
# Checks deploy/alertmanager/alertmanager.yml with amtool:
#   amtool check-config                     (syntax, receivers, inhibitions)
#   amtool config routes test ...           (every alert of
#                                            deploy/prometheus/sofiia-alerts.yml
#                                            reaches the receiver its severity
#                                            names)
# and prints PASS or FAIL.
#
# amtool is taken from, in order: $AMTOOL, amtool on PATH, or Debian's (or
# Ubuntu's) `prometheus-alertmanager` package fetched with `apt-get download`
# into a temporary directory and unpacked with `dpkg -x`, without installing
# it. With none of them it prints `SKIP: amtool not available` and exits 0,
# or exits 1 when REQUIRE_AMTOOL=1.
#
# Usage: bash ops/check_alertmanager.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=deploy/alertmanager/alertmanager.yml
RULES=deploy/prometheus/sofiia-alerts.yml

# shellcheck source=ops/lib/promtool.sh
source ops/lib/promtool.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
amtool=""
find_amtool "$tmp" || skip_or_fail amtool REQUIRE_AMTOOL "see above"
echo "amtool: $amtool ($("$amtool" --version 2>&1 | head -n 1))"

status=0
echo "== amtool check-config $CONFIG"
if "$amtool" check-config "$CONFIG"; then
  echo "PASS: check-config"
else
  echo "FAIL: check-config"
  status=1
fi

# Each alert of the rules file, with its severity, must reach the receiver
# that severity names (the absent-job alert pages on its own route).
expected_receiver() {
  case "$1" in
    critical) echo sofiia-pager ;;
    warning) echo sofiia-tickets ;;
    *) echo "an unknown severity: $1" ;;
  esac
}
alerts=0
while read -r alert severity; do
  alerts=$((alerts + 1))
  want="$(expected_receiver "$severity")"
  got="$("$amtool" config routes test --config.file="$CONFIG" \
    "alertname=$alert" "severity=$severity" "instance=console-1:8080" "node=NODA1" 2>&1 | tail -n 1)"
  if [[ "$got" == "$want" ]]; then
    echo "PASS: $alert ($severity) -> $got"
  else
    echo "FAIL: $alert ($severity) -> $got, expected $want"
    status=1
  fi
done < <(awk '
  /^[[:space:]]*- alert:/ { alert = $3 }
  /^[[:space:]]*severity:/ && alert != "" { print alert, $2; alert = "" }
' "$RULES")
if [[ "$alerts" -eq 0 ]]; then
  echo "FAIL: no alert found in $RULES"
  status=1
fi

if [[ "$status" == "0" ]]; then
  echo "PASS"
else
  echo "FAIL"
fi
exit "$status"
