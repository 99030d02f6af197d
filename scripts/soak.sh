#!/usr/bin/env bash
# Soak test: `surveil run` on the sample clip looped for a long time, sampling the process's
# resident memory, open files and threads every interval. Not part of CI (it runs for an hour).
#
#   scripts/soak.sh                       1 hour, profile testing (git-base-coco, dummy weights)
#   SOAK_SECONDS=600 SOAK_PROFILE=testing_qwen scripts/soak.sh
#   SOAK_ANALYSE=DIR/samples.csv scripts/soak.sh      only the figures of an earlier run
#
# Environment:
#   SURVEIL        the binary (default: target/release/surveil, built if missing)
#   SOAK_SECONDS   how long to run (default 3600)
#   SOAK_INTERVAL  seconds between samples (default 10)
#   SOAK_WARMUP    seconds excluded from the figures (default 300: model load, first analyses,
#                  allocator arenas filling)
#   SOAK_PROFILE   profile (default testing)
#   SOAK_OUT       folder for the looped clip, samples.csv, the run folder and the logs
#                  (default: a new folder under ${TMPDIR:-/tmp})
#
# Stops the run with SIGINT (the graceful stop a user's Ctrl-C gives) and prints the figures.
# RSS goes up and down with each analysis (its activation buffers come and go), so "flat" is
# judged on the drift: the median of the last 10 minutes against the median of the first 10
# minutes after warm-up, and their maxima likewise, each within 2 %; threads and open files must
# not grow. Exit status 1 when a figure fails, 2 when the run itself failed.
set -euo pipefail
cd "$(dirname "$0")/.."

SURVEIL="${SURVEIL:-target/release/surveil}"
SECONDS_TOTAL="${SOAK_SECONDS:-3600}"
INTERVAL="${SOAK_INTERVAL:-10}"
WARMUP="${SOAK_WARMUP:-300}"
PROFILE="${SOAK_PROFILE:-testing}"
ASSETS="${SURVEIL_ASSETS:-$HOME/.cache/surveil/assets}"

die() { printf 'soak: error: %s\n' "$*" >&2; exit 2; }

# report <samples.csv> <frames analysed or ?>
report() {
  awk -F, -v warm="$WARMUP" -v frames="$2" -v csvfile="$1" -v win=600 '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR == 1 { next }
    $1 >= warm { n++; t[n] = $1; r[n] = $2; th[n] = $4; fd[n] = $5 }
    END {
      if (n < 4) { print "soak: too few samples after warm-up"; exit 1 }
      first_end = t[1] + win; last_start = t[n] - win
      rmin = rmax = r[1]; tmax = th[1]; fmax = fd[1]
      for (i = 1; i <= n; i++) {
        if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i]
        if (th[i] > tmax) tmax = th[i]; if (fd[i] > fmax) fmax = fd[i]
        if (t[i] <= first_end) { a++; fa[a] = r[i]; if (r[i] > famax) famax = r[i] }
        if (t[i] >= last_start) { b++; lb[b] = r[i]; if (r[i] > lbmax) lbmax = r[i] }
      }
      m1 = median(fa, a); m2 = median(lb, b)
      drift = (m2 / m1 - 1) * 100; peak_drift = (lbmax / famax - 1) * 100
      printf "soak: %d samples from %d s to %d s, %s frames analysed (samples: %s)\n", n, t[1], t[n], frames, csvfile
      printf "soak: RSS median first %d s %.1f MiB, last %d s %.1f MiB: drift %+.2f %% (limit 2 %%)\n", win, m1 / 1024, win, m2 / 1024, drift
      printf "soak: RSS max first window %.1f MiB, last window %.1f MiB: %+.2f %%; overall %.1f-%.1f MiB\n", famax / 1024, lbmax / 1024, peak_drift, rmin / 1024, rmax / 1024
      printf "soak: threads %d -> %d (max %d), open files %d -> %d (max %d)\n", th[1], th[n], tmax, fd[1], fd[n], fmax
      ok = drift <= 2 && peak_drift <= 2 && th[n] <= th[1] && fd[n] <= fd[1]
      print (ok ? "soak: PASS" : "soak: FAIL")
      exit ok ? 0 : 1
    }' "$1"
}

if [ -n "${SOAK_ANALYSE:-}" ]; then
  report "$SOAK_ANALYSE" "?"
  exit $?
fi

OUT="${SOAK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/surveil-soak.XXXXXX")}"
mkdir -p "$OUT"
[ -f "$ASSETS/video/vtest.avi" ] || die "$ASSETS/video/vtest.avi is missing: run scripts/setup.sh"
if [ ! -x "$SURVEIL" ]; then
  cargo build --release -p surveil >&2 || die "cargo build failed"
fi

# The clip is 79.5 s long; loop it enough times to outlast the soak at any analysis speed.
loops=$(( SECONDS_TOTAL / 60 + 2 ))
clip="$OUT/looped.avi"
if [ ! -f "$clip" ]; then
  ffmpeg -nostdin -loglevel error -stream_loop "$loops" -i "$ASSETS/video/vtest.avi" -c copy "$clip" \
    || die "ffmpeg could not loop the clip"
fi

"$SURVEIL" run --profile "$PROFILE" --weights dummy --source "$clip" --output "$OUT/run" --json -q \
  >"$OUT/summary-stdout.json" 2>"$OUT/stderr.log" &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' INT TERM

csv="$OUT/samples.csv"
echo "seconds,rss_kib,vm_kib,threads,open_files" >"$csv"
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  [ "$now" -ge "$SECONDS_TOTAL" ] && break
  if [ -r "/proc/$pid/status" ]; then
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
    vm=$(awk '/^VmSize:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "")
    files=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    [ -n "$rss" ] && echo "$now,$rss,$vm,$threads,$files" >>"$csv"
  fi
  sleep "$INTERVAL"
done

alive=0
if kill -0 "$pid" 2>/dev/null; then
  alive=1
  kill -INT "$pid"
fi
status=0
wait "$pid" || status=$?
[ "$alive" -eq 1 ] || die "surveil exited before the soak ended (status $status); see $OUT/stderr.log"
[ "$status" -eq 0 ] || die "surveil exited with status $status after SIGINT; see $OUT/stderr.log"

frames=$(grep -o '"frames": *[0-9]*' "$OUT/run/summary.json" 2>/dev/null | head -1 | grep -o '[0-9]*$' || echo "?")
report "$csv" "$frames"
