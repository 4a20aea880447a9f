#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) for
# a while each and prints PASS, or FAIL with the crashing input's path.
#   cursor           the signed cursor parser (arbitrary text, edited cursors)
#   idempotency_key  the Idempotency-Key header parser (bare and sf-string)
#
# Usage: bash ops/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs a nightly toolchain (rustup) and cargo-fuzz; it installs cargo-fuzz
# with `cargo install` when it is missing. Corpora are kept in fuzz/corpus/
# between runs; crashes are written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash ops/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

status=0
for target in cursor idempotency_key; do
  echo "fuzz: $target for ${seconds}s"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" 2>"fuzz/$target.log"; then
    echo "fuzz: $target FAILED; see fuzz/$target.log and fuzz/artifacts/$target/" >&2
    status=1
  fi
  grep -E '^(#[0-9]+\s+DONE|Done [0-9]+ runs)' "fuzz/$target.log" || tail -n 3 "fuzz/$target.log"
done

if [[ $status -eq 0 ]]; then echo "fuzz: PASS"; else echo "fuzz: FAIL"; exit 1; fi
