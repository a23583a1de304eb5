#!/usr/bin/env bash
# Read-only smoke test of a running codex-proxy: only GET requests, no completion.
#
#   scripts/prod-smoke.sh BASE_URL [METRICS_TOKEN]
#   CODEX_PROXY_URL=https://proxy.internal CODEX_PROXY_METRICS_TOKEN=... scripts/prod-smoke.sh
#
# Checks /livez, that /readyz agrees with codex_worker_ready and the restart count with
# codex_worker_restarts_total, that /metrics answers with the token (and refuses a wrong
# one with 401), that the families the proxy always exports are there, that the latency histograms
# are consistent, that no label value is over 64 characters, and (with promtool installed)
# that the exposition lints clean except for the documented parity names.
# The token is sent only in the Authorization header; it is never printed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/smoke.sh

BASE=${1:-${CODEX_PROXY_URL:-}}
TOKEN=${2:-${CODEX_PROXY_METRICS_TOKEN:-}}
[ -n "$BASE" ] || smoke_fail "usage: scripts/prod-smoke.sh BASE_URL [METRICS_TOKEN] (or CODEX_PROXY_URL, CODEX_PROXY_METRICS_TOKEN)"
BASE=${BASE%/}
command -v curl >/dev/null || smoke_fail "curl is required"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

AUTH=()
[ -n "$TOKEN" ] && AUTH=(-H "Authorization: Bearer $TOKEN")

code=$(smoke_code "$BASE/livez")
[ "$code" = 200 ] || smoke_fail "$BASE/livez answered $code"
smoke_ok "/livez answers 200"

code=$(smoke_code "$BASE/metrics" "${AUTH[@]}")
case "$code" in
  200) ;;
  404) smoke_fail "/metrics answered 404: metrics are disabled (metrics.enabled = false or PROXY_ENABLE_METRICS=false)" ;;
  401) smoke_fail "/metrics answered 401: the token is wrong or missing" ;;
  403) smoke_fail "/metrics answered 403: this address is refused and no metrics.token is configured" ;;
  *) smoke_fail "/metrics answered $code" ;;
esac
if [ -n "$TOKEN" ]; then
  code=$(smoke_code "$BASE/metrics" -H "Authorization: Bearer wrong-token-$RANDOM")
  case "$code" in
    401) smoke_ok "/metrics refuses a wrong token (401)" ;;
    200) echo "note: /metrics admits a wrong token from here (loopback admission or allow_unauth)" ;;
    *) smoke_fail "/metrics with a wrong token answered $code" ;;
  esac
fi

scrape() { curl -sS --fail --max-time 10 "${AUTH[@]}" "$BASE/metrics"; }
SCRAPE="$WORK/metrics.txt"
smoke_check_worker_state "$BASE" "$SCRAPE" scrape
smoke_check_always_families "$SCRAPE"
if grep -q '^# TYPE codex_http_requests_total ' "$SCRAPE"; then
  smoke_family "$SCRAPE" codex_http_latency_ms
  smoke_family "$SCRAPE" codex_http_latency_summary_ms
  smoke_ok "request, latency histogram and summary families present"
else
  echo "note: no request served yet, so no request series to check"
fi
smoke_check_consistency "$SCRAPE"
smoke_check_promtool "$SCRAPE"
echo "prod-smoke: all checks passed against $BASE"
