'use strict';
// Fan-out over pusher-js's HTTP fallback (xhr_streaming) or over WebSockets, against a running
// ipe: N subscribers on one channel, REST publishes at a fixed rate with the send time in the
// payload, end-to-end latency percentiles, deliveries/s, and the server's CPU per delivery from
// /proc/PID/stat. scripts/bench_xhr runs it (both transports, fresh ipe each run); by hand:
//
//   node scripts/bench_xhr.js --port 6101 --pid PID --transport xhr_streaming \
//       --conns 1000 --rate 100 --duration 10 [--json out.json]
//   node scripts/bench_xhr.js summarize DIR     (a markdown table of DIR/*.json, medians)
//
// The xhr_streaming subscriber speaks exactly what pusher-js 8's HTTP socket does
// (src/core/http/http_socket.ts, http_request.ts, http_streaming_socket.ts): POST
// {httpPath}/app/{key}/{server}/{session}/xhr_streaming?protocol=7&... with an empty body,
// newline-separated frames back (o, a[...], h, c[code,reason]), sends as POST .../xhr_send of a
// JSON array of message strings, an empty send ("[]") for every heartbeat, and a new stream
// request for the same session once 256 KB have been read (pusher-js's buffer_too_long).
// Needs the `ws` package: tests/e2e/node_modules has it (puppeteer-core depends on it), and the
// wrapper points NODE_PATH there.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { performance, monitorEventLoopDelay } = require('perf_hooks');

const MAX_BUFFER_LENGTH = 256 * 1024; // pusher-js's HTTPRequest recycles a stream past this
const CHANNEL = 'bench-fanout';
const MARK = /~pb\|(\d+)\|(\d+(?:\.\d+)?)\|/g;
// Keep-alive sockets idle this long are dropped by us first: ipe closes them after its
// http_keepalive_timeout (5 s), and a request sent on one just as it closes would fail.
const IDLE_SOCKET_MS = 4000;

function options(argv) {
  const o = {
    host: '127.0.0.1', port: 6101, appId: 'bench-app', key: 'bench-key', secret: 'bench-secret',
    transport: 'xhr_streaming', conns: 1000, rate: 100, duration: 10, payload: 100,
    concurrency: 50, pid: 0, json: '', label: '', drain: 10, httpPath: '/pusher',
  };
  const names = {
    '--host': 'host', '--port': 'port', '--app-id': 'appId', '--key': 'key',
    '--secret': 'secret', '--transport': 'transport', '--conns': 'conns', '--rate': 'rate',
    '--duration': 'duration', '--payload': 'payload', '--concurrency': 'concurrency',
    '--pid': 'pid', '--json': 'json', '--label': 'label', '--drain': 'drain',
    '--http-path': 'httpPath',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name) throw new Error(`unknown option ${argv[i]}`);
    o[name] = typeof o[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!['ws', 'xhr_streaming'].includes(o.transport)) throw new Error('--transport ws|xhr_streaming');
  return o;
}

// --- measurements -------------------------------------------------------------------------

class Stats {
  constructor(expected) {
    this.latencies = new Float64Array(Math.max(1, expected));
    this.count = 0;
    this.perSeq = new Uint32Array(1 << 20);
    this.last = 0;
  }

  /** Every delivery marked in `text` (one message, or a line of several). */
  record(text) {
    const now = performance.now();
    MARK.lastIndex = 0;
    let m;
    while ((m = MARK.exec(text)) !== null) {
      this.perSeq[Number(m[1])] += 1;
      if (this.count < this.latencies.length) this.latencies[this.count] = now - Number(m[2]);
      this.count += 1;
      this.last = now;
    }
  }

  percentiles() {
    const sorted = this.latencies.slice(0, Math.min(this.count, this.latencies.length)).sort();
    const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: sorted[sorted.length - 1] || null };
  }
}

function procCpu(pid) {
  // utime + stime (fields 14 and 15), in clock ticks (100 a second on Linux).
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function procRss(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : null;
}

function machineCpu() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + (f[4] || 0);
  return { busy: f.reduce((a, b) => a + b, 0) - idle, total: f.reduce((a, b) => a + b, 0) };
}

// --- subscribers ----------------------------------------------------------------------------

const subscribeMessage = JSON.stringify({ event: 'pusher:subscribe', data: { auth: '', channel: CHANNEL } });
const pongMessage = JSON.stringify({ event: 'pusher:pong', data: {} });
const QUERY = '?protocol=7&client=js&version=8.6.0&flash=false';

let unique = 1;
function uniqueUrl(url) {
  return `${url}${url.includes('?') ? '&' : '?'}t=${Date.now()}&n=${unique++}`;
}

function randomString(length) {
  let s = '';
  for (let i = 0; i < length; i++) s += Math.floor(Math.random() * 32).toString(32);
  return s;
}

/** One pusher-js xhr_streaming session. `onReady` once subscribed; deliveries go to `stats`. */
class XhrSubscriber {
  constructor(o, stats, sendAgent, counters) {
    this.o = o;
    this.stats = stats;
    this.sendAgent = sendAgent;
    this.counters = counters;
    this.base = `${o.httpPath}/app/${o.key}/${Math.floor(Math.random() * 1000)}/${randomString(8)}`;
    this.open = false;
    this.closed = false;
  }

  start() {
    return new Promise((resolve, reject) => {
      this.onReady = resolve;
      this.onFail = reject;
      this.openStream();
    });
  }

  openStream() {
    this.buffer = '';
    this.total = 0;
    const req = http.request({
      host: this.o.host, port: this.o.port, method: 'POST', agent: false,
      path: uniqueUrl(`${this.base}/xhr_streaming${QUERY}`),
      headers: { 'Content-Type': 'application/json', 'Content-Length': 0 },
    });
    this.req = req;
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        this.fail(`xhr_streaming answered ${res.statusCode}`);
        res.resume();
        return;
      }
      res.setEncoding('utf8');
      res.on('data', (chunk) => this.onData(chunk));
      res.on('end', () => {
        if (this.req === req && !this.closed) {
          // pusher-js: a stream that ends ends the session (it reconnects with a new one).
          this.counters.streamsEnded += 1;
          this.fail('the stream ended');
        }
      });
    });
    req.on('error', (e) => { if (this.req === req && !this.closed) this.fail(String(e)); });
    req.end();
  }

  onData(chunk) {
    this.total += chunk.length;
    this.buffer += chunk;
    let eol;
    while ((eol = this.buffer.indexOf('\n')) !== -1) {
      const line = this.buffer.slice(0, eol);
      this.buffer = this.buffer.slice(eol + 1);
      this.onLine(line);
    }
    if (this.buffer.length === 0 && this.total > MAX_BUFFER_LENGTH && !this.closed) {
      // pusher-js's buffer_too_long: abort this request and open a new one for the session.
      this.counters.recycles += 1;
      const old = this.req;
      this.req = null;
      old.destroy();
      this.openStream();
    }
  }

  onLine(line) {
    switch (line[0]) {
      case 'o':
        if (this.open) this.fail('Server lost session');
        this.open = true;
        break;
      case 'a':
        if (this.ready) {
          this.stats.record(line);
          if (line.includes('pusher:ping')) this.send(`[${JSON.stringify(pongMessage)}]`);
        } else {
          for (const text of JSON.parse(line.slice(1))) this.onMessage(JSON.parse(text));
        }
        break;
      case 'h':
        this.send('[]');
        break;
      case 'c':
        this.fail(`closed: ${line.slice(1)}`);
        break;
      default:
    }
  }

  onMessage(message) {
    if (message.event === 'pusher:connection_established') {
      this.send(`[${JSON.stringify(subscribeMessage)}]`);
    } else if (message.event === 'pusher_internal:subscription_succeeded') {
      this.ready = true;
      this.onReady();
    } else if (message.event === 'pusher:error') {
      this.fail(`pusher:error ${JSON.stringify(message.data)}`);
    }
  }

  send(body) {
    const req = http.request({
      host: this.o.host, port: this.o.port, method: 'POST', agent: this.sendAgent,
      path: uniqueUrl(`${this.base}/xhr_send${QUERY}`),
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    });
    req.on('response', (res) => {
      if (res.statusCode >= 300) this.counters.sendErrors += 1;
      res.resume();
    });
    req.on('error', () => { this.counters.sendErrors += 1; });
    req.end(body);
  }

  fail(reason) {
    if (this.closed) return;
    this.closed = true;
    this.counters.failures.push(reason);
    if (this.req) this.req.destroy();
    if (!this.ready) this.onFail(new Error(reason));
  }

  close() {
    this.closed = true;
    if (this.req) this.req.destroy();
  }
}

/** One WebSocket subscriber (the `ws` package), as pusher-js's ws transport. */
class WsSubscriber {
  constructor(o, stats, counters) {
    this.o = o;
    this.stats = stats;
    this.counters = counters;
  }

  start() {
    const WebSocket = require('ws');
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${this.o.host}:${this.o.port}/app/${this.o.key}${QUERY}`,
        { perMessageDeflate: false });
      this.ws = ws;
      ws.on('message', (data) => {
        const text = data.toString();
        if (this.ready) {
          this.stats.record(text);
          if (text.includes('pusher:ping')) ws.send(pongMessage);
          return;
        }
        const message = JSON.parse(text);
        if (message.event === 'pusher:connection_established') ws.send(subscribeMessage);
        else if (message.event === 'pusher_internal:subscription_succeeded') {
          this.ready = true;
          resolve();
        } else if (message.event === 'pusher:error') reject(new Error(text));
      });
      ws.on('error', (e) => { this.counters.failures.push(String(e)); reject(e); });
      ws.on('close', (code) => { if (!this.closing) this.counters.failures.push(`closed ${code}`); });
    });
  }

  close() {
    this.closing = true;
    this.ws.terminate();
  }
}

// --- publisher --------------------------------------------------------------------------------

function signedPath(o, pathName, body) {
  const params = {
    auth_key: o.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    body_md5: crypto.createHash('md5').update(body).digest('hex'),
  };
  const qs = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
  const signature = crypto.createHmac('sha256', o.secret).update(`POST\n${pathName}\n${qs}`).digest('hex');
  return `${pathName}?${qs}&auth_signature=${signature}`;
}

function payloadFor(seq, size) {
  const head = `~pb|${seq}|${performance.now().toFixed(3)}|`;
  return head + 'x'.repeat(Math.max(0, size - head.length));
}

async function publish(o, counters) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16, timeout: IDLE_SOCKET_MS });
  const pathName = `/apps/${o.appId}/events`;
  const total = Math.round(o.rate * o.duration);
  const start = performance.now();
  const pending = [];
  for (let seq = 0; seq < total; seq++) {
    const due = start + (seq * 1000) / o.rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const body = JSON.stringify({ name: 'bench', channels: [CHANNEL], data: payloadFor(seq, o.payload) });
    pending.push(new Promise((resolve) => {
      const req = http.request({
        host: o.host, port: o.port, method: 'POST', agent, path: signedPath(o, pathName, body),
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
      });
      const failed = (reason) => {
        counters.failedSeqs.add(seq);
        if (counters.publishErrors.length < 5) counters.publishErrors.push(reason);
      };
      req.on('response', (res) => {
        if (res.statusCode !== 200) failed(`HTTP ${res.statusCode}`);
        res.resume();
        res.on('end', resolve);
      });
      req.on('error', (e) => { failed(String(e)); resolve(); });
      req.end(body);
    }));
  }
  await Promise.all(pending);
  agent.destroy();
  return { start, end: performance.now(), events: total };
}

// --- a run ----------------------------------------------------------------------------------

async function run(o) {
  const expectedEvents = Math.round(o.rate * o.duration);
  const stats = new Stats(expectedEvents * o.conns);
  const counters = {
    failures: [], recycles: 0, streamsEnded: 0, sendErrors: 0, publishErrors: [], failedSeqs: new Set(),
  };
  const sendAgent = new http.Agent({ keepAlive: true, maxSockets: 64, timeout: IDLE_SOCKET_MS });
  const subscribers = [];
  const connectStart = performance.now();
  const rssBefore = o.pid ? procRss(o.pid) : null;
  // Open them `concurrency` at a time, as a page load storm would.
  let next = 0;
  let failedToConnect = 0;
  async function worker() {
    while (next < o.conns) {
      next += 1;
      const s = o.transport === 'ws' ? new WsSubscriber(o, stats, counters)
        : new XhrSubscriber(o, stats, sendAgent, counters);
      subscribers.push(s);
      try {
        await withTimeout(s.start(), 15000, 'subscribe');
      } catch (e) {
        failedToConnect += 1;
      }
    }
  }
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  const connectSeconds = (performance.now() - connectStart) / 1000;
  const ready = o.conns - failedToConnect;
  const rssReady = o.pid ? procRss(o.pid) : null;

  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const cpu0 = o.pid ? procCpu(o.pid) : 0;
  const cli0 = process.cpuUsage();
  const box0 = machineCpu();
  const t0 = performance.now();
  const published = await publish(o, counters);
  // Drain: until every ready subscriber has every event ipe accepted, or --drain seconds.
  const want = (published.events - counters.failedSeqs.size) * ready;
  const drainUntil = performance.now() + o.drain * 1000;
  while (stats.count < want && performance.now() < drainUntil) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const t1 = Math.max(published.end, stats.last);
  // CPU up to now (the drain's tail is idle polling at most, counted in fairness to neither).
  const cpu1 = o.pid ? procCpu(o.pid) : 0;
  const cli1 = process.cpuUsage(cli0);
  const box1 = machineCpu();
  loop.disable();
  const seconds = (performance.now() - t0) / 1000;
  let lost = 0;
  let duplicates = 0;
  for (let seq = 0; seq < published.events; seq++) {
    if (counters.failedSeqs.has(seq)) continue; // refused or not answered: nothing to deliver
    const got = stats.perSeq[seq];
    if (got < ready) lost += ready - got;
    else if (got > ready) duplicates += got - ready;
  }
  const serverCpuSeconds = cpu1 - cpu0;
  const result = {
    label: o.label || `${o.transport}-${o.conns}-${o.rate}ps`,
    transport: o.transport,
    conns: o.conns, ready, rate: o.rate, duration: o.duration, payload: o.payload,
    connect_seconds: round(connectSeconds, 2),
    events: published.events,
    deliveries: stats.count, expected: want, lost, duplicates,
    deliveries_per_s: round(stats.count / ((t1 - published.start) / 1000), 0),
    latency_ms: mapValues(stats.percentiles(), (v) => round(v, 2)),
    server_cpu_pct: o.pid ? round((serverCpuSeconds / seconds) * 100, 1) : null,
    server_cpu_us_per_delivery: o.pid && stats.count ? round((serverCpuSeconds / stats.count) * 1e6, 2) : null,
    server_rss_mb: o.pid ? { before: mb(rssBefore), ready: mb(rssReady), after: mb(procRss(o.pid)) } : null,
    client_cpu_pct: round(((cli1.user + cli1.system) / 1e6 / seconds) * 100, 1),
    box_cpu_pct: round(((box1.busy - box0.busy) / (box1.total - box0.total)) * 100 * require('os').cpus().length, 1),
    event_loop_lag_p99_ms: round(loop.percentile(99) / 1e6, 1),
    stream_recycles: counters.recycles,
    streams_ended: counters.streamsEnded,
    send_errors: counters.sendErrors,
    events_failed: counters.failedSeqs.size,
    publish_errors: counters.publishErrors,
    failures: counters.failures.slice(0, 5),
    failure_count: counters.failures.length,
  };
  for (const s of subscribers) s.close();
  sendAgent.destroy();
  return result;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

function round(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function mb(bytes) {
  return bytes === null ? null : round(bytes / 1048576, 1);
}

function mapValues(object, fn) {
  return Object.fromEntries(Object.entries(object).map(([k, v]) => [k, fn(v)]));
}

// --- summary ----------------------------------------------------------------------------------

function median(values) {
  const v = values.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  if (!v.length) return null;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

function summarize(dir) {
  const byLabel = new Map();
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const r = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
    if (!byLabel.has(r.label)) byLabel.set(r.label, []);
    byLabel.get(r.label).push(r);
  }
  const rows = [
    ['runs', (rs) => rs.length],
    ['subscribers ready', (rs) => median(rs.map((r) => r.ready))],
    ['deliveries/s', (rs) => median(rs.map((r) => r.deliveries_per_s))],
    ['events not accepted by ipe', (rs) => median(rs.map((r) => r.events_failed))],
    ['lost / duplicate deliveries', (rs) => `${median(rs.map((r) => r.lost))} / ${median(rs.map((r) => r.duplicates))}`],
    ['latency p50 (ms)', (rs) => median(rs.map((r) => r.latency_ms.p50))],
    ['latency p90 (ms)', (rs) => median(rs.map((r) => r.latency_ms.p90))],
    ['latency p99 (ms)', (rs) => median(rs.map((r) => r.latency_ms.p99))],
    ['latency max (ms)', (rs) => median(rs.map((r) => r.latency_ms.max))],
    ['server CPU % (100 = one core)', (rs) => median(rs.map((r) => r.server_cpu_pct))],
    ['server CPU per delivery (µs)', (rs) => median(rs.map((r) => r.server_cpu_us_per_delivery))],
    ['server RSS with subscribers (MB)', (rs) => median(rs.map((r) => r.server_rss_mb && r.server_rss_mb.ready))],
    ['client CPU % / box CPU %', (rs) => `${median(rs.map((r) => r.client_cpu_pct))} / ${median(rs.map((r) => r.box_cpu_pct))}`],
    ['stream recycles (256 KB) / streams ended by the server', (rs) => `${median(rs.map((r) => r.stream_recycles))} / ${median(rs.map((r) => r.streams_ended))}`],
  ];
  const labels = [...byLabel.keys()];
  const lines = [`| median of the runs | ${labels.join(' | ')} |`, `| --- |${labels.map(() => ' --- |').join('')}`];
  for (const [name, fn] of rows) {
    lines.push(`| ${name} | ${labels.map((l) => fn(byLabel.get(l))).join(' | ')} |`);
  }
  return lines.join('\n');
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === 'summarize') {
    process.stdout.write(summarize(argv[1]) + '\n');
    return;
  }
  const o = options(argv);
  const result = await run(o);
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(JSON.stringify(result) + '\n');
  const ok = result.ready === o.conns && result.lost === 0 && result.failure_count === 0 &&
    result.events_failed === 0;
  process.exit(ok ? 0 : 2);
}

main().catch((e) => {
  process.stderr.write(`bench_xhr: ${e.stack || e}\n`);
  process.exit(1);
});
