#!/usr/bin/env bash
# What the metrics layer adds to one request, in instructions: deterministic where
# requests per second on a shared 2-core machine are not (rounds of one configuration
# scatter by ±30 % there). The release binary runs under valgrind's callgrind with metrics
# off, then on; each serves N1 and then (in a second run) N2 sequential keep-alive
# `GET /v1/models` (or the PATH given); the difference of the two runs' totals divided by
# N2 − N1 is the cost of one request, start-up cancelled out.
#
#   scripts/bench/metrics-instructions.sh [path] [N1] [N2]    (default /v1/models 500 2500)
#
# Needs valgrind and python3 (Debian: valgrind, python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
URL_PATH=${1:-/v1/models}
N1=${2:-500}
N2=${3:-2500}
for b in valgrind callgrind_annotate python3 curl; do
  command -v "$b" >/dev/null || { echo "metrics-instructions.sh: $b is required" >&2; exit 1; }
done
cargo build --release --bin codex-proxy 2>/dev/null
BIN=$PWD/target/release/codex-proxy
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/requests.py" <<'PY'
import http.client, json, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = json.dumps({"model": "codex-demo", "messages": [{"role": "user", "content": "hello"}]})
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(n):
    if path.endswith("/chat/completions"):
        c.request("POST", path, body, {"Content-Type": "application/json"})
    else:
        c.request("GET", path)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{path}: HTTP {r.status}")
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

total() { # metrics(on|off) requests -> instructions of the whole run
  local side=$1 n=$2 port out
  port=$(free_port)
  out=$WORK/callgrind-$side-$n.out
  printf '[metrics]\nenabled = %s\n' "$([ "$side" = on ] && echo true || echo false)" >"$WORK/$side.toml"
  PROXY_LISTEN=127.0.0.1:$port RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" serve --config "$WORK/$side.toml" >"$WORK/$side-$n.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  python3 "$WORK/requests.py" "$port" "$URL_PATH" "$n"
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/^summary: *//p' "$out"
}

declare -A per_request
for side in off on; do
  a=$(total "$side" "$N1")
  b=$(total "$side" "$N2")
  per_request[$side]=$(( (b - a) / (N2 - N1) ))
  echo "metrics $side: ${per_request[$side]} instructions per request" >&2
done
python3 - "$URL_PATH" "${per_request[off]}" "${per_request[on]}" <<'PY'
import sys
path, off, on = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"| `{path}` | {off:,} | {on:,} | {on - off:,} | {off / on:.3f} |")
PY
