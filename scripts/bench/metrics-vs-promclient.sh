#!/usr/bin/env bash
# The metrics layer against prom-client 15.1.3, in one run, on one workload
# (scripts/bench/promclient/workload.js: the same families, label sets and observations):
#   1. record: recording one finished request (counter + histogram + summary);
#   2. render: GET /metrics for ~3,300 series (Rust: benches/metrics.rs; Node: bench.js):
#      the workload's ~2,800 plus the families the proxy declares at start, which
#      bench.js declares alike from the Rust side's first render;
#   3. requests/s through the real binary with metrics on vs off: two proxies loaded one
#      after the other by wrk, proxy pinned to CPU 0 and wrk to CPU 1 (loopback only,
#      bounded: ROUNDS runs of DURATION each), and each proxy process's CPU time per
#      request (from /proc).
# Prints the figures and their ratios as Markdown for docs/performance.md.
#
# Environment: ROUNDS (default 3), DURATION (default 8s), CONNECTIONS (default 8),
# SKIP_THROUGHPUT=1 to run only 1 and 2, SKIP_MICRO=1 to run only 3, CONTROL=1 to run 3
# with metrics off on both sides (an A/A control: the spread it shows is the noise).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PC=scripts/bench/promclient
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-8}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "metrics-vs-promclient: needs $1 ($2)" >&2; exit 1; }; }
need node "Debian: nodejs"
need curl "Debian: curl"
need taskset "Debian: util-linux"
if [ "${SKIP_THROUGHPUT:-0}" != 1 ] && ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

if [ "${SKIP_MICRO:-0}" != 1 ]; then
# --- prom-client, pinned by package-lock.json -------------------------------------------
if [ ! -d "$PC/node_modules/prom-client" ]; then
  (cd "$PC" && npm ci --no-audit --no-fund --loglevel=error)
fi
node "$PC/workload.js" > "$PC/workload.json"

# --- 1 + 2: criterion (thread CPU time) and prom-client (process CPU time) ---------------
echo "== cargo bench --bench metrics" >&2
METRICS_BENCH_RENDER_OUT="$WORK/rust-render.txt" cargo bench --bench metrics 2>/dev/null \
  | tee "$WORK/criterion.txt" >&2
estimate() { node -e 'const e=require(process.argv[1]); console.log(e.median.point_estimate)' \
  "$ROOT/target/criterion/$1/new/estimates.json"; }
RS_RECORD=$(estimate record_request)
RS_RECORD_ONE=$(estimate record_request_one_series)
RS_RENDER=$(estimate render_text)
RS_RENDER_GZ=$(estimate render_gzip)
RS_SERIES=$(sed -n 's/^series: \([0-9]*\).*/\1/p' "$WORK/criterion.txt")

echo "== node $PC/bench.js" >&2
node "$PC/bench.js" "$WORK/rust-render.txt" | tee "$WORK/node.json" >&2
js() { node -e 'const r=require(process.argv[1]); console.log(r[process.argv[2]])' "$WORK/node.json" "$1"; }
JS_RECORD=$(js record_ns)
JS_RECORD_ONE=$(js record_one_ns)
JS_RENDER=$(js render_ns)
JS_SERIES=$(js series)
if [ "$RS_SERIES" != "$JS_SERIES" ]; then
  echo "series differ: Rust $RS_SERIES, prom-client $JS_SERIES" >&2
  exit 1
fi
fi

# --- 3: requests/s through the real binary, metrics on vs off ----------------------------
THROUGHPUT=""
if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then
  echo "== cargo build --release" >&2
  cargo build --release --bin codex-proxy 2>/dev/null
  BIN=$ROOT/target/release/codex-proxy
  free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
  cat > "$WORK/chat.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"codex-demo","messages":[{"role":"user","content":"hello"}]}'
EOF
  # Two proxies, metrics off and on, loaded one after the other (the order alternates
  # from round to round), each pinned to CPU 0 with its worker while wrk runs on CPU 1:
  # loading both at once on a 2-core machine made four busy processes share two cores,
  # and the rounds scattered by ±15 %. Per side it prints "<requests/s> <proxy CPU µs per
  # request>" (the worker's CPU is left out: it is the same either way, so leaving it out
  # makes the ratio stricter).
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  start_proxy() { # $1 = on|off; prints "<pid> <port> <dir>"
    local port dir
    port=$(free_port); dir=$WORK/$1-$RANDOM; mkdir -p "$dir"
    {
      echo "[worker]"; echo "max_concurrency = 64"
      # CONTROL=1: both sides off, to see how far apart two equal proxies measure.
      echo "[metrics]"; echo "enabled = $([ "$1" = on ] && [ "${CONTROL:-0}" != 1 ] && echo true || echo false)"
    } > "$dir/config.toml"
    PROXY_LISTEN=127.0.0.1:$port RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$dir/config.toml" \
      > "$dir/log" 2>&1 &
    echo "$! $port $dir"
  }
  load() { # $1 = port, $2 = path, $3 = output file
    if [ "$2" = chat ]; then
      taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/chat.lua" \
        "http://127.0.0.1:$1/v1/chat/completions" > "$3" 2>&1
    else
      taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$1/v1/models" > "$3" 2>&1
    fi
  }
  result() { # $1 = wrk output, $2 = CPU ticks used
    if grep -q "Non-2xx" "$1"; then echo "non-2xx answers under load:" >&2; cat "$1" >&2; exit 1; fi
    local n rps
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$1")
    rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$1")
    node -e "console.log('$rps', ($2 * 1e6 / $(getconf CLK_TCK) / $n).toFixed(2))"
  }
  round() { # $1 = path, $2 = round number; prints "<off result> <on result>"
    local off on off_t0 on_t0 first second
    read -r off_pid off_port off_dir <<< "$(start_proxy off)"
    read -r on_pid on_port on_dir <<< "$(start_proxy on)"
    PIDS+=("$off_pid" "$on_pid")
    for port in "$off_port" "$on_port"; do
      for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
        sleep 0.1
      done
    done
    first=off; second=on
    if [ $(( $2 % 2 )) -eq 0 ]; then first=on; second=off; fi
    for side in $first $second; do
      if [ "$side" = off ]; then
        off_t0=$(cpu_ticks "$off_pid")
        load "$off_port" "$1" "$off_dir/wrk"
        off=$(result "$off_dir/wrk" $(( $(cpu_ticks "$off_pid") - off_t0 )))
      else
        on_t0=$(cpu_ticks "$on_pid")
        load "$on_port" "$1" "$on_dir/wrk"
        on=$(result "$on_dir/wrk" $(( $(cpu_ticks "$on_pid") - on_t0 )))
      fi
    done
    kill "$off_pid" "$on_pid"; wait "$off_pid" "$on_pid" 2>/dev/null || true
    echo "$off $on"
  }
  median() { sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
  for path in models chat; do
    rps_ratios=(); cpu_ratios=()
    for r in $(seq 1 "$ROUNDS"); do
      read -r off_rps off_cpu on_rps on_cpu <<< "$(round $path "$r")"
      rps_ratio=$(node -e "console.log(($on_rps/$off_rps).toFixed(3))")
      cpu_ratio=$(node -e "console.log(($off_cpu/$on_cpu).toFixed(3))")
      echo "   $path round $r: off $off_rps req/s $off_cpu µs CPU/req; on $on_rps req/s $on_cpu µs CPU/req" >&2
      rps_ratios+=("$rps_ratio"); cpu_ratios+=("$cpu_ratio")
    done
    rps_median=$(printf '%s\n' "${rps_ratios[@]}" | median)
    cpu_median=$(printf '%s\n' "${cpu_ratios[@]}" | median)
    THROUGHPUT+="| \`$path\`: requests/s, on ÷ off | $rps_median | ≥ 0.97 |"$'\n'
    THROUGHPUT+="| \`$path\`: requests per proxy CPU second, on ÷ off | $cpu_median | ≥ 0.97 |"$'\n'
  done
fi

[ "${SKIP_MICRO:-0}" = 1 ] || node -e '
const [rr, jr, rn, rg, jn, series, r1, j1] = process.argv.slice(1).map(Number);
const f = (x) => x >= 100 ? x.toFixed(0) : x.toFixed(1);
console.log("| measure | codex-proxy | prom-client 15.1.3 | ratio | target |");
console.log("|---|---|---|---|---|");
console.log(`| record one request (counter + histogram + summary), label sets in turn, CPU ns | ${f(rr)} | ${f(jr)} | ${(jr/rr).toFixed(1)}× faster | < 100 ns |`);
console.log(`| the same, one busy label set, CPU ns | ${f(r1)} | ${f(j1)} | ${(j1/r1).toFixed(1)}× faster | < 100 ns |`);
console.log(`| render /metrics, ${series} series, CPU ms | ${(rn/1e6).toFixed(2)} | ${(jn/1e6).toFixed(2)} | ${(jn/rn).toFixed(1)}× faster | ≥ 10× |`);
console.log(`| render + gzip, CPU ms | ${(rg/1e6).toFixed(2)} | – | – | – |`);
' "$RS_RECORD" "$JS_RECORD" "$RS_RENDER" "$RS_RENDER_GZ" "$JS_RENDER" "$RS_SERIES" \
  "$RS_RECORD_ONE" "$JS_RECORD_ONE"
if [ -n "$THROUGHPUT" ]; then
  echo
  echo "| measure (median of $ROUNDS rounds) | ratio | target |"
  echo "|---|---|---|"
  printf '%s' "$THROUGHPUT"
fi
