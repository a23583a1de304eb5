#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, skipping what is there:
# the real receivers (Prometheus, Pushgateway, VictoriaMetrics), openssl, and the npm packages
# (the Codex CLI's app-server, Grafana's dashboard schema with TypeScript).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need_apt+=(prometheus-pushgateway)
command -v victoria-metrics >/dev/null || need_apt+=(victoria-metrics)
# openssl: tests/push_tls.rs makes its CA, server and client certificates with it.
command -v openssl >/dev/null || need_apt+=(openssl)
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

# npm packages live in tests/npm (its package.json pins them); node_modules is ignored.
if [ ! -x tests/npm/node_modules/.bin/tsc ] || [ ! -d tests/npm/node_modules/@openai/codex ]; then
  echo "installing npm test packages"
  (cd tests/npm && npm ci --no-audit --no-fund --loglevel=error)
fi
