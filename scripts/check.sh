#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors; `unwrap`/`expect` are denied in
# library code outside tests by a crate-level lint), then every test of the workspace.
#
#   scripts/check.sh            everything
#   scripts/check.sh -- FILTER  the tests matching FILTER only (after fmt and clippy)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --all --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo test --workspace ${*}"
cargo test --workspace "$@"
