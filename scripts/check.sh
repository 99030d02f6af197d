#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors; `unwrap`/`expect` are denied in
# library code outside tests by a crate-level lint), the API docs (warnings are errors), the
# examples (built, and the fast ones run), the benchmark harness (its unit tests and `benches/compare
# --quick`, surveil only), then every test of the workspace.
#
#   scripts/check.sh            everything
#   scripts/check.sh -- FILTER  the tests matching FILTER only (after fmt, clippy, the docs and
#                               the example build; the examples are not run)
#
# The examples that need the asset cache (scripts/setup.sh) are skipped with a message when it
# is missing, and fail under CI (`CI` set to a non-empty value other than `false` or `0`), as
# the tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --all --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc --workspace --no-deps (RUSTDOCFLAGS=-D warnings)"
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --workspace --no-deps

step "cargo build --workspace --examples"
cargo build --workspace --examples

if [ "$#" -eq 0 ]; then
  # Run the binaries just built (a `cargo run -p` could rebuild with other features).
  examples="${CARGO_TARGET_DIR:-target}/debug/examples"
  assets="${SURVEIL_ASSETS:-$HOME/.cache/surveil/assets}"
  ci="$(printf '%s' "${CI:-}" | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]')"
  have_assets() {
    local missing=()
    for a in "$@"; do [ -e "$assets/$a" ] || missing+=("$assets/$a"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ -n "$ci" ] && [ "$ci" != "false" ] && [ "$ci" != "0" ]; then
      printf 'missing under CI=%s: %s (scripts/setup.sh fetches them)\n' "$ci" "${missing[*]}" >&2
      exit 1
    fi
    printf 'skipped: missing %s (run scripts/setup.sh)\n' "${missing[*]}" >&2
    return 1
  }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT

  step "example system_config (surveil-config)"
  "$examples/system_config" testing >"$tmp/config.txt"
  grep -q '^vlm.weights = "dummy"  (flag --weights)$' "$tmp/config.txt"

  step "example checkpoint_fit --sample (surveil-memory)"
  "$examples/checkpoint_fit" --sample >"$tmp/fit.txt"
  grep -q '^  fit on cpu: fits: ' "$tmp/fit.txt"
  # Usage errors exit with status 2.
  status=0
  "$examples/checkpoint_fit" 2>/dev/null || status=$?
  [ "$status" -eq 2 ] || { echo "checkpoint_fit without arguments exited $status, not 2" >&2; exit 1; }

  step "example detect_track, 10 frames (surveil-vision)"
  if have_assets video/vtest.avi yolov3-tiny/yolov3-tiny.weights yolov3-tiny/yolov3-tiny.cfg yolov3-tiny/coco.names; then
    RUST_LOG=warn "$examples/detect_track" "$assets/video/vtest.avi" "$tmp/tracks.jsonl" --max-frames 10 >"$tmp/detect.json"
    grep -q '"frames_analysed": 10' "$tmp/detect.json"
    [ -s "$tmp/tracks.jsonl" ]
  fi

  step "example describe, git-base-coco with dummy weights (surveil-models)"
  if have_assets tokenizers/bert-base-uncased/tokenizer.json; then
    RUST_LOG=warn "$examples/describe" --model git-base-coco --weights dummy --max-new-tokens 4 >"$tmp/describe.txt"
    grep -q '^after_unload ' "$tmp/describe.txt"
  fi

  step "benches: the comparison harness's unit tests and --quick (surveil only, git-base-coco)"
  python3 -m unittest discover -s benches -p 'test_*.py'
  if have_assets tokenizers/bert-base-uncased/tokenizer.json; then
    cargo build -p surveil
    python3 benches/compare --quick --no-peers --surveil "${CARGO_TARGET_DIR:-target}/debug/surveil" \
      --workdir "$tmp/bench" --out "$tmp/bench.json" >"$tmp/bench.txt"
    grep -q 'decode (tokens/s)' "$tmp/bench.txt"
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp/bench.json"
  fi

  step "example run_pipeline, 4 frames, git-base-coco with dummy weights (surveil-orchestrator)"
  if have_assets video/vtest.avi yolov3-tiny/yolov3-tiny.weights tokenizers/bert-base-uncased/tokenizer.json; then
    "$examples/run_pipeline" --max-frames 4 >"$tmp/run.txt"
    grep -q '^4 frames in .*ended: max_frames$' "$tmp/run.txt"
  fi
fi

step "cargo test --workspace ${*}"
cargo test --workspace "$@"
