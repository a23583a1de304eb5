#!/usr/bin/env bash
# Smoke test of a freshly built binary: starts it on embedded defaults (no config file;
# /metrics is on by default) on a free port of 127.0.0.1, with the scrape token in a file, sends a streamed and a non-streamed
# completion, switches maintenance on and off at run time, scrapes the guarded /metrics and
# checks the key series, the guard, and that codex_worker_restarts_total agrees with /readyz.
# Builds nothing: run `cargo build` first.
#
#   scripts/dev-smoke.sh
#   CODEX_PROXY_BIN=target/release/codex-proxy scripts/dev-smoke.sh
#   SMOKE_SCRAPE_OUT=scrape.txt scripts/dev-smoke.sh   # keep the last scrape
#
# The demo worker crashes after the two completions (DEMO_CRASH_AFTER_TURNS=2), so the
# restart counter must reach exactly 1 while /readyz comes back to 200. Exits non-zero with
# a message on the first failed check; always stops the proxy it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/smoke.sh

BIN=${CODEX_PROXY_BIN:-target/debug/codex-proxy}
[ -x "$BIN" ] || smoke_fail "no executable at $BIN: run 'cargo build' first (or set CODEX_PROXY_BIN)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
command -v curl >/dev/null || smoke_fail "curl is required"

WORK=$(mktemp -d)
trap 'smoke_stop; rm -rf "$WORK"' EXIT

PORT=$(smoke_free_port) || smoke_fail "no free port on 127.0.0.1"
BASE="http://127.0.0.1:$PORT"
TOKEN="smoke-token-$RANDOM$RANDOM"
# Strings that must never become label values: request id, query string, prompt text.
MARK="smoke$RANDOM$RANDOM"

# Embedded defaults; only the listen address, the token file and the demo worker's knobs
# are set. Loopback admission is off so that the bearer token is what admits the scrape.
printf '%s\n' "$TOKEN" >"$WORK/metrics-token"
smoke_start "$WORK" env PROXY_LISTEN="127.0.0.1:$PORT" \
  PROXY_METRICS_TOKEN_FILE="$WORK/metrics-token" PROXY_METRICS_ALLOW_LOOPBACK=0 \
  DEMO_CRASH_AFTER_TURNS=2 DEMO_TOOL_BLOCKS=1 "$BIN"
echo "started $BIN on $BASE (pid $SMOKE_PID)"

smoke_on_fail() { echo "last lines of the proxy's log:"; tail -40 "$WORK/proxy.log" | sed 's/^/  /'; }

smoke_wait_code "$BASE/livez" 200 20 || smoke_fail "/livez did not answer 200 within 20s"
smoke_wait_code "$BASE/readyz" 200 30 || smoke_fail "/readyz did not answer 200 within 30s (worker not ready)"
smoke_ok "/livez and /readyz answer 200"
"$BIN" healthcheck --url "$BASE/readyz" || smoke_fail "codex-proxy healthcheck failed on a ready proxy"
smoke_ok "codex-proxy healthcheck: exit 0"

# Non-streamed completion.
code=$(curl -sS -o "$WORK/plain.json" -w '%{http_code}' --max-time 30 \
  -H 'content-type: application/json' -H "x-request-id: req-$MARK" \
  -d "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"prompt-$MARK\"}]}" \
  "$BASE/v1/chat/completions?q=query-$MARK") || smoke_fail "non-streamed request failed"
[ "$code" = 200 ] || smoke_fail "non-streamed completion answered $code: $(head -c 300 "$WORK/plain.json")"
grep -q '"choices"' "$WORK/plain.json" || smoke_fail "non-streamed answer has no choices: $(head -c 300 "$WORK/plain.json")"
smoke_ok "non-streamed completion: 200 with choices"

# Streamed completion, in the tool-buffering output mode.
code=$(curl -sS -N -o "$WORK/stream.txt" -w '%{http_code}' --max-time 30 \
  -H 'content-type: application/json' -H "x-request-id: req-$MARK" -H 'x-proxy-output-mode: obsidian-xml' \
  -d "{\"model\":\"demo\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"prompt-$MARK\"}]}" \
  "$BASE/v1/chat/completions?q=query-$MARK") || smoke_fail "streamed request failed"
[ "$code" = 200 ] || smoke_fail "streamed completion answered $code: $(head -c 300 "$WORK/stream.txt")"
grep -q 'chat.completion.chunk' "$WORK/stream.txt" || smoke_fail "stream has no chat.completion.chunk: $(head -c 300 "$WORK/stream.txt")"
grep -q '^data: \[DONE\]' "$WORK/stream.txt" || smoke_fail "stream does not end with data: [DONE]"
smoke_ok "streamed completion: 200, chunks, [DONE]"

# Maintenance switched on at run time (loopback may, no admin token is set): /v1 answers
# 503 with Retry-After, counted as a 5xx of category "maintenance"; then off again.
maintenance() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H 'content-type: application/json' \
    -d "{\"enabled\":$1}" "$BASE/internal/maintenance" || true
}
code=$(maintenance true)
[ "$code" = 200 ] || smoke_fail "POST /internal/maintenance {enabled:true} answered $code"
code=$(curl -sS -D "$WORK/maint.headers" -o /dev/null -w '%{http_code}' --max-time 10 "$BASE/v1/models") ||
  smoke_fail "request in maintenance failed"
[ "$code" = 503 ] || smoke_fail "/v1/models in maintenance answered $code, expected 503"
grep -qi '^retry-after:' "$WORK/maint.headers" || smoke_fail "the maintenance 503 has no Retry-After"
MAINT_SCRAPE_CODE=$(curl -s -o "$WORK/maint-metrics.txt" -w '%{http_code}' --max-time 10 \
  -H "Authorization: Bearer $TOKEN" "$BASE/metrics" || true)
code=$(maintenance false)
[ "$code" = 200 ] || smoke_fail "POST /internal/maintenance {enabled:false} answered $code"
[ "$MAINT_SCRAPE_CODE" = 200 ] || smoke_fail "scrape in maintenance answered $MAINT_SCRAPE_CODE"
smoke_expect "$WORK/maint-metrics.txt" codex_maintenance_mode '==' 1
smoke_ok "maintenance on at run time: 503 with Retry-After, then off"

# The guard: no token and a wrong token get 401 with a Bearer challenge, the token admits.
code=$(smoke_code "$BASE/metrics")
[ "$code" = 401 ] || smoke_fail "/metrics without a token answered $code, expected 401"
curl -s -D - -o /dev/null --max-time 10 "$BASE/metrics" | grep -qi '^www-authenticate: Bearer' ||
  smoke_fail "the 401 of /metrics has no WWW-Authenticate: Bearer"
code=$(smoke_code "$BASE/metrics" -H "Authorization: Bearer wrong-$TOKEN")
[ "$code" = 401 ] || smoke_fail "/metrics with a wrong token answered $code, expected 401"
ctype=$(curl -s -o /dev/null -w '%{content_type}' --max-time 10 -H "Authorization: Bearer $TOKEN" "$BASE/metrics")
case "$ctype" in
  text/plain*version=0.0.4*) ;;
  *) smoke_fail "/metrics Content-Type is '$ctype', expected text/plain; version=0.0.4" ;;
esac
smoke_ok "/metrics: 401 without or with a wrong token, text 0.0.4 with the token"

scrape() { curl -sS --fail --max-time 10 -H "Authorization: Bearer $TOKEN" "$BASE/metrics"; }
SCRAPE="$WORK/metrics.txt"

# The worker exits after its second turn: wait until it is back, then the counter is 1.
deadline=$((SECONDS + 30))
while :; do
  scrape >"$SCRAPE" || smoke_fail "scrape failed"
  restarts=$(smoke_sum "$SCRAPE" codex_worker_restarts_total)
  [ "${restarts:-0}" -ge 1 ] 2>/dev/null && [ "$(smoke_code "$BASE/readyz")" = 200 ] && break
  [ "$SECONDS" -lt "$deadline" ] || smoke_fail "worker restart not seen within 30s (codex_worker_restarts_total ${restarts:-missing})"
  sleep 0.2
done
smoke_check_worker_state "$BASE" "$SCRAPE" scrape
[ "$SMOKE_RESTARTS" = 1 ] || smoke_fail "codex_worker_restarts_total is $SMOKE_RESTARTS after one crash, expected 1"

# Streams end with their body: poll until the gauge is back to 0.
deadline=$((SECONDS + 10))
until [ "$(smoke_sum "$SCRAPE" codex_streams_active)" = 0 ]; do
  [ "$SECONDS" -lt "$deadline" ] || smoke_fail "codex_streams_active stays at $(smoke_sum "$SCRAPE" codex_streams_active) after the stream ended"
  sleep 0.2
  scrape >"$SCRAPE" || smoke_fail "scrape failed"
done

smoke_check_always_families "$SCRAPE"
smoke_expect "$SCRAPE" codex_http_requests_total '>=' 2 'route="/v1/chat/completions"' 'method="POST"' 'status_family="2xx"'
smoke_expect "$SCRAPE" codex_http_latency_ms_count '>=' 2 'route="/v1/chat/completions"'
smoke_expect "$SCRAPE" codex_http_latency_ms_sum '>' 0 'route="/v1/chat/completions"'
smoke_expect "$SCRAPE" codex_http_latency_ms_bucket '>=' 2 'route="/v1/chat/completions"' 'le="+Inf"'
smoke_family "$SCRAPE" codex_http_latency_summary_ms
smoke_expect "$SCRAPE" codex_http_latency_summary_ms_count '>=' 2 'route="/v1/chat/completions"'
smoke_expect "$SCRAPE" codex_tool_buffer_started_total '>=' 1 'output_mode="obsidian-xml"'
smoke_expect "$SCRAPE" codex_tool_buffer_flushed_total '>=' 1 'output_mode="obsidian-xml"'
smoke_expect "$SCRAPE" codex_worker_ready '==' 1
smoke_expect "$SCRAPE" codex_worker_backoff_ms '==' 0
smoke_expect "$SCRAPE" codex_streams_active '==' 0
smoke_expect "$SCRAPE" codex_maintenance_mode '==' 0
smoke_expect "$SCRAPE" codex_turns_total '>=' 2 'outcome="completed"'
smoke_expect "$SCRAPE" codex_tokens_total '>' 0 'kind="output"'
smoke_expect "$SCRAPE" codex_worker_queue_depth '==' 0
smoke_expect "$SCRAPE" codex_http_errors_total '>=' 1 'route="/v1/models"' 'status_family="5xx"' 'category="maintenance"'
smoke_check_consistency "$SCRAPE"
if grep -q "$MARK" "$SCRAPE"; then
  smoke_fail "the scrape carries a request id, query string or prompt text: $(grep "$MARK" "$SCRAPE" | head -3)"
fi
smoke_ok "no request id, query string or prompt text in the scrape"
smoke_check_promtool "$SCRAPE"

if [ -n "${SMOKE_SCRAPE_OUT:-}" ]; then cp "$SCRAPE" "$SMOKE_SCRAPE_OUT"; fi
echo "dev-smoke: all checks passed"
