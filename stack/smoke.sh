#!/usr/bin/env bash
# The stack, for real, on a machine with a Docker engine (it cannot run in CI here:
# those machines have no engine; ./test.sh is the offline check).
#
#   stack/smoke.sh            build, start and check; leaves the stack running
#   stack/smoke.sh --down     ... and stops it (volumes kept) at the end
#   stack/smoke.sh --gpu      with compose.gpu.yaml: the GPU dashboard must fill too
#
# It runs `docker compose up -d --build --wait`, drives the demo for a minute, then
# checks that Jaeger has traces crossing demo-load, demo-gateway and demo-backend,
# that Prometheus has the function, host and receiver series and sends to
# Alertmanager, that Loki has the demo's logs with their trace ids, that Grafana
# lists the four dashboards, and that every dashboard panel query returns data.
# Then an outage: Jaeger and Prometheus stop, the collector restarts in the middle,
# they start again, and what was sent in between must arrive (the persistent queue).
# Exit 0 when all pass, 1 when a check fails, 2 when it cannot run (no Docker
# engine, missing tools). Needs: docker with Compose v2, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

down=false
gpu=false
for arg in "$@"; do
  case "$arg" in
    --down) down=true ;;
    --gpu) gpu=true ;;
    -h | --help)
      sed -n '2,18p' "$0"
      exit 0
      ;;
    *)
      echo "smoke: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

cannot_run() {
  echo "smoke: cannot run: $*" >&2
  exit 2
}
fail=0
failed() {
  echo "smoke: FAIL: $*" >&2
  fail=1
}
ok() { echo "smoke: ok: $*"; }

command -v docker >/dev/null 2>&1 || cannot_run "no docker client on PATH; this check needs Docker with Compose v2"
# `timeout` bounds an engine that accepts and never answers (absent on stock macOS).
docker_info() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 20 docker info --format '{{.ServerVersion}}'
  else
    docker info --format '{{.ServerVersion}}'
  fi
}
if ! engine=$(docker_info 2>&1); then
  cannot_run "no Docker engine is reachable (docker info: $(printf '%s' "$engine" | tr '\n' ' ' | sed 's/^ *//')). Start Docker, or run the offline checks with ./test.sh"
fi
docker compose version >/dev/null 2>&1 || cannot_run "docker compose (Compose v2) is missing"
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || cannot_run "$tool is missing"
done

compose=(docker compose -f docker-compose.yml)
$gpu && compose+=(-f compose.gpu.yaml)
grafana="http://127.0.0.1:${GRAFANA_PORT:-3000}"
jaeger="http://127.0.0.1:${JAEGER_UI_PORT:-16686}"
prometheus="http://127.0.0.1:${PROMETHEUS_PORT:-9090}"
gateway="http://127.0.0.1:${DEMO_GATEWAY_PORT:-8080}"
loki="http://127.0.0.1:${LOKI_PORT:-3100}"
alertmanager="http://127.0.0.1:${ALERTMANAGER_PORT:-9093}"

echo "smoke: Docker engine $engine; building and starting the stack (the first build takes minutes)"
if ! "${compose[@]}" up -d --build --wait --wait-timeout 900; then
  "${compose[@]}" ps >&2 || true
  echo "smoke: FAIL: the stack did not start healthy" >&2
  exit 1
fi

# The collector's image has no shell for a healthcheck: ask its health_check
# extension from inside the network, through the prometheus container's wget.
collector_healthy() {
  "${compose[@]}" exec -T prometheus wget -q -O /dev/null http://otel-collector:13133/ 2>/dev/null
}

# Runs a check until it passes, every 3 s for up to 90 s (RETRIES=n: 3n s).
retry() {
  local what=$1
  shift
  for _ in $(seq "${RETRIES:-30}"); do
    if "$@"; then
      ok "$what"
      return 0
    fi
    sleep 3
  done
  failed "$what"
}
retry "the collector's health_check extension answers (asked from the prometheus container)" collector_healthy

echo "smoke: driving the demo for 60 s (demo-load runs too)"
end=$((SECONDS + 60))
while ((SECONDS < end)); do
  for item in a100 h100 l4 slow offline missing; do
    curl -s -o /dev/null --max-time 5 "$gateway/items/$item" || true
  done
  sleep 0.5
done

# The checks below retry too: metrics arrive every 10 s, traces in batches.

# Jaeger: a trace whose spans come from all three demo processes.
jaeger_trace_spans_demo() {
  curl -fsS --max-time 10 "$jaeger/api/traces?service=demo-load&limit=50&lookback=1h" | python3 -c '
import json, sys
want = {"demo-load", "demo-gateway", "demo-backend"}
for trace in json.load(sys.stdin).get("data") or []:
    services = {p["serviceName"] for p in trace["processes"].values()}
    if want <= services:
        sys.exit(0)
sys.exit(1)'
}
retry "Jaeger has a trace across demo-load, demo-gateway and demo-backend" jaeger_trace_spans_demo

prom_has() {
  curl -fsS --max-time 10 --data-urlencode "query=$1" "$prometheus/api/v1/query" |
    python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["data"]["result"] else 1)'
}
for job in demo-load demo-gateway demo-backend; do
  retry "Prometheus has function_calls_total from $job" prom_has "function_calls_total{job=\"$job\"}"
done
retry "Prometheus has the host series" prom_has 'system_cpu_time_seconds_total'
retry "Prometheus has the receiver's own series" prom_has 'otel_gpu_receiver_cycles_total'
retry "Prometheus scrapes the collector" prom_has 'up{job="otel-collector"} == 1'
if $gpu; then
  retry "Prometheus has GPU series" prom_has 'hw_gpu_memory_limit_bytes'
fi

# Alertmanager: ready, and the one Prometheus sends to.
prom_sends_to_alertmanager() {
  curl -fsS --max-time 10 "$alertmanager/-/ready" >/dev/null &&
    curl -fsS --max-time 10 "$prometheus/api/v1/alertmanagers" |
    python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["data"]["activeAlertmanagers"] else 1)'
}
retry "Prometheus sends alerts to Alertmanager" prom_sends_to_alertmanager

# Loki: log records of a service, over a time range (default: the last hour), that
# carry a trace id (structured metadata of the OTLP record). Prints their count.
loki_count() {
  local service=$1 start=${2:-$(($(date +%s) - 3600))} end=${3:-$(date +%s)}
  curl -fsS --max-time 10 -G "$loki/loki/api/v1/query_range" \
    --data-urlencode "query={service_name=\"$service\"} | trace_id!=\"\"" \
    --data-urlencode "start=${start}000000000" --data-urlencode "end=${end}000000000" \
    --data-urlencode "limit=5000" |
    python3 -c 'import json, sys; print(sum(len(s["values"]) for s in json.load(sys.stdin)["data"]["result"]))'
}
# A count, or 0 when the query fails (the check then retries).
count_or_0() {
  local n
  n=$("$@" 2>/dev/null) || n=0
  [[ $n =~ ^[0-9]+$ ]] || n=0
  echo "$n"
}
loki_has_demo_logs() { (($(count_or_0 loki_count demo-gateway) > 0)); }
retry "Loki has demo-gateway's logs with trace ids" loki_has_demo_logs

grafana_lists_dashboards() {
  curl -fsS --max-time 10 "$grafana/api/search?type=dash-db" | python3 -c '
import glob, json, sys
listed = {d["uid"] for d in json.load(sys.stdin)}
ours = {json.load(open(p))["uid"] for p in glob.glob("grafana/dashboards/*.json")}
missing = ours - listed
if missing:
    print("smoke: Grafana does not list", sorted(missing), file=sys.stderr)
sys.exit(1 if missing else 0)'
}
retry "Grafana lists the four dashboards (anonymously)" grafana_lists_dashboards

# Every panel query, with Grafana's variables replaced as tests/tests/dashboards.rs
# does. Panels that only fill when something fails are reported, not required, and
# without --gpu so is the GPU dashboard.
panel_queries_return_data() {
  python3 - "$prometheus" "$gpu" <<'PY'
import glob, json, sys, urllib.parse, urllib.request
prometheus, gpu = sys.argv[1], sys.argv[2] == "true"
only_on_failure = {
    "Collector: dropped, sending queue full",
    "Source errors",
    "NVML errors and calls past their deadline",
}
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
empty, optional = [], []
for path in sorted(glob.glob("grafana/dashboards/*.json")):
    name = path.rsplit("/", 1)[-1]
    for p in panels(json.load(open(path))["panels"]):
        for t in p.get("targets", []):
            expr = t.get("expr")
            ds = t.get("datasource") or p.get("datasource") or {}
            if not expr or ds.get("type") == "loki":
                continue
            for var, value in [("$__rate_interval", "1m"), ("$__range", "15m"), ("$__interval", "15s"),
                               ('"$job"', '".*"'), ('"$function"', '".*"'), ('"$instance"', '".*"'), ('"$gpu"', '".*"')]:
                expr = expr.replace(var, value)
            url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            result = json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
            if result:
                continue
            where = f'{name} / {p.get("title")!r}: {expr}'
            if p.get("title") in only_on_failure or (name == "gpu-fleet.json" and not gpu):
                optional.append(where)
            else:
                empty.append(where)
for e in optional:
    print("smoke: empty (fills only on a failure, or with --gpu):", e)
for e in empty:
    print("smoke: no data:", e, file=sys.stderr)
sys.exit(1 if empty else 0)
PY
}
retry "every dashboard panel query returns data" panel_queries_return_data

# The outage: Jaeger and Prometheus stop; the collector queues what arrives on
# disk, is restarted halfway (the queue must survive it), and delivers everything
# once they are back. Checked per half of the outage: the traces the gateway
# served, the receiver's metric samples and the gateway's logs.
outage_traffic() {
  local n=0 end=$((SECONDS + $1))
  while ((SECONDS < end)); do
    for item in a100 h100 l4; do
      curl -s -o /dev/null --max-time 5 "$gateway/items/$item" && n=$((n + 1))
    done
    sleep 0.5
  done
  echo "$n"
}
echo "smoke: outage: stopping jaeger and prometheus"
"${compose[@]}" stop jaeger prometheus
t0=$(date +%s)
sent1=$(outage_traffic 40)
echo "smoke: outage: $sent1 requests served; restarting the collector"
"${compose[@]}" restart otel-collector
t1=$(date +%s)
sent2=$(outage_traffic 40)
t2=$(date +%s)
echo "smoke: outage: $sent2 more requests served; starting jaeger and prometheus"
"${compose[@]}" start jaeger prometheus

# Traces of demo-gateway that started within [from, to] (seconds).
jaeger_traces_between() {
  curl -fsS --max-time 20 "$jaeger/api/traces?service=demo-gateway&start=${1}000000&end=${2}000000&limit=100000" |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("data") or []))'
}
# The receiver's cycle counter: the most samples any agent has within [from, to].
prom_samples_between() {
  curl -fsS --max-time 10 --data-urlencode "query=max(count_over_time(otel_gpu_receiver_cycles_total[$(($2 - $1))s]))" \
    --data-urlencode "time=$2" "$prometheus/api/v1/query" |
    python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)'
}
for half in "1 $t0 $t1 $sent1" "2 $t1 $t2 $sent2"; do
  read -r n from to sent <<<"$half"
  traces_arrived() { (($(count_or_0 jaeger_traces_between "$from" "$to") >= sent)); }
  # One sample per 10 s interval, less the first and last, which may fall outside.
  samples_arrived() { (($(count_or_0 prom_samples_between "$from" "$to") >= (to - from) / 10 - 2)); }
  logs_arrived() { (($(count_or_0 loki_count demo-gateway "$from" "$to") > 0)); }
  RETRIES=60 retry "outage half $n: Jaeger has all $sent traces the gateway served" traces_arrived
  RETRIES=60 retry "outage half $n: Prometheus has the receiver's samples" samples_arrived
  retry "outage half $n: Loki has the gateway's logs" logs_arrived
done
# And nothing was dropped on the way: no exporter refused to queue, the queues drained.
collector_dropped_nothing() {
  curl -fsS --max-time 10 --data-urlencode 'query=sum({__name__=~"otelcol_exporter_enqueue_failed_.*"}) or vector(0)' "$prometheus/api/v1/query" |
    python3 -c 'import json, sys; sys.exit(0 if float(json.load(sys.stdin)["data"]["result"][0]["value"][1]) == 0 else 1)' &&
    curl -fsS --max-time 10 --data-urlencode 'query=sum(otelcol_exporter_queue_size) or vector(0)' "$prometheus/api/v1/query" |
    python3 -c 'import json, sys; sys.exit(0 if float(json.load(sys.stdin)["data"]["result"][0]["value"][1]) == 0 else 1)'
}
retry "the collector dropped nothing and its queues drained" collector_dropped_nothing

if $down; then
  "${compose[@]}" down
fi
if ((fail)); then
  $down || echo "smoke: the stack is still up for a look: ${compose[*]} ps / logs" >&2
  echo "smoke: FAILED" >&2
  exit 1
fi
echo "smoke: all checks passed (Grafana $grafana, Jaeger $jaeger, Prometheus $prometheus)"
