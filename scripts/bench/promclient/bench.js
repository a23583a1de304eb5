// The prom-client 15.1.3 side of scripts/bench/metrics-vs-promclient.sh: the same
// families, label sets and observations as benches/metrics.rs (the families the proxy
// declares at start from the Rust side's first render, given as the first argument), then
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

// The families the Rust registry declares at start beyond the workload's (model work,
// connections, ...), with the same label sets, buckets and values, read from the Rust
// side's first render (benches/metrics.rs writes it): both sides then render the same
// families and series, and a family added on the Rust side needs no change here.
function declareLike(register, rustText) {
  const types = new Map();
  const series = new Map();
  for (const line of rustText.split('\n')) {
    const t = line.match(/^# TYPE (\S+) (\S+)$/);
    if (t) { types.set(t[1], t[2]); series.set(t[1], []); continue; }
    if (!line || line.startsWith('#')) continue;
    const s = line.match(/^([^{ ]+)(?:\{(.*)\})? (\S+)$/);
    if (!s) throw new Error(`unparsed line: ${line}`);
    const labels = {};
    for (const pair of (s[2] || '').match(/[^,=]+="(?:[^"\\]|\\.)*"/g) || []) {
      const at = pair.indexOf('=');
      labels[pair.slice(0, at)] = pair.slice(at + 2, -1);
    }
    const family = [...series.keys()].pop();
    series.get(family).push({ name: s[1], labels, value: Number(s[3]) });
  }
  for (const [name, type] of types) {
    if (name.startsWith('process_') || register.getSingleMetric(name)) continue;
    const rows = series.get(name);
    const help = 'Declared at start.';
    // A labelled family with no series yet: a label name that nothing fills, so that
    // prom-client renders no sample either (as the Rust side does).
    const labelNames = rows.length === 0 ? ['label'] : Object.keys(rows[0].labels).filter((l) => l !== 'le');
    if (type === 'counter' || type === 'gauge') {
      const m = type === 'counter'
        ? new client.Counter({ name, help, labelNames, registers: [register] })
        : new client.Gauge({ name, help, labelNames, registers: [register] });
      for (const r of rows) type === 'counter' ? m.inc(r.labels, r.value) : m.set(r.labels, r.value);
    } else if (type === 'histogram') {
      const buckets = [...new Set(rows.filter((r) => r.labels.le && r.labels.le !== '+Inf').map((r) => Number(r.labels.le)))]
        .sort((a, b) => a - b);
      const h = new client.Histogram({ name, help, labelNames, buckets, registers: [register] });
      if (rows.some((r) => r.value !== 0)) throw new Error(`${name}: only empty histograms are declared at start`);
      const sets = new Map();
      for (const r of rows) {
        const { le, ...rest } = r.labels;
        sets.set(JSON.stringify(rest), rest);
      }
      for (const l of sets.values()) if (labelNames.length) h.zero(l);
    } else {
      throw new Error(`${name}: a ${type} declared at start is not mirrored yet`);
    }
  }
}

function samples(text) {
  return text.split('\n').filter((l) => l && !l.startsWith('#')).length;
}

async function main() {
  const w = build();
  const { register, m } = registry();
  fill(m, w);
  if (process.argv[2]) declareLike(register, require('fs').readFileSync(process.argv[2], 'utf8'));

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
