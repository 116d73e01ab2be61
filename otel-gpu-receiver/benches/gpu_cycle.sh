#!/usr/bin/env bash
# CPU per collection cycle of otel-gpu-receiver with 8 fake GPUs and --per-process,
# beside the same agent host-only, in the same run.
#
# The fake libnvidia-ml (tests/fake_nvml/fake_nvml.c) is built here with cc and loaded
# with --nvml-lib, so every reading goes through nvml-wrapper's real FFI path. The
# agent runs with a short interval and no exporter (--no-otlp, no Prometheus), so the
# figure is the collection cycle alone; CPU comes from /proc/<pid>/stat deltas.
#
# Then the footprint comparison of benches/footprint.sh with the same 8 fake GPUs, in one
# run: an agent scraped once a second, an agent pushing OTLP once a second, and
# node_exporter scraped once a second, with CPU per cycle, RSS, series and CPU per series.
#
# Usage: otel-gpu-receiver/benches/gpu_cycle.sh [CYCLES] [INTERVAL_MS]
#   AGENT_BIN: see footprint.sh; SCRAPES: footprint.sh's scrapes (default 50; more scrapes,
#   less of the 10 ms clock tick in each figure)
set -euo pipefail

cycles=${1:-200}
interval_ms=${2:-100}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

# AGENT_BIN: a prebuilt agent to measure instead of building this tree (footprint.sh too).
if [ -z "${AGENT_BIN:-}" ]; then
    cargo build --release -q -p otel-gpu-receiver
fi
bin=${AGENT_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/otel-gpu-receiver}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

otel-gpu-receiver/benches/fake_gpus.sh "$work"

ticks=$(getconf CLK_TCK)

# Prints CPU per cycle, series (one --once cycle of the same configuration), CPU per
# series and RSS for one agent configuration.
measure() {
    local series
    series=$("$bin" --once --format json --no-otlp "$@" 2>/dev/null | grep -c '"name":')
    "$bin" --interval "${interval_ms}ms" --no-otlp "$@" 2>"$work/stderr.log" &
    local pid=$!
    pids+=("$pid")
    sleep 2 # start-up and first cycles
    local a b
    a=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local secs
    secs=$(awk -v c="$cycles" -v i="$interval_ms" 'BEGIN { printf "%.3f", c * i / 1000 }')
    sleep "$secs"
    b=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    awk -v a="$a" -v b="$b" -v t="$ticks" -v c="$cycles" -v r="$rss" -v n="$series" \
        'BEGIN { ms = (b - a) * 1000 / t / c
                 printf "%.2f ms CPU per cycle, %d series, %.2f µs per series, RSS %.1f MB\n", ms, n, ms * 1000 / n, r / 1024 }'
}

echo "otel-gpu-receiver, ${cycles} cycles at ${interval_ms} ms, $(nproc) CPUs"
printf '  host only (--disable gpu):                 '
measure --disable gpu
printf '  host + 8 fake GPUs, --per-process:         '
measure --nvml-lib "$work/libnvidia-ml.so.1" --per-process
printf '  8 fake GPUs only (--families gpu), per-process: '
measure --families gpu --nvml-lib "$work/libnvidia-ml.so.1" --per-process

# The peer, in the same run: node_exporter's CPU per scrape (50 scrapes), when installed.
ne=$(command -v prometheus-node-exporter || command -v node_exporter || true)
if [ -n "$ne" ]; then
    port=$((20000 + RANDOM % 20000))
    "$ne" --web.listen-address="127.0.0.1:$port" >"$work/ne.log" 2>&1 &
    nepid=$!
    pids+=("$nepid")
    sleep 1
    curl -s "http://127.0.0.1:$port/metrics" >/dev/null # warm-up
    a=$(awk '{print $14 + $15}' "/proc/$nepid/stat")
    for _ in $(seq 50); do curl -s "http://127.0.0.1:$port/metrics" >/dev/null; done
    b=$(awk '{print $14 + $15}' "/proc/$nepid/stat")
    n=$(curl -s "http://127.0.0.1:$port/metrics" | grep -vc '^#')
    awk -v a="$a" -v b="$b" -v t="$ticks" -v n="$n" \
        'BEGIN { ms = (b - a) * 1000 / t / 50
                 printf "  node_exporter, per scrape (50 scrapes):    %.2f ms CPU, %d series, %.2f µs per series\n", ms, n, ms * 1000 / n }'
fi

echo
echo "footprint.sh with 8 fake GPUs and --per-process (pull and OTLP push, 1 s interval, ${SCRAPES:-50} scrapes):"
AGENT_ARGS="--nvml-lib $work/libnvidia-ml.so.1 --per-process" otel-gpu-receiver/benches/footprint.sh "${SCRAPES:-50}"
