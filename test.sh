#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first.
# Usage: ./test.sh            (from the repository root; needs root or sudo for apt)
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
# A real Prometheus and promtool check the dashboards, rules and pull endpoints;
# node_exporter is the peer in the footprint benchmark.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# A real Alertmanager (and amtool) routes the alert rules' notifications.
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v amtool >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
if ((${#need_apt[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "test.sh: installing ${need_apt[*]} with apt-get" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# check-jsonschema validates the compose files against the Compose specification.
python3 -m check_jsonschema --version >/dev/null 2>&1 \
  || python3 -m pip install -q --disable-pip-version-check check-jsonschema==0.39.0
# kubernetes-validate checks deploy/kubernetes against the Kubernetes schemas, which it
# bundles (so it runs offline once installed).
[ "$(python3 -m kubernetes_validate --version 2>/dev/null)" = 1.37.0 ] \
  || python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
# @grafana/schema and tsc type-check the dashboards (versions locked in package-lock.json).
if [ ! -x grafana/schema-check/node_modules/.bin/tsc ]; then
  (cd grafana/schema-check && npm ci --no-audit --no-fund --silent)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-features --locked 2>&1 | tee "$log" || status=$?
# The soaks (2.5 to 8 minutes on 2 cores, with the machine's speed and load): a day of
# the receiver's collection cycles (a fixed 100,000, however long they take) and a
# service under sustained load, while the collector goes up, down and hangs; they assert
# flat memory, threads, file descriptors and logs, and print their rates without judging
# them. They are `--ignored` in the run above, because they want the machine to
# themselves: here they run alone, one after the other.
cargo test --workspace --all-features --locked --no-fail-fast --test soak -- --ignored --nocapture 2>&1 | tee -a "$log" || status=$?
# The real-time soak (5 minutes of wall-clock time, not compressed cycles): the receiver
# at 100 ms cycles with its collector absent, and the demo under load through outages;
# it asserts flat heap in use after a warm-up (`SOAK_MINUTES=30` for BENCHMARKS.md's run).
cargo test -p e2e --all-features --locked --test realtime_soak -- --ignored --nocapture 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
