#!/usr/bin/env bash
# CPU per collection cycle of one agent, per thread, from /proc/<pid>/task/*/schedstat
# (time on CPU in ns: no 10 ms clock tick), with 8 fake GPUs and --per-process, scraped
# once a second. Shows which thread a change saved time on.
#
# Usage: otel-gpu-receiver/benches/threads.sh [CYCLES]   (default 60)
#   AGENT_BIN  a prebuilt agent (default: this tree's release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
cycles=${1:-60}
if [ -z "${AGENT_BIN:-}" ]; then
    cargo build --release -q -p otel-gpu-receiver
fi
bin=${AGENT_BIN:-${CARGO_TARGET_DIR:-target}/release/otel-gpu-receiver}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
otel-gpu-receiver/benches/fake_gpus.sh "$work"
port=$((20000 + RANDOM % 20000))
"$bin" --interval 1s --no-otlp --prometheus "127.0.0.1:$port" \
    --nvml-lib "$work/libnvidia-ml.so.1" --per-process 2>"$work/stderr.log" &
pid=$!
sleep 3
snap() {
    for t in /proc/"$pid"/task/*; do
        echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(cut -d' ' -f1 "$t/schedstat")"
    done | sort
}
snap >"$work/a"
for _ in $(seq "$cycles"); do
    curl -s "http://127.0.0.1:$port/metrics" >/dev/null
    sleep 1
done
snap >"$work/b"
echo "otel-gpu-receiver, 8 fake GPUs, --per-process, 1 s, $cycles cycles, $(nproc) CPUs; RSS $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status") MB"
join "$work/a" "$work/b" | awk -v c="$cycles" '
    { ms = ($5 - $3) / 1e6 / c; total += ms
      if (ms > 0) printf "  %-20s %6.3f ms per cycle\n", $2, ms }
    END { printf "  %-20s %6.3f ms per cycle\n", "all threads", total }'
