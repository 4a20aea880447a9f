# shellcheck shell=bash
# Finds promtool for the ops scripts; source it, then call `find_promtool DIR`.
#
# promtool is taken from, in order: $PROMTOOL, promtool on PATH, or Debian's
# (or Ubuntu's) `prometheus` package fetched with `apt-get download` into DIR
# and unpacked with `dpkg -x`, without installing it. On success it sets
# `promtool` to its path; otherwise it prints why and returns 1.

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

find_promtool() {
  local dir="$1"
  if [[ -n "${PROMTOOL:-}" ]]; then
    promtool="$PROMTOOL"
    [[ -x "$promtool" ]] && return 0
    echo "PROMTOOL=$PROMTOOL is not executable"
    return 1
  fi
  if command -v promtool >/dev/null 2>&1; then
    promtool="$(command -v promtool)"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool is not on PATH, and there is no apt-get to fetch it"
    return 1
  fi
  echo "promtool is not on PATH; fetching Debian's prometheus package (not installing it)"
  # Readable by apt's unprivileged downloader.
  chmod 0755 "$dir"
  if ! fetch_promtool "$dir"; then
    if [[ -f "$dir/apt.log" ]]; then
      tail -n 5 "$dir/apt.log" | sed 's/^/  apt: /'
    fi
    echo "apt-get download prometheus failed"
    return 1
  fi
  promtool="$dir/root/usr/bin/promtool"
}
