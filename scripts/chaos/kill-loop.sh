#!/usr/bin/env bash
# Kill loop: durable remote-write delivery while everything around it fails.
#
# The real proxy (built-in demo worker, traffic on /v1/models every 200 ms) pushes every
# second to a real Prometheus through a durable queue. For DURATION seconds, Prometheus is
# stopped and started at random intervals (2-20 s each) and the proxy is SIGKILLed at KILLS
# random moments and restarted at once on the same queue. Then Prometheus stays up until
# the queue is empty, and the script prints what arrived:
#
#   ticks_expected   1 s ticks while a proxy was up (first push of a life to its kill)
#   ticks_missing    of those, ticks of codex_worker_ready / the request counter that
#                    Prometheus does not hold (the worse of the two series): seconds of
#                    the gaps between stored samples beyond 1 s and the proxy's own down
#                    time (kill to the next ready, plus 1 s for the schedule's alignment)
#   rejects_logged   out-of-order, out-of-bounds and duplicate-sample rejects in
#                    Prometheus's log (a sample answered 2xx twice with different values is
#                    one of these)
#   rejected_by_proxy  requests the proxies logged as rejected (4xx) and dropped
#   queue_bytes / queue_cap  the queue directory's segment bytes at the end, and the cap
#
# and exits 1 when ticks_missing, rejects_logged or rejected_by_proxy is not 0 or the
# queue is over its cap.
#
#   scripts/chaos/kill-loop.sh [duration seconds, default 300] [kills, default 30] [seed]
#
# CODEX_PROXY_BIN names the binary (default: target/release/codex-proxy, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-300}
KILLS=${2:-30}
SEED=${3:-$RANDOM}
for b in prometheus python3; do
  command -v "$b" >/dev/null || { echo "kill-loop.sh: $b is required" >&2; exit 1; }
done
BIN=${CODEX_PROXY_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --bin codex-proxy >&2
  BIN=$PWD/target/release/codex-proxy
fi
exec python3 - "$BIN" "$DURATION" "$KILLS" "$SEED" <<'PY'
import json, os, random, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request

BIN, DURATION, KILLS, SEED = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(SEED)
work = tempfile.mkdtemp(prefix="kill-loop-")
CAP = 2 << 20  # max_queue_bytes of the proxy: small, so that the cap is exercised

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except Exception:
        return None, b""

def wait(what, probe, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if probe():
            return
        time.sleep(0.05)
    raise SystemExit(f"kill-loop: {what} did not happen within {timeout}s")

prom_port, proxy_port = free_port(), free_port()
prom_base = f"http://127.0.0.1:{prom_port}"
proxy_base = f"http://127.0.0.1:{proxy_port}"
with open(f"{work}/prometheus.yml", "w") as f:
    f.write("global: {}\n")
prom_log = open(f"{work}/prometheus.log", "ab")
prom = None

def prom_start():
    global prom
    prom = subprocess.Popen([
        "prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--web.enable-remote-write-receiver",
        "--storage.tsdb.retention.time=1d"], stdout=prom_log, stderr=prom_log)
    wait("prometheus ready", lambda: get(prom_base + "/-/ready")[0] == 200)

def prom_stop():
    global prom
    prom.send_signal(signal.SIGTERM)
    prom.wait(timeout=60)
    prom = None

config = f"""[[remote_write]]
name = "prom"
url = "{prom_base}/api/v1/write"
interval = "1s"
queue_dir = "{work}/queue"
max_queue_bytes = "{CAP}"
min_backoff = "50ms"
max_backoff = "1s"
timeout = "5s"
external_labels = {{ instance = "chaos" }}
"""
with open(f"{work}/codex-proxy.toml", "w") as f:
    f.write(config)
lives = []  # [up_at, killed_at or None]
proxy = None
logs = []

def proxy_start():
    global proxy
    log = f"{work}/proxy-{len(lives)}.log"
    logs.append(log)
    env = dict(os.environ, PROXY_LISTEN=f"127.0.0.1:{proxy_port}", RUST_LOG="info")
    proxy = subprocess.Popen([BIN, "serve", "--config", f"{work}/codex-proxy.toml"], cwd=work,
                             env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    # The first push of a life happens once the worker is ready.
    wait("proxy ready", lambda: get(proxy_base + "/readyz")[0] == 200)
    lives.append([time.time(), None])

def proxy_kill():
    proxy.send_signal(signal.SIGKILL)
    proxy.wait()
    lives[-1][1] = time.time()

stop = threading.Event()
def traffic():
    while not stop.is_set():
        get(proxy_base + "/v1/models", timeout=1.0)
        time.sleep(0.2)

prom_start()
proxy_start()
threading.Thread(target=traffic, daemon=True).start()
start = time.time()
kill_at = sorted(start + rng.uniform(1, DURATION) for _ in range(KILLS))
toggle_at = start + rng.uniform(2, 20)
prom_restarts = 0
while time.time() < start + DURATION:
    now = time.time()
    if kill_at and now >= kill_at[0]:
        kill_at.pop(0)
        proxy_kill()
        proxy_start()
    if now >= toggle_at:
        if prom is None:
            prom_start(); prom_restarts += 1
        else:
            prom_stop()
        toggle_at = time.time() + rng.uniform(2, 20)
    time.sleep(0.02)
if prom is None:
    prom_start(); prom_restarts += 1

def health():
    status, body = get(proxy_base + "/healthz")
    try:
        return json.loads(body)["push"][0] if status else None
    except Exception:
        return None

wait("the queue drained", lambda: (health() or {}).get("queued_requests") == 0, timeout=120)
end = time.time()
stop.set()
# A graceful stop: its final push (and stale markers) go out, the queue is then empty.
proxy.send_signal(signal.SIGTERM)
proxy.wait(timeout=60)
lives[-1][1] = end

def samples(query):
    q = urllib.parse.urlencode({"query": query, "time": f"{time.time():.3f}"})
    status, body = get(f"{prom_base}/api/v1/query?{q}", timeout=30)
    result = json.loads(body)["data"]["result"]
    if not result:
        return []
    return [float(v[0]) for v in result[0]["values"]]

span = int(time.time() - start) + 120
series = {
    "codex_worker_ready": samples(f'codex_worker_ready{{instance="chaos"}}[{span}s]'),
    "codex_http_requests_total": samples(
        f'codex_http_requests_total{{instance="chaos",route="/v1/models"}}[{span}s]'),
}

def missing(ts):
    # Consecutive samples are 1 s apart, but for a proxy's down time (its kill to the
    # next life's first push, plus a second for the schedule's alignment) between them.
    # Every further second of a gap is a missing tick; so are the seconds of the first
    # and last life not covered at their ends.
    ts = sorted(ts)
    downs = [(lives[i][1], lives[i + 1][0]) for i in range(len(lives) - 1)]
    expected = int(sum(d - u for u, d in lives))
    if not ts:
        return expected, expected
    gone = max(0, int(ts[0] - lives[0][0] - 1.5))  # the first push is at the first ready
    gone += max(0, int(lives[-1][1] - ts[-1] - 1.5))
    for a, b in zip(ts, ts[1:]):
        allowed = 1.5 + sum(up - down + 1.0 for down, up in downs if a - 1.0 < down and down < b)
        gone += max(0, int(round(b - a - allowed)))
    return expected, gone

counts = {name: missing(ts) for name, ts in series.items()}
expected = max(e for e, _ in counts.values())
gone = max(g for _, g in counts.values())
plog = open(f"{work}/prometheus.log", errors="replace").read()
rejects = sum(plog.count(s) for s in ("Out of order sample", "out of order sample",
                                       "out of bounds", "duplicate sample for timestamp"))
rejected = sum(open(l, errors="replace").read().count("push rejected") for l in logs)
qbytes = sum(os.path.getsize(os.path.join(work, "queue", f))
             for f in os.listdir(os.path.join(work, "queue")) if f.endswith(".seg"))
down = sum(max(0.0, lives[i + 1][0] - lives[i][1]) for i in range(len(lives) - 1))
print(f"seed={SEED} duration_s={DURATION:.0f} kills={len(lives) - 1} prometheus_restarts={prom_restarts} "
      f"proxy_down_s={down:.1f}")
print(f"ticks_expected={expected} ticks_missing={gone} samples_worker_ready={len(series['codex_worker_ready'])} "
      f"samples_request_counter={len(series['codex_http_requests_total'])}")
print(f"rejects_logged={rejects} rejected_by_proxy={rejected} queue_bytes={qbytes} queue_cap={CAP}")
prom_stop()
ok = gone == 0 and rejects == 0 and rejected == 0 and qbytes <= CAP and expected > 0
if not ok:
    print(f"kill-loop: FAILED (logs kept in {work})", file=sys.stderr)
    sys.exit(1)
subprocess.run(["rm", "-rf", work])
PY
