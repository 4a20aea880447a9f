#!/usr/bin/env bash
# Cost measurements of the sofiia-console send path, side by side with a bare
# proxy baseline: builds the release binaries, then runs sofiia-bench, which
# prints Markdown tables on stdout (progress on stderr).
#
#   ops/bench.sh --quick                 # under two minutes once built
#   ops/bench.sh                         # the full run (about 25 minutes)
#   ops/bench.sh --out docs/run.md       # also write the report to a file
#   ops/bench.sh load --scenarios embedded,redis --rounds 7
#   ops/bench.sh profile --call-graph    # perf profile of the console
#
# Every argument goes to sofiia-bench (`--help` lists them). The Redis
# scenario uses $SOFIIA_BENCH_REDIS_URL (default redis://127.0.0.1:6379) under
# a unique key prefix that is deleted afterwards, and is skipped with a note
# when no Redis answers. Benchmarks need a quiet machine: the 1-minute load
# average is printed first and should be well below the number of cores.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# Where cargo puts the binaries, CARGO_TARGET_DIR or not.
target_dir="$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
if [ -z "$target_dir" ]; then
  echo "bench: cannot find cargo's target directory" >&2
  exit 1
fi

echo "bench: building release binaries (sofiia-console, sofiia-router-stub, sofiia-bench)" >&2
cargo build --release --quiet -p sofiia-console -p sofiia-router-stub -p sofiia-bench >&2

load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)"
cores="$(nproc 2>/dev/null || echo 1)"
echo "bench: load average ${load} on ${cores} cores" >&2
if awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l + 0 > c * 0.75) }' 2>/dev/null; then
  echo "bench: warning: the machine is busy; numbers will be noisy (ratios less so)" >&2
fi

exec "$target_dir/release/sofiia-bench" "$@"
