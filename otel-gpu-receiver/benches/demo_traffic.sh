#!/usr/bin/env bash
# The demo stack's traffic into its collector, for SCALING.md's queue sizing: the three
# demo processes (demo-load at DEMO_LOAD_RATE=10, as docker-compose.yml) and one host-only
# receiver at 10 s push to examples/fleet_sink.rs, which prints the metric, span and
# log bytes per second over WINDOW seconds (default 60) after a 20 s warm-up.
# Debug builds of the demo: the sizes of what it sends do not depend on the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
WINDOW="${WINDOW:-60}"
[[ $WINDOW =~ ^[1-9][0-9]*$ ]] || { echo "demo_traffic.sh: WINDOW must be a whole number above 0" >&2; exit 2; }
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build -q -p demo --bins
cargo build --release -q -p otel-gpu-receiver --bin otel-gpu-receiver
cargo build --release -q -p otel-gpu-receiver --example fleet_sink
port() { echo $((20000 + RANDOM % 20000)); }
sink_port=$(port) backend_port=$(port) gateway_port=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$TARGET/release/examples/fleet_sink" "127.0.0.1:$sink_port" 20 "$WINDOW" 10 2>/dev/null &
sink=$!
sleep 1
export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" OTEL_METRIC_EXPORT_INTERVAL=10000 RUST_LOG=info
OTEL_SERVICE_NAME=demo-backend DEMO_BACKEND_ADDR="127.0.0.1:$backend_port" \
  "$TARGET/debug/demo-backend" >/dev/null 2>&1 &
pids+=($!)
OTEL_SERVICE_NAME=demo-gateway DEMO_GATEWAY_ADDR="127.0.0.1:$gateway_port" \
  DEMO_BACKEND_URL="http://127.0.0.1:$backend_port" "$TARGET/debug/demo-gateway" >/dev/null 2>&1 &
pids+=($!)
OTEL_SERVICE_NAME=demo-load DEMO_GATEWAY_URL="http://127.0.0.1:$gateway_port" DEMO_LOAD_RATE=10 \
  "$TARGET/debug/demo-load" >/dev/null 2>&1 &
pids+=($!)
RUST_LOG=warn "$TARGET/release/otel-gpu-receiver" --interval 10s \
  --otlp-endpoint "http://127.0.0.1:$sink_port" --instance-id demo-host 2>/dev/null &
pids+=($!)
wait "$sink"
