#!/usr/bin/env bash
# make test: formatting, clippy with warnings denied, every unit and end-to-end test (those
# that need root too, when run as root), the API docs with warnings denied; then a check that the run left nothing in the working
# tree (captures, scratch files) that was not there before it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

# Untracked and ignored paths outside target/ (directories collapsed), when this is a git
# checkout; nothing otherwise.
leftovers() {
    git rev-parse --git-dir >/dev/null 2>&1 || return 0
    git status --porcelain --ignored --untracked-files=normal | grep -v ' target/$' | sort || true
}
before=$(leftovers)

$cargo fmt --all -- --check
$cargo clippy --workspace --all-targets --locked -- -D warnings
# Tests that need root are `#[ignore = "needs root: …"]`: run as well when this is root
# (CI is), and named when they cannot be.
if [ "$(id -u)" -eq 0 ]; then
    $cargo test --workspace --locked -- --include-ignored
else
    $cargo test --workspace --locked
    not_run=$($cargo test --workspace --locked -q -- --ignored --list 2>/dev/null | grep ': test$' || true)
    if [ -n "$not_run" ]; then
        echo "make test: not run, they need root (CI runs them):" >&2
        echo "$not_run" | sed 's/: test$//; s/^/    /' >&2
    fi
fi
RUSTDOCFLAGS="-D warnings" $cargo doc --workspace --no-deps --locked

new=$(comm -13 <(echo "$before") <(leftovers))
if [ -n "$new" ]; then
    echo "make test: the tests left these in the working tree:" >&2
    echo "$new" >&2
    exit 1
fi
