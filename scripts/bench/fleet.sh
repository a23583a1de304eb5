#!/usr/bin/env bash
# A fleet of codex-proxy replicas on this machine, all pushing at once to one
# VictoriaMetrics, one Prometheus (remote-write 1.0) and one Pushgateway (one group each):
#
# - each replica (release build, built-in demo worker) listens on its own port and pushes
#   as `instance="<hostname>:<port>"`, every second, to the three receivers;
# - measured over the run: each replica's CPU (% of one core) and RSS, each receiver's CPU,
#   RSS and ingest rate (VictoriaMetrics: rows inserted and bytes its HTTP listener read,
#   headers included;
#   Prometheus: head samples appended; Pushgateway: pushes), and samples lost;
# - lost samples: each replica logs, when its sender stops after the final push, the
#   samples each remote-write destination accepted (`remote-write sender stopped`, the
#   same count as its `codex_push_samples_sent_total`); those are compared, replica by
#   replica, with what each receiver holds for that instance (VictoriaMetrics: every
#   stored sample, read with /api/v1/export; Prometheus: the raw samples of a range
#   selector, which leaves stale markers out, plus the final stale marker of each series). The Pushgateway keeps
#   only the last push of each group: every group must be there, holding as many lines as
#   its replica's /metrics, and no replica may count a failed push.
#
#   scripts/bench/fleet.sh [seconds, default 300] [replicas, default 50]
#
# Prints a markdown summary; docs/scaling.md sizes larger fleets from it. The run loads the
# machine: note what else ran beside it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_NAME=fleet.sh
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
RUN_SECONDS=${1:-300}
REPLICAS=${2:-50}
bench_require victoria-metrics prometheus prometheus-pushgateway python3 curl
cargo build --release --bin codex-proxy >&2
BIN=$PWD/target/release/codex-proxy
HOST=$(hostname)

bench_workdir

VM_PORT=$(free_port)
PROM_PORT=$(free_port)
PGW_PORT=$(free_port)
victoria-metrics -httpListenAddr="127.0.0.1:$VM_PORT" -storageDataPath="$WORK/vm" -loggerLevel=ERROR \
  -search.latencyOffset=0s >"$WORK/vm.log" 2>&1 &
VM=$!
echo "global: {}" >"$WORK/prom.yml"
prometheus --config.file="$WORK/prom.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-remote-write-receiver --log.level=error \
  >"$WORK/prom.log" 2>&1 &
PROM=$!
prometheus-pushgateway --web.listen-address="127.0.0.1:$PGW_PORT" --log.level=error >"$WORK/pgw.log" 2>&1 &
PGW=$!
PIDS+=("$VM" "$PROM" "$PGW")
wait_http "http://127.0.0.1:$VM_PORT/health" victoria-metrics
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" prometheus
wait_http "http://127.0.0.1:$PGW_PORT/-/ready" pushgateway

PORTS=()
REPLICA_PIDS=()
for i in $(seq 1 "$REPLICAS"); do
  port=$(free_port)
  PORTS+=("$port")
  cat >"$WORK/r$i.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[[remote_write]]
name = "vm"
url = "http://127.0.0.1:$VM_PORT/api/v1/write"
interval = "1s"
external_labels = { job = "codex-proxy", instance = "$HOST:$port" }

[[remote_write]]
name = "prom"
url = "http://127.0.0.1:$PROM_PORT/api/v1/write"
interval = "1s"
external_labels = { job = "codex-proxy", instance = "$HOST:$port" }

[[pushgateway]]
name = "pgw"
url = "http://127.0.0.1:$PGW_PORT"
job = "codex-proxy"
grouping = { instance = "$HOST:$port" }
interval = "1s"
EOF
done
# All at once.
for i in $(seq 1 "$REPLICAS"); do
  RUST_LOG=info "$BIN" serve --config "$WORK/r$i.toml" >"$WORK/r$i.log" 2>&1 &
  REPLICA_PIDS+=($!)
  PIDS+=($!)
done
for port in "${PORTS[@]}"; do wait_http "http://127.0.0.1:$port/metrics" "replica on $port"; done
echo "fleet: $REPLICAS replicas up; measuring for $RUN_SECONDS s" >&2

counters() { # -> one line: vm rows, vm bytes, prom samples, pgw pushes
  local vm prom pgw
  vm=$(curl -sf "http://127.0.0.1:$VM_PORT/metrics")
  prom=$(curl -sf "http://127.0.0.1:$PROM_PORT/metrics")
  pgw=$(curl -sf "http://127.0.0.1:$PGW_PORT/metrics")
  echo "$(awk '/^vm_rows_inserted_total\{type="promremotewrite"\}/ { s += $NF } END { printf "%.0f", s }' <<<"$vm")" \
    "$(awk '/^vm_tcplistener_read_bytes_total\{name="http"/ { s += $NF } END { printf "%.0f", s }' <<<"$vm")" \
    "$(awk '/^prometheus_tsdb_head_samples_appended_total/ { s += $NF } END { printf "%.0f", s }' <<<"$prom")" \
    "$(awk '/^pushgateway_http_requests_total\{.*handler="push"/ { s += $NF } END { printf "%.0f", s }' <<<"$pgw")"
}
snapshot() { # file: per-process cpu seconds, rss, hwm (replicas then receivers), then counters
  {
    for p in "${REPLICA_PIDS[@]}" "$VM" "$PROM" "$PGW"; do echo "$(cpu_of "$p") $(rss_kb "$p") $(hwm_kb "$p")"; done
    counters
    date +%s.%N
  } >"$1"
}
snapshot "$WORK/t0"
sleep "$RUN_SECONDS"
snapshot "$WORK/t1"
# Failed pushes counted by the replicas themselves, before they stop.
FAILED=0
for port in "${PORTS[@]}"; do
  f=$(curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^codex_push_requests_total\{/ && !/outcome="success"/ { s += $NF } END { printf "%.0f", s }')
  FAILED=$((FAILED + f))
done
SERIES=$(curl -sf "http://127.0.0.1:${PORTS[0]}/metrics" | grep -vc '^#' || true)

# Graceful stop: a final push, stale markers, then each sender logs its totals.
kill -TERM "${REPLICA_PIDS[@]}"
for p in "${REPLICA_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done

# What each replica's senders say they delivered.
: >"$WORK/sent"
for i in $(seq 1 "$REPLICAS"); do
  python3 - "$WORK/r$i.log" "$HOST:${PORTS[$((i - 1))]}" >>"$WORK/sent" <<'PY'
import re, sys
sent = {}
for line in open(sys.argv[1]):
    if "remote-write sender stopped" in line:
        d = re.search(r'destination=(\S+)', line).group(1).strip('"')
        sent[d] = (int(re.search(r'samples_sent=(\d+)', line).group(1)),
                   int(re.search(r'samples_dropped=(\d+)', line).group(1)))
vm, prom = sent.get("vm", (-1, -1)), sent.get("prom", (-1, -1))
print(sys.argv[2], vm[0], vm[1], prom[0], prom[1])
PY
done

# What the receivers hold, per instance; VictoriaMetrics makes rows searchable within a
# few seconds, so wait until its count stops moving.
held() {
  python3 - "$VM_PORT" "$PROM_PORT" "$PGW_PORT" "$WORK/sent" "$RUN_SECONDS" <<'PY'
import json, sys, urllib.parse, urllib.request
vm, prom, pgw, sent_file, secs = sys.argv[1:6]
def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()
# The Pushgateway's exposition: each group's lines (its own push_time_seconds and
# push_failure_time_seconds left out), to compare with the replica's /metrics lines.
pgw_series = {}
for l in get(f"http://127.0.0.1:{pgw}/metrics").splitlines():
    if l.startswith("#") or l.startswith("push_time_seconds") or l.startswith("push_failure_time_seconds"):
        continue
    if 'instance="' in l:
        inst = l.split('instance="', 1)[1].split('"', 1)[0]
        pgw_series[inst] = pgw_series.get(inst, 0) + 1
for line in open(sent_file):
    inst, vm_sent, vm_dropped, prom_sent, prom_dropped = line.split()
    q = urllib.parse.urlencode({"match[]": f'{{instance="{inst}"}}'})
    vm_held = sum(len(json.loads(l)["values"]) for l in get(f"http://127.0.0.1:{vm}/api/v1/export?{q}").splitlines() if l.strip())
    rng = int(float(secs)) + 600
    # A range selector in an instant query returns the raw samples, stale markers left out.
    q = urllib.parse.urlencode({"query": f'{{instance="{inst}"}}[{rng}s]'})
    matrix = json.loads(get(f"http://127.0.0.1:{prom}/api/v1/query?{q}"))["data"]["result"]
    non_stale = sum(len(s["values"]) for s in matrix)
    # Each series ends with one stale marker (the final push).
    series = len(matrix)
    print(inst, vm_sent, vm_held, prom_sent, non_stale + series, vm_dropped, prom_dropped, pgw_series.get(inst, 0))
PY
}
prev=""
for _ in $(seq 1 30); do
  held >"$WORK/held"
  cur=$(awk '{ s += $3 } END { print s }' "$WORK/held")
  [ "$cur" = "$prev" ] && break
  prev=$cur
  sleep 2
done

python3 - "$WORK" "$REPLICAS" "$RUN_SECONDS" "$FAILED" "$SERIES" <<'PY'
import sys
work, n, secs, failed, series = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def load(name):
    lines = open(f"{work}/{name}").read().split("\n")
    procs = [tuple(float(x) for x in l.split()) for l in lines[: n + 3]]
    counters = [float(x) for x in lines[n + 3].split()]
    return procs, counters, float(lines[n + 4])
p0, c0, t0 = load("t0")
p1, c1, t1 = load("t1")
dt = t1 - t0
cpu = [(b[0] - a[0]) / dt * 100 for a, b in zip(p0, p1)]
rss = [b[1] / 1024 for b in p1]
hwm = [b[2] / 1024 for b in p1]
def stats(xs):
    xs = sorted(xs)
    return f"{xs[len(xs) // 2]:.1f} / {xs[int(len(xs) * 0.95) - 1 if len(xs) > 1 else 0]:.1f} / {xs[-1]:.1f}"
held = [l.split() for l in open(f"{work}/held")]
vm_lost = sum(int(s) - int(h) for _, s, h, *_ in held)
prom_lost = sum(int(r[3]) - int(r[4]) for r in held)
mismatch = [r[0] for r in held if r[1] != r[2] or r[3] != r[4]]
dropped = sum(int(r[5]) + int(r[6]) for r in held)
groups = sum(1 for r in held if int(r[7]) > 0)
pgw_short = [r[0] for r in held if int(r[7]) != series]
rate = lambda i: (c1[i] - c0[i]) / dt
print(f"fleet: {n} replicas, {dt:.0f} s measured, every replica pushing every 1 s to 3 receivers; "
      f"{series} series per replica's /metrics (the pushed registry)")
print("| what | median / p95 / max per replica |")
print("|---|---|")
print(f"| replica CPU, % of one core | {stats(cpu[:n])} |")
print(f"| replica RSS, MiB (end of run) | {stats(rss[:n])} |")
print(f"| replica peak RSS, MiB | {stats(hwm[:n])} |")
print()
print("| receiver | CPU, % of one core | RSS, MiB (peak) | ingest |")
print("|---|---|---|---|")
print(f"| VictoriaMetrics | {cpu[n]:.1f} | {rss[n]:.0f} ({hwm[n]:.0f}) | {rate(0):,.0f} samples/s, {rate(1):,.0f} request bytes/s ({rate(1) / max(rate(0), 1):.1f} B/sample) |")
print(f"| Prometheus 2.42 | {cpu[n + 1]:.1f} | {rss[n + 1]:.0f} ({hwm[n + 1]:.0f}) | {rate(2):,.0f} samples/s |")
print(f"| Pushgateway | {cpu[n + 2]:.1f} | {rss[n + 2]:.0f} ({hwm[n + 2]:.0f}) | {rate(3):,.1f} pushes/s, {groups} groups |")
print()
print(f"samples lost: VictoriaMetrics {vm_lost}, Prometheus {prom_lost} (sent by the replicas, per their own "
      f"counters: {sum(int(r[1]) for r in held):,} and {sum(int(r[3]) for r in held):,}); dropped by the replicas: {dropped}; "
      f"failed pushes counted by the replicas: {failed}; Pushgateway groups {groups}/{n}, short of series: {len(pgw_short)}")
if mismatch:
    print("instances whose receiver count differs:", " ".join(mismatch[:10]))
sys.exit(0 if vm_lost == 0 and prom_lost == 0 and not mismatch and dropped == 0 and groups == n and not pgw_short else 1)
PY
