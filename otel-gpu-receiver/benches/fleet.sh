#!/usr/bin/env bash
# A fleet on one machine: N agents (default 100), each with 8 fake GPUs (fake_gpus.sh:
# two compute processes per GPU) and --per-process, pushing OTLP gRPC every INTERVAL to
# one sink (examples/fleet_sink.rs). Every agent starts in the same second, as a
# DaemonSet rollout starts them. It prints the sink's ingest (requests, data points
# and bytes per second; one agent's request), how the pushes spread over the interval,
# and the agents' total CPU and memory over the measured window, as one JSON object.
#
# Usage: otel-gpu-receiver/benches/fleet.sh [AGENTS]          (default 100)
#   WINDOW     seconds measured (default 60), after WARMUP (default 15) seconds
#   INTERVAL   the agents' --interval in seconds (default 10, the stack's)
#   FIRST      the agents' --first-export-delay (default random; 0s: all push in step)
#   AGENT_BIN  a prebuilt agent (default: this tree, built with --release)
# SCALING.md has its results. The machine is shared: keep the window short (1-2 min).
#
# CPU: utime+stime from /proc/<pid>/stat over the window, summed over the agents, as a
# share of one core. Memory: the agents' VmRSS summed at the end of the window. The
# clock tick is 10 ms.
set -euo pipefail
cd "$(dirname "$0")/../.."

AGENTS="${1:-100}"
WINDOW="${WINDOW:-60}"
WARMUP="${WARMUP:-15}"
INTERVAL="${INTERVAL:-10}"
FIRST="${FIRST:-random}"
for v in AGENTS WINDOW WARMUP INTERVAL; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "fleet.sh: $v must be a whole number above 0 (got ${!v})" >&2; exit 2; }
done
SINK_PORT="${SINK_PORT:-$((20000 + RANDOM % 20000))}"

TARGET="${CARGO_TARGET_DIR:-target}"
if [ -z "${AGENT_BIN:-}" ]; then
  cargo build --release -q -p otel-gpu-receiver --bin otel-gpu-receiver
  AGENT_BIN="$TARGET/release/otel-gpu-receiver"
fi
cargo build --release -q -p otel-gpu-receiver --example fleet_sink

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

otel-gpu-receiver/benches/fake_gpus.sh "$work"
"$TARGET/release/examples/fleet_sink" "127.0.0.1:$SINK_PORT" "$WARMUP" "$WINDOW" "$INTERVAL" \
  >"$work/sink.json" 2>"$work/sink.log" &
sink=$!
for _ in $(seq 50); do grep -q listening "$work/sink.log" && break; sleep 0.1; done

agents=()
for i in $(seq "$AGENTS"); do
  RUST_LOG=warn "$AGENT_BIN" --interval "${INTERVAL}s" --first-export-delay "$FIRST" \
    --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --instance-id "node-$i" \
    --nvml-lib "$work/libnvidia-ml.so.1" --per-process 2>>"$work/agents.log" &
  pids+=($!)
  agents+=($!)
done

ticks() { # utime+stime of every agent, summed
  local sum=0 p f
  for p in "${agents[@]}"; do
    read -r -a f <"/proc/$p/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}
sleep "$WARMUP"
t0=$(ticks)
sleep "$WINDOW"
t1=$(ticks)
rss_kb=0
for p in "${agents[@]}"; do
  rss_kb=$((rss_kb + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status")))
done
wait "$sink"
hz=$(getconf CLK_TCK)
python3 - "$work/sink.json" "$((t1 - t0))" "$hz" "$WINDOW" "$rss_kb" "$AGENTS" "$FIRST" <<'PY'
import json, sys
path, ticks, hz, window, rss_kb, agents, first = sys.argv[1:]
r = json.load(open(path))
cpu = int(ticks) / int(hz) / float(window)
r.update({
    "agents_started": int(agents),
    "first_export_delay": first,
    "agents_cpu_cores": round(cpu, 4),
    "agent_cpu_ms_per_s": round(1000 * cpu / int(agents), 3),
    "agents_rss_mb": round(int(rss_kb) / 1024, 1),
    "agent_rss_mb": round(int(rss_kb) / 1024 / int(agents), 2),
})
print(json.dumps(r, indent=2))
PY
if [ -s "$work/agents.log" ]; then
  echo "fleet.sh: the agents logged (first lines):" >&2
  head -5 "$work/agents.log" >&2
fi
