# shellcheck shell=bash
# Helpers shared by scripts/bench/backlog-drain.sh, catch-up.sh and push-cost.sh (sourced,
# not run). The sourcing script sets BENCH_NAME (its name, for error messages) first.

# A fresh work directory in WORK; on exit every process in PIDS is killed and WORK removed.
bench_workdir() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# Fails unless every named program is on PATH.
bench_require() {
  for b in "$@"; do
    command -v "$b" >/dev/null || { echo "$BENCH_NAME: $b is required" >&2; exit 1; }
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url what
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$BENCH_NAME: $2 did not come up ($1)" >&2; exit 1
}
metric() { # url name -> sum of the samples of that name (0 while unreachable)
  local body
  body=$(curl -sf "$1") || { echo 0; return; }
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }' <<<"$body"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_of() { # pid -> user+system seconds
  awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / t }' "/proc/$1/stat"
}
