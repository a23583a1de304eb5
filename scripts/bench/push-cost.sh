#!/usr/bin/env bash
# What pushing costs: CPU seconds per million samples and memory, for codex-proxy's
# remote-write pusher and for vmagent scraping the same registry at the same interval and
# remote-writing it to the same VictoriaMetrics, both running at once.
#
#   scripts/bench/push-cost.sh [seconds per set]      (default 60)
#
# Sets, in the proxy's own families (examples/push_bench.rs): SMALL, the ~2,800 series of
# scripts/bench/promclient/workload.json (the metrics benchmark's set), pushed every 1s;
# LARGE, ~190,000 series of synthetic label combinations, every 5s.
# codex-proxy's CPU is counted from after its registry is built to the end of its final
# push; vmagent's over the same window (after its first scrape), and beside it the CPU of
# the process serving the /metrics it scrapes (gather + text format: what a sidecar costs
# the proxy). Memory: codex-proxy's peak RSS above the RSS of the built registry (what
# pushing adds), vmagent's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_NAME=push-cost.sh
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
RUN_SECONDS=${1:-60}

cargo build --release --example push_bench
BIN=$PWD/target/release/examples/push_bench
bench_require victoria-metrics vmagent python3 curl

bench_workdir

run_set() { # name "registry arguments" interval
  local name=$1 fill=$2 interval=$3 dir="$WORK/$1"
  mkdir -p "$dir"
  local vm_port serve_port agent_port
  vm_port=$(free_port); serve_port=$(free_port); agent_port=$(free_port)
  victoria-metrics -httpListenAddr="127.0.0.1:$vm_port" -storageDataPath="$dir/vm" -loggerLevel=ERROR >"$dir/vm.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$vm_port/health" victoria-metrics
  # shellcheck disable=SC2086 # $fill is two words on purpose
  "$BIN" serve $fill --listen "127.0.0.1:$serve_port" >"$dir/serve.log" 2>&1 &
  local serve=$!
  PIDS+=("$serve")
  wait_http "http://127.0.0.1:$serve_port/metrics" "the /metrics server"
  cat >"$dir/scrape.yml" <<YAML
global:
  scrape_interval: $interval
scrape_configs:
  - job_name: codex-proxy
    static_configs:
      - targets: ["127.0.0.1:$serve_port"]
YAML
  vmagent -promscrape.config="$dir/scrape.yml" -remoteWrite.url="http://127.0.0.1:$vm_port/api/v1/write" \
    -remoteWrite.tmpDataPath="$dir/vmagent" -httpListenAddr="127.0.0.1:$agent_port" \
    -promscrape.maxScrapeSize=1GB -loggerLevel=ERROR >"$dir/vmagent.log" 2>&1 &
  local agent=$!
  PIDS+=("$agent")
  local agent_metrics="http://127.0.0.1:$agent_port/metrics"
  wait_http "$agent_metrics" vmagent
  for _ in $(seq 1 600); do
    [ "$(metric "$agent_metrics" vmagent_remotewrite_block_size_rows_sum)" -gt 0 ] && break; sleep 0.1
  done
  local agent_cpu0 agent_rows0 serve_cpu0
  agent_cpu0=$(cpu_of "$agent"); agent_rows0=$(metric "$agent_metrics" vmagent_remotewrite_block_size_rows_sum)
  serve_cpu0=$(cpu_of "$serve")

  # shellcheck disable=SC2086
  "$BIN" push $fill --url "http://127.0.0.1:$vm_port/api/v1/write" \
    --interval "$interval" --seconds "$RUN_SECONDS" >"$dir/push.json" 2>"$dir/push.log"

  local agent_cpu1 agent_rows1 agent_hwm serve_cpu1
  agent_cpu1=$(cpu_of "$agent"); agent_rows1=$(metric "$agent_metrics" vmagent_remotewrite_block_size_rows_sum)
  agent_hwm=$(hwm_kb "$agent"); serve_cpu1=$(cpu_of "$serve")
  python3 - "$name" "$interval" "$dir/push.json" "$agent_cpu0" "$agent_cpu1" "$agent_rows0" "$agent_rows1" "$agent_hwm" "$serve_cpu0" "$serve_cpu1" <<'PY'
import json, sys
name, interval, push_file = sys.argv[1:4]
a_cpu0, a_cpu1, a_rows0, a_rows1, a_hwm, s_cpu0, s_cpu1 = map(float, sys.argv[4:11])
p = json.load(open(push_file))
p_cpu_m = p["cpu_seconds"] / (p["samples_sent"] / 1e6)
a_m = (a_rows1 - a_rows0) / 1e6
a_cpu_m = (a_cpu1 - a_cpu0) / a_m
s_cpu_m = (s_cpu1 - s_cpu0) / a_m
p_mem = (p["rss_peak_kb"] - p["rss_after_build_kb"]) / 1024
print(f"| {name} | {p['series']} | {interval} | {p['samples_sent']/1e6:.2f} M | {p_cpu_m:.2f} | "
      f"{a_m:.2f} M | {a_cpu_m:.2f} | **{p_cpu_m / a_cpu_m:.2f}** | {s_cpu_m:.2f} | "
      f"{p_cpu_m / (a_cpu_m + s_cpu_m):.2f} | {p_mem:.0f} MiB (process {p['rss_peak_kb']/1024:.0f}) | "
      f"{a_hwm/1024:.0f} MiB |")
PY
  kill "$agent" 2>/dev/null || true
}

echo "| set | series | interval | codex-proxy samples | codex-proxy CPU-s / M | vmagent samples | vmagent CPU-s / M | ratio to vmagent | /metrics render for vmagent, CPU-s / M | ratio to vmagent + render | codex-proxy pushing memory | vmagent memory |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
run_set SMALL "--workload scripts/bench/promclient/workload.json" 1s
run_set LARGE "--series 190000" 5s
