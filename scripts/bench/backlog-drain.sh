#!/usr/bin/env bash
# The durable queue under a backlog, beside vmagent, in one run:
#
# 1. Fill: with the receiver (VictoriaMetrics) down, codex-proxy's pusher queues snapshots of
#    a synthetic registry in its durable queue until it holds at least SAMPLES samples; at
#    the same time an identical pusher feeds the same snapshots to vmagent, whose remote
#    write to the same (down) receiver queues them in its disk queue
#    (-remoteWrite.tmpDataPath). Resident memory of both is sampled as the backlogs grow.
# 2. Drain: VictoriaMetrics starts; codex-proxy starts on its queue and drains it (timed
#    from process start to an empty queue); then vmagent starts on its queue and drains it
#    (timed from process start until the receiver has counted as many new rows as vmagent
#    was fed). One at a time, so that neither steals the receiver's CPU from the other.
#
#   scripts/bench/backlog-drain.sh [samples] [series] [order] [series per request]
#
# Defaults: 1200000 samples, 20000 series, order codex-first (or vmagent-first: the one
# draining second finds the receiver busier, having just stored the other's backlog),
# 2000 series per request (codex-proxy's default max_series_per_request; vmagent sends
# blocks of up to 10000 rows, -remoteWrite.maxRowsPerBlock).
#
# Prints a markdown table; docs/performance.md has the figures measured here.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_NAME=backlog-drain.sh
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
SAMPLES=${1:-1200000}
SERIES=${2:-20000}
ORDER=${3:-codex-first}
PER_REQUEST=${4:-2000}
INTERVAL=250ms

bench_require victoria-metrics vmagent python3 curl
cargo build --release --example backlog_drain
BIN=$PWD/target/release/examples/backlog_drain

bench_workdir

VM_PORT=$(free_port)
AGENT_PORT=$(free_port)
RECEIVER="http://127.0.0.1:$VM_PORT/api/v1/write"
AGENT_METRICS="http://127.0.0.1:$AGENT_PORT/metrics"
start_vmagent() {
  vmagent -remoteWrite.url="$RECEIVER" -remoteWrite.tmpDataPath="$WORK/vmagent" \
    -httpListenAddr="127.0.0.1:$AGENT_PORT" -loggerLevel=ERROR >>"$WORK/vmagent.log" 2>&1 &
  AGENT=$!
  PIDS+=("$AGENT")
}

# 1. Fill, receiver down.
start_vmagent
wait_http "$AGENT_METRICS" vmagent
"$BIN" fill --series "$SERIES" --interval "$INTERVAL" --url "$RECEIVER" --samples "$SAMPLES" \
  --queue-dir "$WORK/queue" --series-per-request "$PER_REQUEST" >"$WORK/fill-codex.json" 2>"$WORK/fill-codex.log" &
FILL_CODEX=$!
"$BIN" fill --series "$SERIES" --interval "$INTERVAL" --url "http://127.0.0.1:$AGENT_PORT/api/v1/write" \
  --samples "$SAMPLES" --series-per-request "$PER_REQUEST" >"$WORK/fill-feed.json" 2>"$WORK/fill-feed.log" &
FILL_FEED=$!
: >"$WORK/agent-rss"
while kill -0 "$FILL_CODEX" 2>/dev/null || kill -0 "$FILL_FEED" 2>/dev/null; do
  echo "$(metric "$AGENT_METRICS" vmagent_rows_inserted_total) $(rss_kb "$AGENT")" >>"$WORK/agent-rss"
  sleep 0.25
done
wait "$FILL_CODEX" "$FILL_FEED"
FED=$(metric "$AGENT_METRICS" vmagent_rows_inserted_total)
AGENT_FILL_HWM=$(hwm_kb "$AGENT")
kill -TERM "$AGENT"; wait "$AGENT" 2>/dev/null || true   # flushes its buffers to the disk queue
QUEUE_BYTES=$(du -sb "$WORK/queue" | cut -f1)
AGENT_QUEUE_BYTES=$(du -sb "$WORK/vmagent" | cut -f1)

# 2. Drain, one after the other, in the order asked.
victoria-metrics -httpListenAddr="127.0.0.1:$VM_PORT" -storageDataPath="$WORK/vm" -loggerLevel=ERROR >"$WORK/vm.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$VM_PORT/health" victoria-metrics
VM_METRICS="http://127.0.0.1:$VM_PORT/metrics"

drain_codex() {
  "$BIN" drain --queue-dir "$WORK/queue" --url "$RECEIVER" >"$WORK/drain-codex.json" 2>"$WORK/drain-codex.log"
}
drain_vmagent() {
  # vmagent has no counter of rows sent; the receiver counts what arrives.
  local rows0
  rows0=$(metric "$VM_METRICS" vm_rows_inserted_total)
  T0=$(date +%s.%N)
  start_vmagent
  SENT=0
  for _ in $(seq 1 6000); do
    SENT=$(( $(metric "$VM_METRICS" vm_rows_inserted_total) - rows0 ))
    [ "$SENT" -ge "$FED" ] && break
    sleep 0.05
  done
  T1=$(date +%s.%N)
  AGENT_DRAIN_HWM=$(hwm_kb "$AGENT")
  [ "$SENT" -ge "$FED" ] || { echo "backlog-drain.sh: vmagent sent $SENT of $FED rows" >&2; exit 1; }
  kill -TERM "$AGENT"; wait "$AGENT" 2>/dev/null || true
}
case "$ORDER" in
  codex-first) drain_codex; drain_vmagent ;;
  vmagent-first) drain_vmagent; drain_codex ;;
  *) echo "backlog-drain.sh: order is codex-first or vmagent-first" >&2; exit 2 ;;
esac

python3 - "$WORK" "$FED" "$SENT" "$T0" "$T1" "$AGENT_FILL_HWM" "$AGENT_DRAIN_HWM" "$QUEUE_BYTES" "$AGENT_QUEUE_BYTES" "$ORDER" "$PER_REQUEST" <<'PY'
import json, sys
work = sys.argv[1]
fed, sent, t0, t1, a_fill_hwm, a_drain_hwm, q_bytes, a_q_bytes = map(float, sys.argv[2:10])
fill = json.load(open(f"{work}/fill-codex.json"))
drain = json.load(open(f"{work}/drain-codex.json"))
agent = [tuple(map(float, l.split())) for l in open(f"{work}/agent-rss") if len(l.split()) == 2]

def growth(points, total):
    """RSS (MiB) once a tenth of the backlog was queued, and at the end."""
    early = next(rss for n, rss in points if n >= total / 10)
    return early / 1024, points[-1][1] / 1024

c_early, c_end = growth(fill["rss_kb"], fill["samples"])
a_early, a_end = growth([p for p in agent if p[1] > 0], fed)
c_rate = drain["samples_sent"] / drain["seconds"]
a_rate = sent / (t1 - t0)
print(f"drained {sys.argv[10]}, {sys.argv[11]} series per request")
print("| | codex-proxy | vmagent | codex-proxy / vmagent |")
print("|---|---|---|---|")
# Delivered = queued: the drain adds no samples of its own (its one snapshot is empty).
print(f"| backlog, samples (snapshots and the final stale markers) | {drain['samples_sent']:,} | {fed:,.0f} | {drain['samples_sent'] / fed:.2f} |")
print(f"| backlog on disk | {q_bytes / 2**20:.1f} MiB | {a_q_bytes / 2**20:.1f} MiB | {q_bytes / a_q_bytes:.2f} |")
print(f"| RSS at 10% of the backlog | {c_early:.0f} MiB | {a_early:.0f} MiB | |")
print(f"| RSS with the whole backlog | {c_end:.0f} MiB | {a_end:.0f} MiB | |")
print(f"| RSS growth, 10% → 100% of the backlog | {c_end / c_early:.2f}x | {a_end / a_early:.2f}x | |")
print(f"| drain: seconds, start to empty | {drain['seconds']:.2f} | {t1 - t0:.2f} | {drain['seconds'] / (t1 - t0):.2f} |")
print(f"| drain rate (samples/s) | {c_rate:,.0f} | {a_rate:,.0f} | **{c_rate / a_rate:.2f}** |")
print(f"| peak RSS while draining | {drain['rss_peak_kb'] / 1024:.0f} MiB | {a_drain_hwm / 1024:.0f} MiB | {drain['rss_peak_kb'] / a_drain_hwm:.2f} |")
PY
