#!/usr/bin/env bash
# make fuzz: every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS (default 8) from its
# committed corpus, with libFuzzer's memory limits; any crash, panic, leak past the limits
# or timeout fails the run and leaves the input in fuzz/artifacts/. cargo-fuzz runs on the
# stable toolchain with `-s none` (Rust needs no AddressSanitizer for memory safety; what
# is looked for is panics, aborts, hangs and unbounded allocation). New inputs go to a
# scratch directory: the committed corpora change only when someone minimises them
# (docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-8}
targets=${FUZZ_TARGETS:-"capfile dissect reassembly session reader writer config http"}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "make fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked --quiet
fi
cargo fuzz build -s none
bin=target/x86_64-unknown-linux-gnu/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p artifacts
for t in $targets; do
    mkdir -p "$scratch/$t"
    echo "fuzz: $t for ${seconds}s"
    seeds=""
    [ -d "corpus/$t" ] && seeds="corpus/$t"
    # The reader's targets start from the repository's real captures too.
    case $t in capfile | reader) seeds="$seeds ../tests/fixtures" ;; esac
    # shellcheck disable=SC2086
    "$bin/$t" "$scratch/$t" $seeds -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=512 \
        -max_len=65536 -timeout=10 -artifact_prefix="artifacts/$t-" -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|==|SUMMARY|thread .* panicked)' || true
    test "${PIPESTATUS[0]}" -eq 0 || { echo "fuzz: $t failed; the input is in fuzz/artifacts/" >&2; exit 1; }
done
