# shellcheck shell=bash
# Finds promtool and amtool for the ops scripts; source it, then call
# `find_promtool DIR` or `find_amtool DIR`.
#
# Each tool is taken from, in order: its variable ($PROMTOOL, $AMTOOL), the
# tool on PATH, or Debian's (or Ubuntu's) package (`prometheus`,
# `prometheus-alertmanager`) fetched with `apt-get download` into DIR and
# unpacked with `dpkg -x`, without installing it. On success it sets
# `promtool` or `amtool` to the tool's path; otherwise it prints why and
# returns 1.

# Fetches the package $2 into the directory $1 and unpacks it there; fails
# quietly (apt's output is in $1/apt.log) when it cannot, or when the
# package holds no /usr/bin/$3.
fetch_tool() {
  local dir="$1" package="$2" binary="$3"
  command -v dpkg >/dev/null 2>&1 || return 1
  (
    cd "$dir"
    if ! apt-get download "$package" >apt.log 2>&1; then
      # No package lists yet (a fresh container): refresh them if allowed.
      [[ "$(id -u)" == "0" ]] || exit 1
      apt-get update >>apt.log 2>&1 || exit 1
      apt-get download "$package" >>apt.log 2>&1 || exit 1
    fi
    debs=("${package}"_*.deb)
    [[ -f "${debs[0]}" ]] || exit 1
    dpkg -x "${debs[0]}" root >>apt.log 2>&1
  ) || return 1
  [[ -x "$dir/root/usr/bin/$binary" ]]
}

# find_tool DIR BINARY PACKAGE VARIABLE: sets `found`.
find_tool() {
  local dir="$1" binary="$2" package="$3" variable="$4"
  local given="${!variable:-}"
  if [[ -n "$given" ]]; then
    found="$given"
    [[ -x "$found" ]] && return 0
    echo "$variable=$given is not executable"
    return 1
  fi
  if command -v "$binary" >/dev/null 2>&1; then
    found="$(command -v "$binary")"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$binary is not on PATH, and there is no apt-get to fetch it"
    return 1
  fi
  echo "$binary is not on PATH; fetching Debian's $package package (not installing it)"
  # Readable by apt's unprivileged downloader.
  chmod 0755 "$dir"
  if ! fetch_tool "$dir" "$package" "$binary"; then
    if [[ -f "$dir/apt.log" ]]; then
      tail -n 5 "$dir/apt.log" | sed 's/^/  apt: /'
    fi
    echo "apt-get download $package failed"
    return 1
  fi
  found="$dir/root/usr/bin/$binary"
}

# skip_or_fail TOOL REQUIRE_VARIABLE WHY: says the check is skipped and
# exits 0, or fails it (exit 1) when REQUIRE_VARIABLE is 1.
skip_or_fail() {
  local tool="$1" variable="$2"
  echo "SKIP: $tool not available ($3)"
  if [[ "${!variable:-0}" == "1" ]]; then
    echo "FAIL: $variable=1 and $tool is not available"
    exit 1
  fi
  exit 0
}

find_promtool() {
  local found=""
  find_tool "$1" promtool prometheus PROMTOOL || return 1
  promtool="$found"
}

find_amtool() {
  local found=""
  find_tool "$1" amtool prometheus-alertmanager AMTOOL || return 1
  amtool="$found"
}
