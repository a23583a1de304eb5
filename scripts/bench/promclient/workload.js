// The shared benchmark workload: the label sets and observations that both the Rust
// registry (benches/metrics.rs) and prom-client (bench.js) are filled with, so that both
// render the same series. Deterministic: a seeded generator, no clock.
//
//   node workload.js > workload.json     (scripts/bench/metrics-vs-promclient.sh does this)
'use strict';

// Series of one HTTP label set: 1 counter + histogram (9 buckets, +Inf, _sum, _count)
// + summary (4 quantiles, _sum, _count).
const SERIES_PER_LABEL_SET = 1 + 12 + 6;
// The Node proxy's /metrics held about this many series in the measurement.
const TARGET_SERIES = 2806;

const ROUTES = [
  '/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/models',
  '/v1/models/{id}', '/livez', '/readyz', '/metrics', '/internal/maintenance', 'unmatched',
];
const METHODS = ['GET', 'POST', 'HEAD', 'OPTIONS'];
const FAMILIES = ['2xx', '4xx', '5xx', '3xx'];
const MODELS = ['gpt-5', 'gpt-5-codex', 'codex-mini', 'unknown', 'other'];
const CATEGORIES = ['worker_not_ready', 'worker_busy', 'worker_error', 'timeout', 'internal', 'maintenance'];
const OBSERVATIONS_PER_LABEL_SET = 20;

function mulberry32(seed) {
  return function next() {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function build() {
  const rand = mulberry32(20240611);
  const combos = [];
  for (const route of ROUTES)
    for (const method of METHODS)
      for (const status_family of FAMILIES)
        for (const model of MODELS) combos.push({ route, method, status_family, model });
  // A seeded shuffle, then take label sets until the series target is reached.
  for (let i = combos.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [combos[i], combos[j]] = [combos[j], combos[i]];
  }
  const toolBuffer = [
    { family: 'started', output_mode: 'obsidian-xml', reason: 'open', count: 40 },
    { family: 'flushed', output_mode: 'obsidian-xml', reason: 'closed', count: 37 },
    { family: 'aborted', output_mode: 'obsidian-xml', reason: 'nested_open', count: 1 },
    { family: 'aborted', output_mode: 'obsidian-xml', reason: 'finalize', count: 1 },
    { family: 'aborted', output_mode: 'obsidian-xml', reason: 'disconnect', count: 1 },
  ];
  // restarts, backoff, ready, streams, maintenance.
  const fixedSeries = 5 + toolBuffer.length;
  const http = [];
  const errors = [];
  let series = fixedSeries;
  for (const c of combos) {
    const extra = SERIES_PER_LABEL_SET + (c.status_family === '5xx' ? 1 : 0);
    if (series + extra > TARGET_SERIES) continue;
    series += extra;
    // Latencies log-uniform between 5 ms and 20 s, rounded to 0.001 ms.
    const observations = [];
    for (let i = 0; i < OBSERVATIONS_PER_LABEL_SET; i++) {
      observations.push(Math.round(5 * Math.pow(4000, rand()) * 1000) / 1000);
    }
    http.push({ ...c, observations });
    if (c.status_family === '5xx') {
      errors.push({ ...c, category: CATEGORIES[Math.floor(rand() * CATEGORIES.length)], count: OBSERVATIONS_PER_LABEL_SET });
    }
    if (series === TARGET_SERIES) break;
  }
  return { series, models: MODELS.filter((m) => m !== 'unknown' && m !== 'other'), http, errors, tool_buffer: toolBuffer };
}

module.exports = { build };

if (require.main === module) {
  process.stdout.write(JSON.stringify(build()) + '\n');
}
