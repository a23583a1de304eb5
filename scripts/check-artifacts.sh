#!/usr/bin/env bash
# Checks every operator artifact with the real tool for it (scripts/test.sh runs this after
# the Rust tests; it also runs on its own):
#   alerts/      promtool check rules, promtool test rules (a firing and a quiet case per alert)
#   dashboards/  Grafana's published schema (@grafana/schema, tsc --strict), every PromQL
#                expression parses (promtool), and names only metrics the proxy or the stack
#                exports: a real scrape of the built binary, with and without push destinations
#   scripts/     dev-smoke.sh against the freshly built binary
#   compose      YAML, promtool check config as the container sees it, Grafana provisioning
#                and its version against @grafana/schema, codex-proxy check-config on the
#                mounted configurations, health checks on every service and depends_on
#                waiting for health, the Dockerfile's HEALTHCHECK, cached dependency layer
#                and Rust image
#   Cargo.toml   rust-version is the highest the locked dependency tree declares
# tests/artifacts.rs (cargo test) checks the paths, the runbook links and the test coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/smoke.sh

for tool in promtool python3 node curl; do
  command -v "$tool" >/dev/null || smoke_fail "$tool is required: run scripts/install-test-deps.sh"
done
python3 -c 'import yaml' 2>/dev/null || smoke_fail "PyYAML is required: run scripts/install-test-deps.sh"
[ -x tests/npm/node_modules/.bin/tsc ] || smoke_fail "tests/npm has no TypeScript: run scripts/install-test-deps.sh"

if [ -z "${CODEX_PROXY_BIN:-}" ]; then cargo build --quiet --bin codex-proxy; fi
BIN=${CODEX_PROXY_BIN:-target/debug/codex-proxy}

WORK=$(mktemp -d)
trap 'smoke_stop; rm -rf "$WORK"' EXIT
step() { echo; echo "== $*"; }

step "alerts: promtool check rules"
promtool check rules alerts/codex-proxy.rules.yml

step "alerts: promtool test rules"
promtool test rules alerts/codex-proxy.rules.test.yml

step "dashboard: Grafana schema (@grafana/schema, tsc --strict --noEmit)"
mkdir -p tests/npm/.generated
python3 scripts/artifacts/dashboard.py ts dashboards/codex-proxy.json tests/npm/.generated/dashboard.ts
(cd tests/npm && node_modules/.bin/tsc --strict --noEmit --target es2022 --module esnext \
  --moduleResolution bundler .generated/dashboard.ts)
echo "dashboards/codex-proxy.json conforms to @grafana/schema $(node -p 'require("./tests/npm/node_modules/@grafana/schema/package.json").version')"

step "dashboard: every PromQL expression parses (promtool check rules)"
python3 scripts/artifacts/dashboard.py rules dashboards/codex-proxy.json "$WORK/dashboard.rules.yml"
promtool check rules "$WORK/dashboard.rules.yml"

step "dev-smoke against $BIN"
SMOKE_SCRAPE_OUT="$WORK/scrape.txt" CODEX_PROXY_BIN="$BIN" scripts/dev-smoke.sh

step "a real scrape with push destinations, for the codex_push_* families"
# Both destinations point at a closed port: the pusher's series exist and count failures.
CLOSED=$(smoke_free_port) || smoke_fail "no free port"
PORT=$(smoke_free_port) || smoke_fail "no free port"
cat >"$WORK/push.toml" <<TOML
[[remote_write]]
url = "http://127.0.0.1:$CLOSED/api/v1/write"
interval = "1s"

[[pushgateway]]
url = "http://127.0.0.1:$CLOSED"
interval = "1s"
TOML
smoke_on_fail() { echo "last lines of the proxy's log:"; tail -40 "$WORK/proxy.log" | sed 's/^/  /'; }
smoke_start "$WORK" env PROXY_LISTEN="127.0.0.1:$PORT" \
  "$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")" serve --config "$WORK/push.toml"
smoke_wait_code "http://127.0.0.1:$PORT/livez" 200 20 || smoke_fail "proxy with push destinations did not start"
deadline=$((SECONDS + 20))
until curl -sS --max-time 10 "http://127.0.0.1:$PORT/metrics" >"$WORK/push-scrape.txt" &&
  grep -q '^codex_push_requests_total{' "$WORK/push-scrape.txt"; do
  [ "$SECONDS" -lt "$deadline" ] || smoke_fail "no codex_push_requests_total in the scrape within 20s"
  sleep 0.2
done
smoke_stop
unset -f smoke_on_fail
cat "$WORK/push-scrape.txt" >>"$WORK/scrape.txt"
echo "codex_push_* families scraped: $(grep -c '^# TYPE codex_push_' "$WORK/push-scrape.txt")"

step "dashboard and alerts: only exported metric names"
python3 scripts/artifacts/dashboard.py names dashboards/codex-proxy.json --scrape "$WORK/scrape.txt" \
  --rules alerts/codex-proxy.rules.yml --sources src/metrics/mod.rs src/metrics/model_work.rs src/push/self_metrics.rs

step "compose stack and Dockerfile (static: Docker does not run here)"
python3 scripts/artifacts/compose.py docker-compose.yml --proxy-bin "$BIN"

step "rust-version: the true minimum of the locked tree"
# Every platform's packages, not only this one's: a fresh machine's cache has only what the
# build fetched, so the metadata may download the rest (crates.io is reachable here).
cargo metadata --format-version 1 --locked --quiet | python3 scripts/artifacts/rust_version.py Cargo.toml

echo
echo "check-artifacts: all checks passed"
