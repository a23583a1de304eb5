#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, skipping what is there:
# the real receivers (Prometheus, Pushgateway, VictoriaMetrics), openssl, the official openai
# Python SDK, and the npm packages (the Codex CLI's app-server, Grafana's dashboard schema
# with TypeScript).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need_apt+=(prometheus-pushgateway)
command -v victoria-metrics >/dev/null || need_apt+=(victoria-metrics)
# openssl: tests/push_tls.rs makes its CA, server and client certificates with it.
command -v openssl >/dev/null || need_apt+=(openssl)
# chromium: tests/status_page.rs loads /status in a real headless browser.
command -v chromium >/dev/null || need_apt+=(chromium)
# apache2-utils: htpasswd makes the bcrypt hashes of basic_auth_users in tests.
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
# curl: tests/server_tls.rs is the TLS client.
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# PyYAML: scripts/check-artifacts.sh reads the rule and compose files with it.
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "installing: PyYAML"
  python3 -m pip install --quiet --disable-pip-version-check pyyaml
fi

# The official openai Python SDK: tests/sdk_streams.rs drives it as the client. Pinned in
# tests/python/requirements.txt, in a venv of its own (tests/python/.venv, ignored by git),
# so that it works where the system Python is externally managed (PEP 668, Debian 12).
want_openai=$(sed -n 's/^openai==//p' tests/python/requirements.txt)
# prometheus_client (same venv): tests/native_histograms.rs parses /metrics' OpenMetrics
# output with its OpenMetrics parser.
if ! tests/python/.venv/bin/python -c "import prometheus_client, openai, sys; sys.exit(openai.__version__ != '$want_openai')" 2>/dev/null; then
  echo "installing: openai $want_openai (tests/python/.venv)"
  if ! python3 -m venv tests/python/.venv >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap in its own package.
    rm -rf tests/python/.venv
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv tests/python/.venv
  fi
  tests/python/.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi

# npm packages live in tests/npm (its package.json pins them); node_modules is ignored.
if [ ! -x tests/npm/node_modules/.bin/tsc ] || [ ! -d tests/npm/node_modules/@openai/codex ]; then
  echo "installing npm test packages"
  (cd tests/npm && npm ci --no-audit --no-fund --loglevel=error)
fi
