#!/usr/bin/env bash
# Footprint of otel-gpu-receiver beside Debian's prometheus-node-exporter, in one run, all
# on 127.0.0.1, each agent at a 1 s interval:
#   pull  the agent with its Prometheus endpoint (--no-otlp), scraped once a second;
#   push  a second agent pushing OTLP gRPC once a second to a local sink
#         (examples/otlp_sink.rs, which forgets what it receives), no Prometheus endpoint;
#   node_exporter (default collectors), scraped once a second.
# Scrapes are plain curl (no gzip, no OpenMetrics), the same request for both exporters.
#
# Usage: otel-gpu-receiver/benches/footprint.sh [SCRAPES]   (default 50)
#   AGENT_ARGS  extra agent flags (benches/gpu_cycle.sh passes 8 fake GPUs with it)
#   AGENT_BIN   a prebuilt agent to measure instead of building this tree (e.g. an older build)
#   MODES       "pull push" (default), "pull" or "push"
# Needs curl and the prometheus-node-exporter package (installed with apt-get when missing).
#
# CPU is the utime+stime delta from /proc/<pid>/stat over the run. An agent's is divided by
# the collection cycles it completed (it pays for serving or pushing too); node_exporter's
# by its scrapes (it collects on scrape). Series: the lines of one scrape that are not
# comments (target_info included); for push, the data points of the last export request.
# The clock tick is 10 ms, so each CPU figure carries about ±10 ms over the whole run.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCRAPES="${1:-50}"
MODES="${MODES:-pull push}"
port() { echo $((20000 + RANDOM % 20000)); }
PULL_PORT="${PULL_PORT:-$(port)}"
SINK_PORT="${SINK_PORT:-$(port)}"
NE_PORT="${NE_PORT:-$(port)}"

NODE_EXPORTER="$(command -v prometheus-node-exporter || command -v node_exporter || true)"
if [ -z "$NODE_EXPORTER" ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "footprint.sh: installing prometheus-node-exporter with apt-get" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    prometheus-node-exporter >/dev/null
  NODE_EXPORTER="$(command -v prometheus-node-exporter)"
fi
command -v curl >/dev/null || { echo "footprint.sh: needs curl" >&2; exit 1; }

TARGET="${CARGO_TARGET_DIR:-target}"
if [ -z "${AGENT_BIN:-}" ]; then
  cargo build --release -q -p otel-gpu-receiver --bin otel-gpu-receiver
  AGENT_BIN="$TARGET/release/otel-gpu-receiver"
fi
case " $MODES " in *" push "*)
  cargo build --release -q -p otel-gpu-receiver --example otlp_sink ;;
esac

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

read -r -a AGENT_EXTRA <<< "${AGENT_ARGS:-}"
PULL="" PUSH="" SINK=""
case " $MODES " in *" pull "*)
  RUST_LOG=warn "$AGENT_BIN" --interval 1s --no-otlp --prometheus "127.0.0.1:$PULL_PORT" \
    "${AGENT_EXTRA[@]}" 2>"$work/pull.log" &
  pids+=($!); PULL=$! ;;
esac
case " $MODES " in *" push "*)
  "$TARGET/release/examples/otlp_sink" "127.0.0.1:$SINK_PORT" >"$work/sink.out" 2>"$work/sink.log" &
  pids+=($!); SINK=$!
  RUST_LOG=warn "$AGENT_BIN" --interval 1s --otlp-endpoint "http://127.0.0.1:$SINK_PORT" \
    "${AGENT_EXTRA[@]}" 2>"$work/push.log" &
  pids+=($!); PUSH=$! ;;
esac
"$NODE_EXPORTER" --web.listen-address="127.0.0.1:$NE_PORT" >/dev/null 2>&1 &
pids+=($!); NE=$!

wait_up() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
[ -z "$PULL" ] || wait_up "http://127.0.0.1:$PULL_PORT/metrics"
wait_up "http://127.0.0.1:$NE_PORT/metrics"
sleep 3 # let everything settle (first-cycle allocations, the first pushes)
if [ -n "$PUSH" ]; then
  for _ in $(seq 50); do [ -s "$work/sink.out" ] && break; sleep 0.2; done
fi

TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }  # utime + stime
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
pull_cycles() { curl -fs "http://127.0.0.1:$PULL_PORT/metrics" | awk '/^otel_gpu_receiver_cycles_total/ { print $NF }'; }
sink_field() { tail -n 1 "$work/sink.out" | awk -v f="$1" '{ for (i = 1; i < NF; i++) if ($i == f) print $(i + 1) }'; }

pc0=0 pc1=0 po0=0 po1=0 uc0=0 uc1=0 uo0=0 uo1=0
[ -z "$PULL" ] || { pc0=$(pull_cycles); po0=$(cpu_ticks "$PULL"); }
[ -z "$PUSH" ] || { uc0=$(sink_field cycles); uo0=$(cpu_ticks "$PUSH"); }
n0=$(cpu_ticks "$NE")
for _ in $(seq "$SCRAPES"); do
  [ -z "$PULL" ] || curl -fs "http://127.0.0.1:$PULL_PORT/metrics" >"$work/pull.txt"
  curl -fs "http://127.0.0.1:$NE_PORT/metrics" >"$work/ne.txt"
  sleep 1
done
n1=$(cpu_ticks "$NE")
[ -z "$PULL" ] || { po1=$(cpu_ticks "$PULL"); pc1=$(pull_cycles); }
[ -z "$PUSH" ] || { uo1=$(cpu_ticks "$PUSH"); uc1=$(sink_field cycles); }
prss=0 urss=0 pser=0 user=0
[ -z "$PULL" ] || { prss=$(rss_kb "$PULL"); pser=$(grep -vc '^#' "$work/pull.txt"); }
[ -z "$PUSH" ] || { urss=$(rss_kb "$PUSH"); user=$(sink_field points); }
nrss=$(rss_kb "$NE")
nser=$(grep -vc '^#' "$work/ne.txt")

echo "otel-gpu-receiver footprint: $SCRAPES scrapes at 1 s, $(nproc) CPUs, agent flags: ${AGENT_ARGS:-(none)}"
awk -v s="$SCRAPES" -v tck="$TCK" -v modes=" $MODES " \
    -v po0="$po0" -v po1="$po1" -v pc0="$pc0" -v pc1="$pc1" -v prss="$prss" -v pser="$pser" \
    -v uo0="$uo0" -v uo1="$uo1" -v uc0="$uc0" -v uc1="$uc1" -v urss="$urss" -v user="$user" \
    -v n0="$n0" -v n1="$n1" -v nrss="$nrss" -v nser="$nser" '
function row(label, o0, o1, c0, c1, rss, ser) {
  cyc = c1 - c0
  cpu = (cyc > 0) ? (o1 - o0) * 1000 / tck / cyc : 0
  per = (ser > 0) ? cpu * 1000 / ser : 0
  printf "| %s | %.2f ms (%d cycles) | %.1f MB | %d | %.2f µs | %.2f | %.2f | %s |\n", label, cpu, cyc, rss / 1024, ser, per, (ncpu > 0 ? cpu / ncpu : 0), (nper > 0 ? per / nper : 0), (rss / 1024 <= 10 ? "yes" : "no")
}
BEGIN {
  ncpu = (n1 - n0) * 1000 / tck / s
  nper = (nser > 0) ? ncpu * 1000 / nser : 0
  printf "| | CPU per cycle / scrape | RSS | series | CPU per series | ratio per cycle (goal <= 0.33) | ratio per series (goal <= 0.2) | RSS <= 10 MB |\n"
  printf "|---|---:|---:|---:|---:|---:|---:|---|\n"
  if (index(modes, " pull ")) row("otel-gpu-receiver, pull (scraped)", po0, po1, pc0, pc1, prss, pser)
  if (index(modes, " push ")) row("otel-gpu-receiver, OTLP push", uo0, uo1, uc0, uc1, urss, user)
  printf "| prometheus-node-exporter | %.2f ms (%d scrapes) | %.1f MB | %d | %.2f µs | | | |\n", ncpu, s, nrss / 1024, nser, nper
}'
