#!/usr/bin/env bash
# Footprint of otel-gpu-receiver (host families, 1 s interval, Prometheus endpoint)
# side by side with Debian's prometheus-node-exporter, both on 127.0.0.1 in the same run.
#
# Usage: otel-gpu-receiver/benches/footprint.sh [SCRAPES]   (default 50; needs curl and
#        the prometheus-node-exporter package; builds the agent in release mode)
#
# Reports CPU time per cycle (ours: utime+stime delta / cycles completed, which also pays
# for serving the scrapes) and per scrape (node_exporter: delta / scrapes) from
# /proc/<pid>/stat, RSS after the run from /proc/<pid>/status, and the series count of
# the last scrape. Prints a markdown table.
# AGENT_ARGS adds flags to the agent (benches/gpu_cycle.sh passes 8 fake GPUs with it).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCRAPES="${1:-50}"
OURS_PORT="${OURS_PORT:-19464}"
NE_PORT="${NE_PORT:-19100}"
NODE_EXPORTER="$(command -v prometheus-node-exporter || command -v node_exporter || true)"
if [ -z "$NODE_EXPORTER" ]; then
  echo "footprint.sh: needs Debian's prometheus-node-exporter (apt-get install -y prometheus-node-exporter)" >&2
  exit 1
fi
command -v curl >/dev/null || { echo "footprint.sh: needs curl" >&2; exit 1; }

cargo build --release -q -p otel-gpu-receiver
AGENT="${CARGO_TARGET_DIR:-target}/release/otel-gpu-receiver"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

read -r -a AGENT_EXTRA <<< "${AGENT_ARGS:-}"
RUST_LOG=warn "$AGENT" --interval 1s --no-otlp --prometheus "127.0.0.1:$OURS_PORT" "${AGENT_EXTRA[@]}" &
pids+=($!); OURS=$!
"$NODE_EXPORTER" --web.listen-address="127.0.0.1:$NE_PORT" >/dev/null 2>&1 &
pids+=($!); NE=$!

wait_up() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
wait_up "http://127.0.0.1:$OURS_PORT/metrics"
wait_up "http://127.0.0.1:$NE_PORT/metrics"
sleep 2 # let both settle (first-scrape allocations, CPU baseline)

TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }  # utime + stime
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cycles() { curl -fs "http://127.0.0.1:$OURS_PORT/metrics" | awk '/^otel_gpu_receiver_cycles_total/ { print $NF }'; }

c0=$(cycles); o0=$(cpu_ticks "$OURS"); n0=$(cpu_ticks "$NE")
for _ in $(seq "$SCRAPES"); do
  curl -fs "http://127.0.0.1:$OURS_PORT/metrics" >/tmp/footprint-ours.txt
  curl -fs "http://127.0.0.1:$NE_PORT/metrics" >/tmp/footprint-ne.txt
  sleep 1
done
o1=$(cpu_ticks "$OURS"); n1=$(cpu_ticks "$NE"); c1=$(cycles)
ours_rss=$(rss_kb "$OURS"); ne_rss=$(rss_kb "$NE")
ours_series=$(grep -vc '^#' /tmp/footprint-ours.txt)
ne_series=$(grep -vc '^#' /tmp/footprint-ne.txt)
rm -f /tmp/footprint-ours.txt /tmp/footprint-ne.txt

awk -v o0="$o0" -v o1="$o1" -v n0="$n0" -v n1="$n1" -v c0="$c0" -v c1="$c1" -v s="$SCRAPES" \
    -v tck="$TCK" -v orss="$ours_rss" -v nrss="$ne_rss" -v oser="$ours_series" -v nser="$ne_series" '
BEGIN {
  cyc = c1 - c0
  ocpu = (o1 - o0) * 1000 / tck / cyc
  ncpu = (n1 - n0) * 1000 / tck / s
  printf "| | otel-gpu-receiver | prometheus-node-exporter | ratio (ours/theirs) |\n"
  printf "|---|---|---|---|\n"
  printf "| CPU time | %.2f ms per cycle (%d cycles, %d scrapes) | %.2f ms per scrape (%d scrapes) | %.2f (target <= 0.33) |\n", ocpu, cyc, s, ncpu, s, (ncpu > 0 ? ocpu / ncpu : 0)
  printf "| RSS after the run | %.1f MB | %.1f MB | %.2f (target: ours <= 12 MB) |\n", orss / 1024, nrss / 1024, orss / nrss
  printf "| series in one scrape | %d | %d | %.2f |\n", oser, nser, oser / nser
}'
