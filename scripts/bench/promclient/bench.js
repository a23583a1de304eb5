// The prom-client 15.1.3 side of scripts/bench/metrics-vs-promclient.sh: the same
// families, label sets and observations as benches/metrics.rs, then
//  - record: the cost of recording one finished request (requests counter + latency
//    histogram + latency summary), like the Node proxy's middleware;
//  - render: `register.metrics()`, what the Node proxy's GET /metrics did.
// Times are this process's CPU time (process.cpuUsage), like the Rust side's thread CPU
// time: the machines this runs on are shared. Prints one JSON object.
'use strict';

const client = require('prom-client');
const { build } = require('./workload');

const HTTP_LABELS = ['route', 'method', 'status_family', 'model'];
const BUCKETS = [50, 100, 200, 400, 800, 1200, 2000, 5000, 10000];

function registry() {
  const register = new client.Registry();
  const m = {
    requests: new client.Counter({ name: 'codex_http_requests_total', help: 'HTTP requests.', labelNames: HTTP_LABELS, registers: [register] }),
    errors: new client.Counter({ name: 'codex_http_errors_total', help: 'HTTP 5xx.', labelNames: [...HTTP_LABELS, 'category'], registers: [register] }),
    latency: new client.Histogram({ name: 'codex_http_latency_ms', help: 'Latency.', labelNames: HTTP_LABELS, buckets: BUCKETS, registers: [register] }),
    summary: new client.Summary({
      name: 'codex_http_latency_summary_ms', help: 'Latency summary.', labelNames: HTTP_LABELS,
      percentiles: [0.5, 0.9, 0.95, 0.99], maxAgeSeconds: 600, ageBuckets: 5, registers: [register],
    }),
    restarts: new client.Counter({ name: 'codex_worker_restarts_total', help: 'Restarts.', registers: [register] }),
    backoff: new client.Gauge({ name: 'codex_worker_backoff_ms', help: 'Backoff.', registers: [register] }),
    ready: new client.Gauge({ name: 'codex_worker_ready', help: 'Ready.', registers: [register] }),
    streams: new client.Gauge({ name: 'codex_streams_active', help: 'Streams.', registers: [register] }),
    maintenance: new client.Gauge({ name: 'codex_maintenance_mode', help: 'Maintenance.', registers: [register] }),
    tool: {},
  };
  for (const family of ['started', 'flushed', 'aborted']) {
    m.tool[family] = new client.Counter({
      name: `codex_tool_buffer_${family}_total`, help: 'Tool buffer.', labelNames: ['output_mode', 'reason'], registers: [register],
    });
  }
  return { register, m };
}

function fill(m, w) {
  for (const s of w.http) {
    const labels = { route: s.route, method: s.method, status_family: s.status_family, model: s.model };
    for (const v of s.observations) {
      m.requests.inc(labels);
      m.latency.observe(labels, v);
      m.summary.observe(labels, v);
    }
  }
  for (const e of w.errors) {
    m.errors.inc({ route: e.route, method: e.method, status_family: e.status_family, model: e.model, category: e.category }, e.count);
  }
  for (const t of w.tool_buffer) m.tool[t.family].inc({ output_mode: t.output_mode, reason: t.reason }, t.count);
  m.restarts.inc(1);
  m.backoff.set(0);
  m.ready.set(1);
  m.streams.set(2);
  m.maintenance.set(0);
}

function samples(text) {
  return text.split('\n').filter((l) => l && !l.startsWith('#')).length;
}

async function main() {
  const w = build();
  const { register, m } = registry();
  fill(m, w);

  // Render: warm up, then time a fixed number of renders.
  for (let i = 0; i < 20; i++) await register.metrics();
  const renders = Number(process.env.RENDERS || 200);
  let text = '';
  const cpuNs = (since) => { const u = process.cpuUsage(since); return (u.user + u.system) * 1000; };
  const c0 = process.cpuUsage();
  for (let i = 0; i < renders; i++) text = await register.metrics();
  const renderNs = cpuNs(c0) / renders;

  // Record: one finished request = inc + observe + observe, cycling over the label sets.
  // Request i uses label set i mod N and that set's observation i mod 20, as the Rust side.
  const sets = w.http.map((s) => ({ route: s.route, method: s.method, status_family: s.status_family, model: s.model }));
  const record = (i) => {
    const k = i % sets.length;
    const labels = sets[k];
    const v = w.http[k].observations[i % w.http[k].observations.length];
    m.requests.inc(labels);
    m.latency.observe(labels, v);
    m.summary.observe(labels, v);
  };
  const records = Number(process.env.RECORDS || 200000);
  for (let i = 0; i < 20000; i++) record(i);
  const c1 = process.cpuUsage();
  for (let i = 0; i < records; i++) record(i);
  const recordNs = cpuNs(c1) / records;

  // The same on one busy label set, the first 2xx chat one (as the Rust side picks).
  const k = w.http.findIndex((s) => s.route === '/v1/chat/completions' && s.status_family === '2xx');
  const busy = sets[k];
  const v = w.http[k].observations[0];
  const c2 = process.cpuUsage();
  for (let i = 0; i < records; i++) {
    m.requests.inc(busy);
    m.latency.observe(busy, v);
    m.summary.observe(busy, v);
  }
  const recordOneNs = cpuNs(c2) / records;

  process.stdout.write(JSON.stringify({
    prom_client: require('prom-client/package.json').version,
    node: process.version,
    series: samples(text),
    render_ns: Math.round(renderNs),
    record_ns: Math.round(recordNs * 10) / 10,
    record_one_ns: Math.round(recordOneNs * 10) / 10,
  }) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
