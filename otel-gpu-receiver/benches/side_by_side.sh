#!/usr/bin/env bash
# Two agents side by side, at the same time, each scraped once a second with 8 fake GPUs
# and --per-process: CPU per cycle (all threads' schedstat, in ns) and RSS of each, and
# B's over A's. Both run under the same load, so small differences (an allocator setting,
# a build profile) show; run it in both orders, because the two are never quite equal.
#
# Usage: otel-gpu-receiver/benches/side_by_side.sh SECONDS AGENT_A AGENT_B
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=$1 a=$2 b=$3
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
otel-gpu-receiver/benches/fake_gpus.sh "$work"
pa=$((20000 + RANDOM % 20000))
pb=$((pa + 1))
"$a" --interval 1s --no-otlp --prometheus "127.0.0.1:$pa" --nvml-lib "$work/libnvidia-ml.so.1" --per-process 2>/dev/null &
A=$!
pids+=("$A")
"$b" --interval 1s --no-otlp --prometheus "127.0.0.1:$pb" --nvml-lib "$work/libnvidia-ml.so.1" --per-process 2>/dev/null &
B=$!
pids+=("$B")
sleep 3
cpu() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }
a0=$(cpu "$A") b0=$(cpu "$B")
for _ in $(seq "$secs"); do
    curl -s "http://127.0.0.1:$pa/metrics" >/dev/null
    curl -s "http://127.0.0.1:$pb/metrics" >/dev/null
    sleep 1
done
a1=$(cpu "$A") b1=$(cpu "$B")
ra=$(awk '/VmRSS/ {print $2}' /proc/"$A"/status) rb=$(awk '/VmRSS/ {print $2}' /proc/"$B"/status)
awk -v a0="$a0" -v a1="$a1" -v b0="$b0" -v b1="$b1" -v s="$secs" -v ra="$ra" -v rb="$rb" 'BEGIN {
    x = (a1 - a0) / 1e6 / s; y = (b1 - b0) / 1e6 / s
    printf "A %.3f ms per cycle, RSS %.1f MB | B %.3f ms per cycle, RSS %.1f MB | B/A %.2f\n", x, ra / 1024, y, rb / 1024, y / x }'
