#!/usr/bin/env bash
# Catch-up after an outage through a receiver 50 ms away, in one run:
#
# 1. Fill: a 10-minute backlog at a 1 s interval of a SMALL-sized registry (600 snapshots of
#    2,806 gauges, 2 requests each) is queued by codex-proxy's pusher in its durable queue,
#    and the same snapshots are fed to vmagent (defaults), whose remote write queues them on
#    disk; the receiver is down for both. (Filled at 10 ms per snapshot: the timestamps span
#    seconds, the backlog is the same.)
# 2. Drain, each from its own copy of the backlog into a fresh receiver, through a forwarder
#    that adds 50 ms to every answer: codex-proxy with max_in_flight = 1 (one snapshot per
#    request, the behaviour before), codex-proxy with the default max_in_flight = 4, and
#    vmagent with its defaults; into VictoriaMetrics, then into Prometheus.
# 3. Fresh data first: codex-proxy with max_sample_age = "1m" starts on another copy (now
#    minutes old) while pushing live every second; the time until the receiver holds a
#    sample newer than the start is measured, in intervals (VictoriaMetrics: read back with
#    /api/v1/export, which its query caches do not delay).
# 4. The same delay for VictoriaMetrics alone, fed by its own import API: a new series, then
#    a newer sample of it (what VictoriaMetrics itself takes to make a sample readable).
#
#   scripts/bench/catch-up.sh [snapshots, default 600]
#
# Prints a markdown table; docs/performance.md has the figures measured here.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH_NAME=catch-up.sh
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
SNAPSHOTS=${1:-600}
SERIES=2806
DELAY_MS=50
bench_require victoria-metrics vmagent prometheus python3 curl
cargo build --release --example backlog_drain >&2
BIN=$PWD/target/release/examples/backlog_drain

bench_workdir

RECV_PORT=$(free_port)
FWD_PORT=$(free_port)
AGENT_PORT=$(free_port)
FWD="http://127.0.0.1:$FWD_PORT/api/v1/write"

# The forwarder: every answer 50 ms late; the receiver behind it is whatever listens on
# RECV_PORT (503 while nothing does).
python3 - "$FWD_PORT" "$RECV_PORT" "$DELAY_MS" >"$WORK/forwarder.log" 2>&1 <<'PY' &
import http.server, socketserver, sys, time, urllib.request
port, target, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) / 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("content-type", "content-encoding", "x-prometheus-remote-write-version", "user-agent")}
        req = urllib.request.Request(f"http://127.0.0.1:{target}{self.path}", data=body, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, out = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, out = e.code, e.read()
        except Exception as e:
            status, out = 503, str(e).encode()
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 256
S(("127.0.0.1", port), H).serve_forever()
PY
PIDS+=($!)
sleep 0.5

start_vmagent() { # queue dir
  vmagent -remoteWrite.url="$FWD" -remoteWrite.tmpDataPath="$1" \
    -httpListenAddr="127.0.0.1:$AGENT_PORT" -loggerLevel=ERROR >>"$WORK/vmagent.log" 2>&1 &
  AGENT=$!
  PIDS+=("$AGENT")
  wait_http "http://127.0.0.1:$AGENT_PORT/metrics" vmagent
}
RECEIVER=""
start_receiver() { # kind -> starts a fresh one on RECV_PORT
  local dir="$WORK/recv-$RANDOM"
  case "$1" in
    # -search.latencyOffset=0s: by default VictoriaMetrics hides the last 30 s from
    # queries, which would hide when the newest sample arrived.
    vm) victoria-metrics -httpListenAddr="127.0.0.1:$RECV_PORT" -storageDataPath="$dir" -loggerLevel=ERROR \
          -search.latencyOffset=0s >>"$WORK/recv.log" 2>&1 &
        RECEIVER=$!; wait_http "http://127.0.0.1:$RECV_PORT/health" victoria-metrics ;;
    prom) echo "global: {}" >"$WORK/prom.yml"
        prometheus --config.file="$WORK/prom.yml" --storage.tsdb.path="$dir" --web.listen-address="127.0.0.1:$RECV_PORT" \
          --web.enable-remote-write-receiver >>"$WORK/recv.log" 2>&1 &
        RECEIVER=$!; wait_http "http://127.0.0.1:$RECV_PORT/-/ready" prometheus ;;
  esac
  PIDS+=("$RECEIVER")
}
stop_receiver() { kill -TERM "$RECEIVER"; wait "$RECEIVER" 2>/dev/null || true; }
stored() { # kind -> samples stored so far
  case "$1" in
    vm) metric "http://127.0.0.1:$RECV_PORT/metrics" vm_rows_inserted_total ;;
    prom) metric "http://127.0.0.1:$RECV_PORT/metrics" prometheus_tsdb_head_samples_appended_total ;;
  esac
}

# 1. Fill, receiver down.
SAMPLES=$((SNAPSHOTS * SERIES))
start_vmagent "$WORK/vmagent"
"$BIN" fill --series "$SERIES" --interval 10ms --url "http://127.0.0.1:$RECV_PORT/api/v1/write" --samples "$SAMPLES" \
  --queue-dir "$WORK/queue" >"$WORK/fill-codex.json" 2>"$WORK/fill-codex.log" &
FILL_CODEX=$!
"$BIN" fill --series "$SERIES" --interval 10ms --url "http://127.0.0.1:$AGENT_PORT/api/v1/write" \
  --samples "$SAMPLES" >"$WORK/fill-feed.json" 2>"$WORK/fill-feed.log" &
FILL_FEED=$!
wait "$FILL_CODEX" "$FILL_FEED"
FED=$(metric "http://127.0.0.1:$AGENT_PORT/metrics" vmagent_rows_inserted_total)
kill -TERM "$AGENT"; wait "$AGENT" 2>/dev/null || true   # flushes its buffers to the disk queue
QUEUED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples"])' "$WORK/fill-codex.json")
echo "filled: codex-proxy $QUEUED samples, vmagent $FED rows" >&2

# 2. Drains.
: >"$WORK/results"
drain_codex() { # kind label extra
  rm -rf "$WORK/q"; cp -a "$WORK/queue" "$WORK/q"
  start_receiver "$1"
  "$BIN" drain --queue-dir "$WORK/q" --url "$FWD" --extra "$3" >"$WORK/drain.json" 2>"$WORK/drain-$2-$1.log"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], d["samples_sent"], d["seconds"], sys.argv[4])' \
    "$WORK/drain.json" "$1" "$2" "$(grep -c "push rejected" "$WORK/drain-$2-$1.log" || true)" >>"$WORK/results"
  stop_receiver
}
drain_vmagent() { # kind
  rm -rf "$WORK/va"; cp -a "$WORK/vmagent" "$WORK/va"
  start_receiver "$1"
  local rows0 sent t0 t1 last still rejected
  rows0=$(stored "$1")
  : >"$WORK/vmagent.log"
  t0=$(date +%s.%N)
  start_vmagent "$WORK/va"
  sent=0 last=0 still=0
  # Until the receiver holds every row, or has stored nothing new for 5 s (Prometheus
  # rejects vmagent's blocks that arrive out of order, so it never gets them all).
  for _ in $(seq 1 12000); do
    sent=$(( $(stored "$1") - rows0 ))
    [ "$sent" -ge "$FED" ] && break
    if [ "$sent" -gt "$last" ]; then last=$sent still=0; t1=$(date +%s.%N); else still=$((still + 1)); fi
    [ "$still" -ge 100 ] && break
    sleep 0.05
  done
  [ "$sent" -ge "$FED" ] && t1=$(date +%s.%N)
  rejected=$(grep -c "was rejected" "$WORK/vmagent.log" || true)
  kill -TERM "$AGENT"; wait "$AGENT" 2>/dev/null || true
  echo "$1 vmagent $sent $(python3 -c "print($t1 - $t0)") $rejected" >>"$WORK/results"
  stop_receiver
}
for kind in vm prom; do
  drain_codex "$kind" one "max_in_flight = 1"
  drain_codex "$kind" four "max_in_flight = 4"
  drain_vmagent "$kind"
done

# 3. Fresh data first, with max_sample_age.
: >"$WORK/fresh"
for kind in vm prom; do
  rm -rf "$WORK/q"; cp -a "$WORK/queue" "$WORK/q"
  start_receiver "$kind"
  "$BIN" live --queue-dir "$WORK/q" --url "$FWD" --series "$SERIES" --interval 1s --seconds 15 \
    --extra 'max_sample_age = "1m"' >"$WORK/live.json" 2>"$WORK/live-$kind.log" &
  LIVE=$!
  for _ in $(seq 1 100); do [ -s "$WORK/live.json" ] && break; sleep 0.05; done
  START_MS=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["started_unix_ms"])' "$WORK/live.json")
  NEWEST=""
  for _ in $(seq 1 300); do
    # The newest stored timestamp, in ms: VictoriaMetrics's export reads storage without
    # its query caches; Prometheus answers a query.
    if [ "$kind" = vm ]; then
      v=$(curl -sf "http://127.0.0.1:$RECV_PORT/api/v1/export" --data-urlencode 'match[]=bench_value{instance="fill-durable",i="0"}' \
          | python3 -c 'import json,sys; print(max([t for l in sys.stdin if l.strip() for t in json.loads(l)["timestamps"]] or [0]))' 2>/dev/null || echo 0)
    else
      v=$(curl -sf "http://127.0.0.1:$RECV_PORT/api/v1/query" --data-urlencode 'query=max(timestamp(bench_value{instance="fill-durable"}))' \
          | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(float(r[0]["value"][1]) * 1000 if r else 0)' 2>/dev/null || echo 0)
    fi
    if python3 -c "import sys; sys.exit(0 if float('$v') >= $START_MS else 1)"; then
      NEWEST=$(python3 -c "import time; print(time.time() * 1000 - $START_MS)"); break
    fi
    sleep 0.05
  done
  wait "$LIVE"
  DROPPED=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["dropped_too_old"])' "$WORK/live.json")
  echo "$kind ${NEWEST:-none} $DROPPED" >>"$WORK/fresh"
  stop_receiver
done

# 4. VictoriaMetrics' own floor, without codex-proxy: one sample of a new series, then one
#    more of the same series, written through its own import API into a fresh receiver; the
#    time until /api/v1/export returns each (same flags as above).
start_receiver vm
: >"$WORK/floor"
for what in new existing; do
  ms=$(python3 -c 'import time; print(int(time.time() * 1000))')
  curl -sf --data-binary "bench_floor{i=\"0\"} 1 $ms" "http://127.0.0.1:$RECV_PORT/api/v1/import/prometheus"
  t0=$(date +%s.%N)
  for _ in $(seq 1 600); do
    v=$(curl -sf "http://127.0.0.1:$RECV_PORT/api/v1/export" --data-urlencode 'match[]=bench_floor{i="0"}' \
        | python3 -c 'import json,sys; print(max([t for l in sys.stdin if l.strip() for t in json.loads(l)["timestamps"]] or [0]))' 2>/dev/null || echo 0)
    [ "$v" -ge "$ms" ] && break
    sleep 0.05
  done
  echo "$what $(python3 -c "print($(date +%s.%N) - $t0)")" >>"$WORK/floor"
done
stop_receiver

python3 - "$WORK/results" "$WORK/fresh" "$QUEUED" "$FED" "$SNAPSHOTS" "$WORK/floor" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
fresh = [l.split() for l in open(sys.argv[2])]
queued, fed, snapshots = int(sys.argv[3]), int(float(sys.argv[4])), int(sys.argv[5])
r = {(k, who): (int(float(n)), float(s), int(rej)) for k, who, n, s, rej in rows}
name = {"vm": "VictoriaMetrics", "prom": "Prometheus"}
print(f"backlog: {snapshots} snapshots of 2,806 series; codex-proxy queued {queued:,} samples, vmagent was fed {fed:,}")
print("| receiver (+50 ms per answer) | max_in_flight = 1: s, samples/s | max_in_flight = 4: s, samples/s | vmagent: s, samples/s, stored | 4 / 1 | 4 / vmagent |")
print("|---|---|---|---|---|---|")
for k in ("vm", "prom"):
    one, four, agent = r[(k, "one")], r[(k, "four")], r[(k, "vmagent")]
    rate = lambda x: x[0] / x[1]
    print(f"| {name[k]} | {one[1]:.1f}, {rate(one):,.0f} | {four[1]:.1f}, {rate(four):,.0f} "
          f"| {agent[1]:.1f}, {rate(agent):,.0f}, {agent[0] / fed:.0%} ({agent[2]} blocks rejected) "
          f"| **{rate(four) / rate(one):.1f}x** | **{rate(four) / rate(agent):.2f}x** |")
    print(f"| {name[k]}: requests rejected, max_in_flight = 1 / 4 | {one[2]} | {four[2]} | | | |")
for k, newest, dropped in fresh:
    secs = "never" if newest == "none" else f"{float(newest) / 1000:.2f} s ({float(newest) / 1000:.1f} intervals of 1 s)"
    print(f"| {name[k]}, max_sample_age = 1m | newest sample queryable after {secs}; backlog dropped as too_old: {int(dropped):,} samples |")
floor = dict(l.split() for l in open(sys.argv[6]))
print(f"| VictoriaMetrics alone (its import API, no codex-proxy) | a new series readable after {float(floor['new']):.2f} s, "
      f"a newer sample of it after {float(floor['existing']):.2f} s |")
PY
