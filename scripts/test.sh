#!/usr/bin/env bash
# The whole test suite: installs the test servers where missing, then runs the Rust
# tests (unit + integration against real servers) and the artifact checks.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

# A missing server fails a test instead of skipping it.
export CODEX_PROXY_REQUIRE_SERVERS=1
export CODEX_APP_SERVER_BIN="$PWD/tests/npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"

cargo test --no-fail-fast
if [ -x scripts/check-artifacts.sh ]; then scripts/check-artifacts.sh; fi
echo "scripts/test.sh: all checks passed"
