#!/usr/bin/env node
/**
 * The churn driver of scripts/soak (run it through that script, which starts the server and
 * sets NODE_PATH so that `ws` comes from $PUSHERBENCH_HOME/node_modules).
 *
 * One Node process keeps about --conns WebSockets open to one app. Each connection subscribes
 * to a mix of channels (two public, maybe a private-, a presence- with a user id shared by
 * several connections or not, a cache-) and some sign in with a watchlist. Every second it
 * closes --churn random connections (a clean close, a dropped TCP connection without a close
 * frame, a reset, or a "ghost" that stops reading and is left to the server's activity check)
 * and opens replacements; some connections also unsubscribe from one channel and subscribe to
 * another. Connections send client events on their private/presence channels, and a signed
 * REST publisher sends --rate events/s to random channels. Meanwhile the server's RSS and CPU
 * (the PID and all its descendants: gunicorn master + workers) are sampled from /proc.
 *
 * Loss is checked exactly, without timing margins:
 *  - REST events carry a per-channel sequence. The publisher keeps at most one request per
 *    channel in flight, so every receiver sees a channel's events in sequence order. A
 *    connection must receive every event whose request was sent after it saw
 *    subscription_succeeded (signin_success for #server-to-user-), without gaps; at the end the
 *    connections still subscribed must have received up to the last event.
 *  - Client events carry (sender, per-sender sequence): a receiver must receive every event
 *    its sender sent after the receiver saw subscription_succeeded, in order.
 * Events whose delivery window overlaps an unsubscribe or a close are not judged.
 * At the end the server's view (channels, subscription counts, presence users, connections)
 * must equal the client's.
 *
 * Output: soak.json (parameters, machine, samples, totals, checks) and soak.md in --out; the
 * Markdown table also goes to stdout. Exit: 0 pass, 2 drift >= --max-drift %, loss,
 * duplicates, errors or state mismatch, 1 fatal error, 3 aborted.
 */
'use strict';

const http = require('http');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { monitorEventLoopDelay } = require('perf_hooks');

let WebSocket;
try {
  WebSocket = require('ws');
} catch (_) {
  console.error('soak.js: cannot load `ws`; run it through scripts/soak (NODE_PATH=$PUSHERBENCH_HOME/node_modules)');
  process.exit(1);
}

const OPTIONS = [
  ['port', 'num', 0, 'server port on 127.0.0.1 (required)'],
  ['app-id', 'str', 'bench-app', 'app id'],
  ['key', 'str', 'bench-key', 'app key'],
  ['secret', 'str', 'bench-secret', 'app secret'],
  ['minutes', 'num', 30, 'minutes of churn and publishing'],
  ['conns', 'num', 2000, 'WebSocket connections kept open'],
  ['churn', 'num', 50, 'connections closed and replaced per second'],
  ['rate', 'num', 50, 'REST events per second, to random channels'],
  ['client-rate', 'num', 20, 'client events per second, on random private/presence channels'],
  ['sample', 'num', 5, 'seconds between RSS samples'],
  ['max-drift', 'num', 5, 'fail when RSS drift after warm-up reaches this many %'],
  ['ghost-hold', 'num', 90, 'seconds a ghost (stopped reading) is kept before we check the server dropped it'],
  ['pid', 'str', '', 'server PID (its descendants are counted too)'],
  ['redis-pid', 'str', '', 'redis-server PID (its RSS is reported beside, not in the drift)'],
  ['server-log', 'str', '', 'server log: Tracebacks in it count as errors'],
  ['server', 'str', 'ipe', 'description of the server, for the report'],
  ['out', 'str', '.', 'directory for soak.json and soak.md'],
  ['seed', 'num', 0, 'random seed (0: from the clock; the seed used is reported)'],
];

function usage() {
  const lines = OPTIONS.map(([n, , d, h]) => `  --${n.padEnd(12)} ${h}${d !== '' && d !== 0 ? ` (default ${d})` : ''}`);
  return `usage: node scripts/soak.js --port P [options]\n${lines.join('\n')}`;
}

function parseArgs(argv) {
  const o = {};
  for (const [n, , d] of OPTIONS) o[n] = d;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') { console.log(usage()); process.exit(0); }
    const spec = OPTIONS.find(([n]) => a === `--${n}`);
    if (!spec || i + 1 >= argv.length) throw new Error(`bad argument ${a}\n${usage()}`);
    const v = argv[++i];
    if (spec[1] === 'num') {
      if (!/^\d+(\.\d+)?$/.test(v)) throw new Error(`--${spec[0]} needs a number, got ${v}`);
      o[spec[0]] = Number(v);
    } else o[spec[0]] = v;
  }
  if (!o.port) throw new Error(`--port is required\n${usage()}`);
  if (o.conns < 10) throw new Error('--conns must be at least 10');
  if (o.minutes <= 0) throw new Error('--minutes must be positive');
  return o;
}

// --- small utilities ------------------------------------------------------------------------

const nowMs = () => Date.now();
const round = (x, d = 1) => (x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const hmacHex = (secret, s) => crypto.createHmac('sha256', secret).update(s).digest('hex');
const md5Hex = (s) => crypto.createHash('md5').update(s).digest('hex');
const mb = (kb) => round(kb / 1024, 1);

/** Small seeded PRNG (mulberry32): the same seed replays the same choices. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CLK_TCK = 100; // Linux USER_HZ; /proc/PID/stat counts in these ticks

/** CPU ticks and RSS of `pids` and all their descendants, from /proc. */
function procSample(pids) {
  const out = { ticks: 0, rssKB: 0, procs: 0 };
  if (!pids.length) return out;
  const parent = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(+d, +st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
    } catch (_) { /* exited meanwhile */ }
  }
  const all = new Set(pids.filter((p) => parent.has(p)));
  for (let grew = true; grew;) {
    grew = false;
    for (const [p, pp] of parent) if (!all.has(p) && all.has(pp)) { all.add(p); grew = true; }
  }
  for (const pid of all) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (!m) continue; // a zombie has no RSS line
      out.ticks += +f[11] + +f[12];
      out.rssKB += +m[1];
      out.procs++;
    } catch (_) { /* exited meanwhile */ }
  }
  return out;
}

function boxCpu() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { idle: f[3] + (f[4] || 0), total: f.reduce((x, y) => x + y, 0) };
}

// --- the driver -----------------------------------------------------------------------------

class Soak {
  constructor(o) {
    this.o = o;
    this.seed = o.seed || (Date.now() % 2147483647);
    this.rand = prng(this.seed);
    this.pids = o.pid ? o.pid.split(',').map(Number) : [];
    this.redisPids = o['redis-pid'] ? o['redis-pid'].split(',').map(Number) : [];
    this.durationS = o.minutes * 60;
    // Warm-up: the first 20 % of the run, at least 2 minutes, but at most half of a short run
    // (so that a few-minute check still has something after it).
    this.warmupS = Math.min(Math.max(0.2 * this.durationS, 120), this.durationS / 2);
    const n = o.conns;
    // Pools scale with --conns so that fan-out stays alike: ~100 subscribers per public
    // channel, ~5 per private, ~25 members per presence and per cache channel.
    this.pools = {
      pub: Array.from({ length: Math.max(2, Math.round(n / 50)) }, (_, i) => `soak-pub-${i}`),
      priv: Array.from({ length: Math.max(2, Math.round((n * 0.7) / 5)) }, (_, i) => `private-soak-${i}`),
      pres: Array.from({ length: Math.max(2, Math.round((n * 0.5) / 25)) }, (_, i) => `presence-soak-${i}`),
      cache: Array.from({ length: Math.max(2, Math.round((n * 0.25) / 25)) }, (_, i) => `cache-soak-${i}`),
    };
    // Fewer user ids than presence/sign-in connections: many users have several connections.
    this.users = Array.from({ length: Math.max(5, Math.round(n * 0.4)) }, (_, i) => `u${i}`);
    this.pubChannels = new Map(); // channel -> {next, busy, failed:Set|null}
    for (const ch of [...this.pools.pub, ...this.pools.priv, ...this.pools.pres, ...this.pools.cache]) this.pubState(ch);
    for (const u of this.users) this.pubState(`#server-to-user-${u}`);

    this.nextId = 1;
    this.clock = 0; // logical clock: orders subscriptions and client-event sends
    this.live = []; // connecting + open connections we mean to keep (swap-remove by .slot)
    this.byId = new Map(); // every connection not yet closed (live, closing, ghosts)
    this.senders = new Map(); // id -> client-event log, kept 60 s after the sender closed
    this.connecting = 0;
    this.running = false;

    this.count = {
      opened: 0, established: 0, close_clean: 0, close_drop: 0, close_reset: 0,
      ghosts: 0, ghosts_checked: 0, ghosts_reaped: 0, resubscribes: 0, subscriptions: 0, signins: 0,
      events_sent: 0, events_acked: 0, client_events_sent: 0,
      deliveries: 0, deliveries_checked: 0, deliveries_before_subscription: 0, deliveries_after_unsubscribe: 0,
      client_deliveries: 0, client_deliveries_checked: 0,
      member_events: 0, watchlist_events: 0, cache_hits: 0, cache_misses: 0, pings_answered: 0,
      lost: 0, duplicates: 0, publisher_busy: 0,
    };
    this.errors = {};
    this.samples = [];
    this.restLat = [];
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 16 });
    this.inflight = 0;
    this.loop = monitorEventLoopDelay({ resolution: 10 });
    this.loop.enable();
  }

  pubState(ch) {
    let s = this.pubChannels.get(ch);
    if (!s) { s = { next: 1, busy: false, failed: null }; this.pubChannels.set(ch, s); }
    return s;
  }

  error(reason, n = 1) { this.errors[reason] = (this.errors[reason] || 0) + n; }
  pick(arr) { return arr[Math.floor(this.rand() * arr.length)]; }
  log(msg) { process.stderr.write(`[soak] ${msg}\n`); }
  elapsed() { return (nowMs() - this.t0) / 1000; }

  // --- connections --------------------------------------------------------------------------

  openOne() {
    const r = this.rand;
    const c = new Conn(this, this.nextId++);
    const two = [...this.pools.pub].sort(() => r() - 0.5).slice(0, 2);
    c.plan = two.map((ch) => ({ ch }));
    if (r() < 0.7) c.plan.push({ ch: this.pick(this.pools.priv) });
    if (r() < 0.5) c.plan.push({ ch: this.pick(this.pools.pres), user: this.pick(this.users) });
    if (r() < 0.25) c.plan.push({ ch: this.pick(this.pools.cache) });
    if (r() < 0.3) {
      c.signinUser = this.pick(this.users);
      c.watchlist = [this.pick(this.users), this.pick(this.users), this.pick(this.users)];
    }
    c.slot = this.live.length;
    this.live.push(c);
    this.byId.set(c.id, c);
    this.connecting++;
    this.count.opened++;
    c.open();
  }

  /** Take `c` out of the live set (it is closing, a ghost, or gone). */
  unlive(c) {
    if (c.slot < 0) return;
    const last = this.live.pop();
    if (last !== c) { this.live[c.slot] = last; last.slot = c.slot; }
    c.slot = -1;
  }

  forget(c) {
    this.unlive(c);
    this.byId.delete(c.id);
    const s = this.senders.get(c.id);
    if (s) s.closedAt = nowMs();
  }

  /** Keep the live set at --conns, with a bounded number of handshakes in flight. */
  fill() {
    while (this.running && this.live.length < this.o.conns && this.connecting < 100) this.openOne();
  }

  /** Close `n` random open connections: half cleanly, the rest dropped, reset or left as ghosts. */
  churnTick(n) {
    for (let i = 0; i < n; i++) {
      const open = this.live.length;
      if (!open) return;
      const c = this.live[Math.floor(this.rand() * open)];
      if (c.state !== 'open') continue; // still connecting: leave it
      const x = this.rand();
      if (x < 0.5) c.closeClean();
      else if (x < 0.9) c.drop(false);
      else if (x < 0.98) c.drop(true);
      else c.ghost();
    }
  }

  /** Some connections leave one channel and join another of the same kind. */
  resubTick(n) {
    for (let i = 0; i < n; i++) {
      if (!this.live.length) return;
      const c = this.pick(this.live);
      if (c.state === 'open') c.resubscribe();
    }
  }

  clientEventTick(n) {
    for (let i = 0; i < n; i++) {
      for (let tries = 0; tries < 5 && this.live.length; tries++) {
        const c = this.pick(this.live);
        if (c.state === 'open' && c.sendClientEvent()) break;
      }
    }
  }

  // --- REST -----------------------------------------------------------------------------------

  signedPath(method, p, body, extra = {}) {
    const params = { auth_key: this.o.key, auth_timestamp: String(Math.floor(nowMs() / 1000)), auth_version: '1.0', ...extra };
    if (body) params.body_md5 = md5Hex(body);
    const qs = Object.keys(params).sort().map((k) => `${k}=${params[k]}`).join('&');
    return `${p}?${qs}&auth_signature=${hmacHex(this.o.secret, `${method}\n${p}\n${qs}`)}`;
  }

  /** One HTTP request with a 10 s deadline; resolves {status, body} or {error}. */
  request(method, p, body) {
    return new Promise((resolve) => {
      const headers = body ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } : {};
      const req = http.request({ host: '127.0.0.1', port: this.o.port, method, path: p, agent: this.agent, headers }, (res) => {
        const chunks = [];
        res.on('data', (d) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
        res.on('error', (e) => resolve({ error: `response_${e.code || e.message}` }));
      });
      req.setTimeout(10000, () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ error: e.code || e.message }));
      req.end(body);
    });
  }

  async getJson(p, extra) {
    const r = await this.request('GET', this.signedPath('GET', p, '', extra));
    if (r.error || r.status !== 200) throw new Error(`GET ${p}: ${r.error || `${r.status} ${r.body.slice(0, 200)}`}`);
    return JSON.parse(r.body);
  }

  /** Publish one event to a random channel that has no request in flight. */
  publishOne() {
    const r = this.rand();
    let ch = null;
    for (let tries = 0; tries < 8 && ch === null; tries++) {
      const pool = r < 0.4 ? this.pools.pub : r < 0.55 ? this.pools.priv : r < 0.75 ? this.pools.pres : r < 0.9 ? this.pools.cache : null;
      const cand = pool ? this.pick(pool) : `#server-to-user-${this.pick(this.users)}`;
      if (!this.pubState(cand).busy) ch = cand;
    }
    if (ch === null) { this.count.publisher_busy++; return; }
    const st = this.pubState(ch);
    const seq = st.next++;
    st.busy = true;
    const body = JSON.stringify({ name: 'soak', channel: ch, data: `~sk|${seq}|${'x'.repeat(80)}` });
    const t = nowMs();
    this.inflight++;
    this.count.events_sent++;
    this.request('POST', this.signedPath('POST', `/apps/${this.o['app-id']}/events`, body), body).then((res) => {
      this.inflight--;
      st.busy = false;
      if (this.restLat.length < 200000) this.restLat.push(nowMs() - t);
      if (!res.error && res.status >= 200 && res.status < 300) { this.count.events_acked++; return; }
      (st.failed || (st.failed = new Set())).add(seq);
      this.error(res.error ? `rest_${res.error}` : `rest_status_${res.status}`);
    });
  }

  // --- delivery checks ------------------------------------------------------------------------

  /** A REST event (`soak`) arrived on `c`. */
  onRestEvent(c, ch, data) {
    this.count.deliveries++;
    const seq = parseInt(typeof data === 'string' ? data.slice(4) : '', 10);
    const pub = this.pubChannels.get(ch);
    if (!pub || !(seq > 0) || seq >= pub.next) { this.error('unknown_event'); return; }
    const sub = c.subs.get(ch);
    if (!sub) {
      if (c.left.has(ch)) this.count.deliveries_after_unsubscribe++;
      else this.error('event_on_unsubscribed_channel');
      return;
    }
    if (sub.state === 'ok' && sub.cacheOpen) {
      sub.cacheOpen = false;
      if (seq < sub.expectFrom) this.count.cache_hits++;
    }
    if (sub.state !== 'ok' || seq < sub.expectFrom) { this.count.deliveries_before_subscription++; return; }
    this.count.deliveries_checked++;
    if (seq === sub.last + 1) { sub.last = seq; return; }
    if (seq <= sub.last) {
      if (pub.failed && pub.failed.has(seq)) return; // a timed-out request the server did serve
      this.count.duplicates++;
      return;
    }
    this.count.lost += this.missing(pub, sub.last + 1, seq - 1);
    sub.last = seq;
  }

  /** Sequence numbers in [from, to] that were published successfully. */
  missing(pub, from, to) {
    let n = 0;
    for (let s = from; s <= to; s++) if (!(pub.failed && pub.failed.has(s))) n++;
    return n;
  }

  /** A client event arrived on `c`. */
  onClientEvent(c, msg) {
    this.count.client_deliveries++;
    const ch = msg.channel;
    const m = /^~ce\|(\d+)\|(\d+)$/.exec(typeof msg.data === 'string' ? msg.data : '');
    if (!m) { this.error('bad_client_event'); return; }
    const sid = +m[1], k = +m[2];
    if (sid === c.id) { this.error('client_event_echoed_to_sender'); return; }
    const sub = c.subs.get(ch);
    if (!sub) {
      if (c.left.has(ch)) this.count.deliveries_after_unsubscribe++;
      else this.error('event_on_unsubscribed_channel');
      return;
    }
    const sender = this.senders.get(sid);
    if (sender && ch.startsWith('presence-') && msg.user_id !== sender.users.get(ch)) this.error('client_event_wrong_user_id');
    if (sub.state !== 'ok') { this.count.deliveries_before_subscription++; return; }
    const last = sub.streams.get(sid);
    if (last === undefined) {
      // First event from this sender since we subscribed: the ones it sent after that,
      // before this one, are lost. Unknown sender (long gone): nothing to judge.
      const log = sender && sender.log.get(ch);
      if (log) this.count.lost += this.sentAfter(log, sub.tick, 1, k - 1);
      sub.streams.set(sid, k);
      this.count.client_deliveries_checked++;
      return;
    }
    this.count.client_deliveries_checked++;
    if (k === last + 1) sub.streams.set(sid, k);
    else if (k <= last) this.count.duplicates++;
    else { this.count.lost += k - last - 1; sub.streams.set(sid, k); }
  }

  /** How many of the sequence numbers from..to in `log` (send ticks) were sent after `tick`. */
  sentAfter(log, tick, from, to) {
    let n = 0;
    for (let k = Math.max(1, from); k <= Math.min(to, log.length); k++) if (log[k - 1] > tick) n++;
    return n;
  }

  // --- sampling -------------------------------------------------------------------------------

  sample(phase) {
    const t = this.elapsed();
    const s = procSample(this.pids);
    const rd = this.redisPids.length ? procSample(this.redisPids) : null;
    const cpu = process.cpuUsage();
    const box = boxCpu();
    const prev = this.prevSample;
    const dt = prev ? t - prev.t : 0;
    const cliUs = cpu.user + cpu.system;
    const row = {
      t: round(t, 1), phase, rss_kb: s.rssKB, procs: s.procs,
      server_cpu_pct: prev && dt > 0 ? round(((s.ticks - prev.ticks) / CLK_TCK / dt) * 100) : null,
      client_cpu_pct: prev && dt > 0 ? round(((cliUs - prev.cliUs) / 1e6 / dt) * 100) : null,
      box_cpu_pct: prev && box.total > prev.box.total
        ? round((1 - (box.idle - prev.box.idle) / (box.total - prev.box.total)) * 100 * os.cpus().length) : null,
      client_rss_kb: Math.round(process.memoryUsage().rss / 1024),
      redis_rss_kb: rd ? rd.rssKB : null,
      loop_lag_p99_ms: round(this.loop.percentile(99) / 1e6), loop_lag_max_ms: round(this.loop.max / 1e6),
      conns: this.live.length, ghosts_held: this.byId.size - this.live.length,
      opened: this.count.opened, events: this.count.events_sent, deliveries: this.count.deliveries + this.count.client_deliveries,
      lost: this.count.lost, duplicates: this.count.duplicates, errors: sumValues(this.errors),
    };
    this.loop.reset();
    this.prevSample = { t, ticks: s.ticks, cliUs, box };
    this.samples.push(row);
    if (this.pids.length && s.procs === 0) throw new Fatal(`server process ${this.pids.join(',')} is gone`);
    return row;
  }

  progress(row) {
    this.log(`${String(Math.round(row.t)).padStart(5)}s  server RSS ${mb(row.rss_kb)} MB  conns ${row.conns}  ` +
      `opened ${row.opened}  events ${row.events}  deliveries ${row.deliveries}  lost ${row.lost}  ` +
      `dup ${row.duplicates}  errors ${row.errors}  CPU server ${row.server_cpu_pct}% client ${row.client_cpu_pct}% box ${row.box_cpu_pct}%`);
  }

  // --- the run --------------------------------------------------------------------------------

  async run() {
    const o = this.o;
    this.t0 = nowMs();
    this.started = new Date().toISOString();
    this.log(`seed ${this.seed}; ${o.minutes} min, ${o.conns} conns, churn ${o.churn}/s, ${o.rate} events/s, ` +
      `${o['client-rate']} client events/s; warm-up ${Math.round(this.warmupS)} s`);
    this.sample('start');
    this.running = true;
    let churnDebt = 0, resubDebt = 0, pubDone = 0, ceDebt = 0, lastProgress = 0;
    const tick = 100; // ms
    const endAt = this.t0 + this.durationS * 1000;
    await new Promise((resolve, reject) => {
      const step = () => {
        try {
          const t = nowMs();
          if (t >= endAt) { clearInterval(timer); clearInterval(sampler); resolve(); return; }
          churnDebt += (o.churn * tick) / 1000;
          resubDebt += (o.churn / 5 * tick) / 1000;
          ceDebt += (o['client-rate'] * tick) / 1000;
          this.churnTick(Math.floor(churnDebt)); churnDebt -= Math.floor(churnDebt);
          this.resubTick(Math.floor(resubDebt)); resubDebt -= Math.floor(resubDebt);
          this.clientEventTick(Math.floor(ceDebt)); ceDebt -= Math.floor(ceDebt);
          const due = Math.floor(((t - this.t0) / 1000) * o.rate);
          while (pubDone < due && this.inflight < 64) { this.publishOne(); pubDone++; }
          if (pubDone < due - o.rate) { this.error('publisher_behind', due - o.rate - pubDone); pubDone = due - o.rate; }
          this.fill();
          this.pruneSenders();
        } catch (e) { clearInterval(timer); clearInterval(sampler); reject(e); }
      };
      const timer = setInterval(step, tick);
      const sampler = setInterval(() => {
        try {
          const row = this.sample('run');
          if (row.t - lastProgress >= 30 || this.durationS <= 300) { this.progress(row); lastProgress = row.t; }
        } catch (e) { clearInterval(timer); clearInterval(sampler); reject(e); }
      }, o.sample * 1000);
      this.fill();
    });
    if (this.elapsed() - this.samples[this.samples.length - 1].t >= 1) this.progress(this.sample('run'));
    this.runEnd = this.elapsed();
    this.running = false;
    await this.quiesce();
    const checks = await this.checkState();
    this.tailCheck();
    this.sample('quiet');
    await this.closeAll();
    await sleep(5000);
    this.sample('closed');
    return checks;
  }

  pruneSenders() {
    const cutoff = nowMs() - 60000;
    for (const [id, s] of this.senders) if (s.closedAt && s.closedAt < cutoff) this.senders.delete(id);
  }

  /** Stop everything that moves, then wait (bounded) until the server has nothing in flight. */
  async quiesce() {
    this.log('run over: settling (no churn, no publishing)');
    for (const c of [...this.byId.values()]) if (c.state === 'ghost') c.drop(false, true);
    const settle = async (what, done, seconds) => {
      const deadline = nowMs() + seconds * 1000;
      while (!done()) {
        if (nowMs() > deadline) { this.error(`settle_timeout_${what}`); return; }
        await sleep(50);
      }
    };
    await settle('rest', () => this.inflight === 0, 15);
    await settle('closes', () => [...this.byId.values()].every((c) => c.state === 'open'), 20);
    await settle('subscriptions', () => this.live.every((c) => c.pendingSubs() === 0), 20);
    // A pong on a socket comes after every frame the server wrote to it before; then a
    // moment for deliveries that travel through Redis.
    const pongs = this.live.map((c) => c.ping());
    await Promise.race([Promise.all(pongs), sleep(10000).then(() => this.error('settle_timeout_pongs'))]);
    await sleep(1000);
  }

  /** The server's view of channels, presence users and connections must equal ours. */
  async checkState() {
    const want = new Map(), users = new Map();
    for (const c of this.live) {
      for (const [ch, sub] of c.subs) {
        if (ch.startsWith('#')) continue;
        want.set(ch, (want.get(ch) || 0) + 1);
        if (sub.user !== undefined) {
          if (!users.has(ch)) users.set(ch, new Set());
          users.get(ch).add(sub.user);
        }
      }
    }
    const result = { channels_expected: want.size, subscriptions_expected: sumValues(Object.fromEntries(want)), mismatches: [] };
    const appPath = `/apps/${this.o['app-id']}`;
    let mism = [];
    // Presence state may trail by a moment through Redis: retry for a few seconds.
    const deadline = nowMs() + 10000;
    for (;;) {
      mism = [];
      try {
        const got = (await this.getJson(`${appPath}/channels`, { info: 'subscription_count' })).channels;
        for (const [ch, n] of want) if (!got[ch] || got[ch].subscription_count !== n) mism.push(`${ch}: server ${got[ch] ? got[ch].subscription_count : 0}, client ${n}`);
        for (const ch of Object.keys(got)) if (!want.has(ch)) mism.push(`${ch}: server ${got[ch].subscription_count}, client 0`);
        const pres = (await this.getJson(`${appPath}/channels`, { filter_by_prefix: 'presence-', info: 'user_count' })).channels;
        for (const [ch, set] of users) if (!pres[ch] || pres[ch].user_count !== set.size) mism.push(`${ch} users: server ${pres[ch] ? pres[ch].user_count : 0}, client ${set.size}`);
        const metrics = await this.request('GET', '/metrics');
        // ipe_connections has one series per app: the server's total is their sum.
        const ms = metrics.status === 200 ? [...metrics.body.matchAll(/^ipe_connections(?:\{[^}]*\})? ([0-9.e+]+)$/gm)] : [];
        if (ms.length) {
          result.server_connections = Math.round(ms.reduce((sum, m) => sum + +m[1], 0));
          if (result.server_connections !== this.live.length) mism.push(`connections: server ${result.server_connections}, client ${this.live.length}`);
        } else result.server_connections = null;
      } catch (e) {
        mism.push(`state query failed: ${e.message}`);
      }
      if (!mism.length || nowMs() > deadline) break;
      await sleep(1000);
    }
    result.client_connections = this.live.length;
    result.mismatches = mism.slice(0, 50);
    result.mismatch_count = mism.length;
    if (mism.length) { this.error('state_mismatch', mism.length); this.log(`state mismatch: ${mism.slice(0, 5).join('; ')}`); }
    return result;
  }

  /** Connections still subscribed at the end must have everything published after they joined. */
  tailCheck() {
    for (const c of this.live) {
      for (const [ch, sub] of c.subs) {
        if (sub.state !== 'ok') continue;
        const pub = this.pubChannels.get(ch);
        if (pub && pub.next - 1 > sub.last) this.count.lost += this.missing(pub, sub.last + 1, pub.next - 1);
      }
    }
    for (const s of this.live) {
      const info = this.senders.get(s.id);
      if (!info) continue;
      for (const [ch, log] of info.log) {
        for (const r of this.live) {
          if (r === s) continue;
          const sub = r.subs.get(ch);
          if (!sub || sub.state !== 'ok') continue;
          const last = sub.streams.get(s.id) || 0;
          this.count.lost += this.sentAfter(log, sub.tick, last + 1, log.length);
        }
      }
    }
  }

  async closeAll() {
    for (const c of [...this.byId.values()]) c.drop(false, true);
    const deadline = nowMs() + 10000;
    while (this.byId.size && nowMs() < deadline) await sleep(50);
  }

  shutdown() {
    this.loop.disable();
    this.agent.destroy();
    for (const c of [...this.byId.values()]) c.drop(false, true);
  }
}

class Fatal extends Error {}

function sumValues(obj) { return Object.values(obj).reduce((a, b) => a + b, 0); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- one client connection ------------------------------------------------------------------

class Conn {
  constructor(soak, id) {
    this.s = soak; this.id = id; this.slot = -1;
    this.ws = null; this.socketId = null; this.state = 'new';
    this.plan = []; this.signinUser = null; this.watchlist = null;
    this.subs = new Map(); // channel -> {state: 'pending'|'ok', expectFrom, last, tick, user, streams}
    this.left = new Set(); // channels we unsubscribed from (late events on them are expected)
    this.timer = null; this.pongWaiters = [];
  }

  open() {
    const o = this.s.o;
    this.state = 'connecting';
    const url = `ws://127.0.0.1:${o.port}/app/${encodeURIComponent(o.key)}?protocol=7&client=soak&version=1.0&flash=false`;
    let ws;
    try {
      ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 15000 });
    } catch (e) { this.failed(`connect_${e.message}`); return; }
    this.ws = ws;
    ws.on('message', (data) => this.onMessage(data));
    ws.on('error', (e) => { if (this.state === 'connecting') this.failed(`connect_${e.code || e.message}`); });
    ws.on('close', (code) => this.onClose(code));
    this.timer = setTimeout(() => this.failed('connect_timeout'), 15000);
  }

  failed(reason) {
    if (this.state !== 'connecting') return;
    this.s.error(reason);
    try { if (this.ws) this.ws.terminate(); } catch (_) { /* already gone */ }
    this.markClosed();
  }

  onClose(code) {
    const prev = this.state;
    if (prev === 'closed') return;
    if (prev === 'connecting') this.s.error(`connect_closed_${code}`);
    else if (prev === 'open') this.s.error(`server_closed_${code}`);
    else if (prev === 'ghost' && this.ghostChecking) {
      if (code === 4201) this.s.count.ghosts_reaped++;
      else this.s.error(`ghost_closed_${code}`);
    }
    this.markClosed();
  }

  /** The connection is over for us, whoever ended it: forget it everywhere. */
  markClosed() {
    if (this.state === 'closed') return;
    if (this.state === 'connecting') this.s.connecting--;
    this.state = 'closed';
    clearTimeout(this.timer);
    for (const w of this.pongWaiters) w();
    this.pongWaiters = [];
    this.s.forget(this);
  }

  send(obj) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj)); return true; }
    return false;
  }

  onMessage(raw) {
    // A ghost's frames piled up unread (only its close matters); after we dropped a socket,
    // ws still parses what was buffered: neither is a delivery to judge.
    if (this.state === 'ghost' || this.state === 'closed') return;
    let msg;
    try { msg = JSON.parse(raw); } catch (_) { this.s.error('bad_json'); return; }
    const s = this.s;
    const ev = msg.event;
    if (ev === 'soak') { s.onRestEvent(this, msg.channel, msg.data); return; }
    if (ev === 'client-soak') { s.onClientEvent(this, msg); return; }
    const data = typeof msg.data === 'string' && msg.data[0] === '{' ? safeJson(msg.data) : msg.data;
    switch (ev) {
      case 'pusher:connection_established':
        if (this.state !== 'connecting') { s.error('second_connection_established'); return; }
        this.socketId = data && data.socket_id;
        this.state = 'open';
        s.connecting--;
        s.count.established++;
        clearTimeout(this.timer);
        this.subscribeAll();
        return;
      case 'pusher_internal:subscription_succeeded': {
        const sub = this.subs.get(msg.channel);
        if (!sub) { s.error('unexpected_subscription_succeeded'); return; }
        if (sub.state === 'ok') return; // #server-to-user-: tracked from signin_success
        this.confirm(sub, msg.channel);
        return;
      }
      case 'pusher:signin_success': {
        const ch = `#server-to-user-${this.signinUser}`;
        const sub = this.subs.get(ch);
        if (!sub || sub.state === 'ok') { s.error('unexpected_signin_success'); return; }
        this.confirm(sub, ch);
        s.count.signins++;
        this.send({ event: 'pusher:subscribe', data: { channel: ch, auth: '' } }); // as pusher-js does
        return;
      }
      case 'pusher_internal:member_added':
      case 'pusher_internal:member_removed':
        s.count.member_events++;
        return;
      case 'pusher_internal:watchlist_events':
        s.count.watchlist_events++;
        return;
      case 'pusher:cache_miss': {
        const sub = this.subs.get(msg.channel);
        if (sub && sub.cacheOpen) sub.cacheOpen = false;
        s.count.cache_misses++;
        return;
      }
      case 'pusher:ping':
        s.count.pings_answered++;
        this.send('{"event":"pusher:pong","data":{}}');
        return;
      case 'pusher:pong': {
        const w = this.pongWaiters.shift();
        if (w) w();
        return;
      }
      case 'pusher:error':
        s.error(`pusher_error_${data && data.code}`);
        return;
      case 'pusher:subscription_error':
        s.error(`subscription_error_${data && data.type}`);
        this.subs.delete(msg.channel);
        return;
      default:
        s.error(`unexpected_event_${String(ev).slice(0, 40)}`);
    }
  }

  confirm(sub, ch) {
    const s = this.s;
    sub.state = 'ok';
    sub.tick = ++s.clock;
    sub.expectFrom = s.pubState(ch).next;
    sub.last = sub.expectFrom - 1;
    s.count.subscriptions++;
    sub.cacheOpen = ch.startsWith('cache-'); // its first frame is the cached event or cache_miss
  }

  subscribeAll() {
    const s = this.s, o = s.o;
    if (this.signinUser !== null) {
      const userData = JSON.stringify({ id: this.signinUser, user_info: { conn: this.id }, watchlist: this.watchlist });
      const auth = `${o.key}:${hmacHex(o.secret, `${this.socketId}::user::${userData}`)}`;
      this.subs.set(`#server-to-user-${this.signinUser}`, newSub());
      this.send({ event: 'pusher:signin', data: { user_data: userData, auth } });
    }
    for (const p of this.plan) this.subscribe(p.ch, p.user);
    this.timer = setTimeout(() => { if (this.pendingSubs()) s.error('subscribe_timeout', this.pendingSubs()); }, 15000);
  }

  subscribe(ch, user) {
    const o = this.s.o;
    const data = { channel: ch };
    const sub = newSub();
    if (ch.startsWith('presence-')) {
      const cd = JSON.stringify({ user_id: user, user_info: { conn: this.id } });
      data.auth = `${o.key}:${hmacHex(o.secret, `${this.socketId}:${ch}:${cd}`)}`;
      data.channel_data = cd;
      sub.user = user;
    } else if (ch.startsWith('private-')) {
      data.auth = `${o.key}:${hmacHex(o.secret, `${this.socketId}:${ch}`)}`;
    }
    this.left.delete(ch);
    this.subs.set(ch, sub);
    this.send({ event: 'pusher:subscribe', data });
  }

  pendingSubs() {
    let n = 0;
    for (const sub of this.subs.values()) if (sub.state !== 'ok') n++;
    return n;
  }

  resubscribe() {
    const s = this.s;
    const chans = [...this.subs.keys()].filter((ch) => !ch.startsWith('#') && this.subs.get(ch).state === 'ok');
    if (!chans.length) return;
    const ch = s.pick(chans);
    const pool = ch.startsWith('private-') ? s.pools.priv : ch.startsWith('presence-') ? s.pools.pres
      : ch.startsWith('cache-') ? s.pools.cache : s.pools.pub;
    const next = s.pick(pool);
    if (this.subs.has(next)) return;
    const user = this.subs.get(ch).user;
    this.subs.delete(ch);
    this.left.add(ch);
    this.send({ event: 'pusher:unsubscribe', data: { channel: ch } });
    this.subscribe(next, user);
    s.count.resubscribes++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { if (this.pendingSubs()) s.error('subscribe_timeout', this.pendingSubs()); }, 15000);
  }

  sendClientEvent() {
    const s = this.s;
    const chans = [];
    for (const [ch, sub] of this.subs) if (sub.state === 'ok' && (ch.startsWith('private-') || ch.startsWith('presence-'))) chans.push(ch);
    if (!chans.length) return false;
    const ch = s.pick(chans);
    let info = s.senders.get(this.id);
    if (!info) { info = { log: new Map(), users: new Map(), closedAt: 0 }; s.senders.set(this.id, info); }
    let log = info.log.get(ch);
    if (!log) { log = []; info.log.set(ch, log); }
    if (this.subs.get(ch).user !== undefined) info.users.set(ch, this.subs.get(ch).user);
    log.push(++s.clock);
    s.count.client_events_sent++;
    return this.send(`{"event":"client-soak","channel":${JSON.stringify(ch)},"data":"~ce|${this.id}|${log.length}"}`);
  }

  /** Resolves when the server answered a pusher:ping sent now (or the socket closed). */
  ping() {
    return new Promise((resolve) => {
      this.pongWaiters.push(resolve);
      if (!this.send('{"event":"pusher:ping","data":{}}')) resolve();
    });
  }

  closeClean() {
    const s = this.s;
    s.count.close_clean++;
    this.state = 'closing';
    s.unlive(this);
    clearTimeout(this.timer);
    // Bounded: a close the server never completes is an error, and the socket is dropped.
    this.timer = setTimeout(() => { s.error('close_timeout'); this.drop(false, true); }, 10000);
    try { this.ws.close(1000); } catch (_) { this.drop(false, true); }
  }

  /** Drop the TCP connection without a close frame: FIN, or RST with `reset`. */
  drop(reset, quiet = false) {
    if (this.state === 'closed') return;
    if (!quiet) this.s.count[reset ? 'close_reset' : 'close_drop']++;
    try {
      const sock = this.ws && this.ws._socket;
      if (reset && sock && typeof sock.resetAndDestroy === 'function') sock.resetAndDestroy();
      else if (this.ws) this.ws.terminate();
    } catch (_) { /* already gone */ }
    this.markClosed();
  }

  /** Stop reading, as a client that vanished without closing: the server must drop it by
   * itself (activity ping, then 4201). After --ghost-hold we read again and expect that close. */
  ghost() {
    const s = this.s;
    s.count.ghosts++;
    this.state = 'ghost';
    s.unlive(this);
    clearTimeout(this.timer);
    this.ws.pause();
    this.timer = setTimeout(() => {
      this.ghostChecking = true;
      s.count.ghosts_checked++;
      this.ws.resume();
      this.timer = setTimeout(() => {
        if (this.state === 'ghost') { s.error('ghost_not_dropped_by_server'); this.drop(false, true); }
      }, 5000);
    }, s.o['ghost-hold'] * 1000);
  }
}

function newSub() { return { state: 'pending', expectFrom: 0, last: 0, tick: 0, user: undefined, streams: new Map() }; }
function safeJson(s) { try { return JSON.parse(s); } catch (_) { return null; } }

// --- report ---------------------------------------------------------------------------------

function analyse(soak) {
  const run = soak.samples.filter((x) => x.phase === 'run' || x.phase === 'start');
  const w = soak.warmupS;
  const atWarm = run.find((x) => x.t >= w);
  const after = run.filter((x) => x.t > w);
  const r = { warmup_s: round(w, 0), samples_after_warmup: after.length };
  if (atWarm && after.length) {
    const rss = after.map((x) => x.rss_kb);
    r.rss_at_warmup_kb = atWarm.rss_kb;
    r.rss_min_kb = Math.min(...rss);
    r.rss_max_kb = Math.max(...rss);
    r.rss_last_kb = rss[rss.length - 1];
    r.drift_pct = round(((r.rss_max_kb - atWarm.rss_kb) / atWarm.rss_kb) * 100, 2);
    // Least-squares slope after warm-up: a steady leak shows here even under the limit.
    const n = after.length, mt = after.reduce((a, x) => a + x.t, 0) / n, mr = rss.reduce((a, b) => a + b, 0) / n;
    let num = 0, den = 0;
    after.forEach((x, i) => { num += (x.t - mt) * (rss[i] - mr); den += (x.t - mt) ** 2; });
    r.slope_kb_per_min = den > 0 ? round((num / den) * 60, 1) : null;
  } else r.drift_pct = null;
  r.rss_start_kb = run.length ? run[0].rss_kb : null;
  const closed = soak.samples.filter((x) => x.phase === 'closed');
  r.rss_after_close_kb = closed.length ? closed[closed.length - 1].rss_kb : null;
  const avg = (k) => { const v = run.map((x) => x[k]).filter((x) => x !== null); return v.length ? round(v.reduce((a, b) => a + b, 0) / v.length) : null; };
  const max = (k) => { const v = run.map((x) => x[k]).filter((x) => x !== null); return v.length ? round(Math.max(...v)) : null; };
  r.server_cpu_avg_pct = avg('server_cpu_pct'); r.server_cpu_max_pct = max('server_cpu_pct');
  r.client_cpu_avg_pct = avg('client_cpu_pct'); r.client_cpu_max_pct = max('client_cpu_pct');
  r.box_cpu_avg_pct = avg('box_cpu_pct');
  r.loop_lag_max_ms = max('loop_lag_max_ms');
  const redis = run.filter((x) => x.redis_rss_kb !== null);
  if (redis.length) { r.redis_rss_first_kb = redis[0].redis_rss_kb; r.redis_rss_last_kb = redis[redis.length - 1].redis_rss_kb; }
  const lat = soak.restLat.slice().sort((a, b) => a - b);
  r.rest_latency_ms = lat.length ? { p50: lat[Math.floor(lat.length * 0.5)], p99: lat[Math.floor(lat.length * 0.99)], max: lat[lat.length - 1] } : null;
  return r;
}

function serverLogProblems(file) {
  if (!file) return null;
  try {
    const text = fs.readFileSync(file, 'utf8');
    return { tracebacks: (text.match(/^Traceback /gm) || []).length, error_lines: (text.match(/ (ERROR|CRITICAL) /g) || []).length };
  } catch (e) { return { unreadable: e.message }; }
}

function report(soak, status, checks, fatal) {
  const o = soak.o, c = soak.count;
  const a = analyse(soak);
  const log = serverLogProblems(o['server-log']);
  if (log && log.tracebacks) soak.error('server_log_traceback', log.tracebacks);
  if (log && log.error_lines) soak.error('server_log_error', log.error_lines);
  const errors = sumValues(soak.errors);
  const reasons = [];
  if (fatal) reasons.push(`fatal: ${fatal}`);
  if (status === 'aborted') reasons.push('aborted');
  if (a.drift_pct === null) reasons.push('no RSS samples after warm-up');
  else if (a.drift_pct >= o['max-drift']) reasons.push(`RSS drift ${a.drift_pct} % >= ${o['max-drift']} %`);
  if (c.lost) reasons.push(`${c.lost} deliveries lost`);
  if (c.duplicates) reasons.push(`${c.duplicates} duplicates`);
  if (errors) reasons.push(`${errors} errors`);
  const pass = reasons.length === 0;
  const shortRun = soak.warmupS < Math.max(0.2 * soak.durationS, 120);
  const out = {
    tool: 'scripts/soak', status, pass, reasons, started: soak.started, finished: new Date().toISOString(),
    parameters: {
      minutes: o.minutes, conns: o.conns, churn_per_s: o.churn, rest_events_per_s: o.rate, client_events_per_s: o['client-rate'],
      sample_s: o.sample, max_drift_pct: o['max-drift'], ghost_hold_s: o['ghost-hold'], seed: soak.seed, server: o.server,
      pools: Object.fromEntries(Object.entries(soak.pools).map(([k, v]) => [k, v.length])), user_ids: soak.users.length,
    },
    machine: {
      cpus: os.cpus().length, cpu_model: os.cpus()[0] && os.cpus()[0].model, mem_gb: round(os.totalmem() / 2 ** 30, 1),
      kernel: `${os.type()} ${os.release()}`, node: process.version, ws: require('ws/package.json').version,
    },
    memory: a, totals: c, errors: soak.errors, state_check: checks, server_log: log, samples: soak.samples,
  };
  fs.writeFileSync(path.join(o.out, 'soak.json'), `${JSON.stringify(out, null, 1)}\n`);

  const rss = (kb) => (kb === null || kb === undefined ? '-' : `${mb(kb)} MB`);
  const churned = c.close_clean + c.close_drop + c.close_reset + c.ghosts;
  const rows = [
    ['result', pass ? 'PASS' : `FAIL: ${reasons.join('; ')}`],
    ['run', `${o.minutes} min, ${o.conns} connections, churn ${o.churn}/s, ${o.rate} REST events/s, ${o['client-rate']} client events/s`],
    ['server', `${o.server}, ${a.rss_start_kb !== null ? `RSS ${rss(a.rss_start_kb)} idle at start` : ''}`],
    ['warm-up end', `${a.warmup_s} s${shortRun ? ' (run under 4 min: capped at half of it, a smoke check only)' : ''}`],
    ['RSS at warm-up end', rss(a.rss_at_warmup_kb)],
    ['RSS after warm-up: min / max / last', `${rss(a.rss_min_kb)} / ${rss(a.rss_max_kb)} / ${rss(a.rss_last_kb)}`],
    ['drift (max − warm-up end) / warm-up end', a.drift_pct === null ? '-' : `${a.drift_pct} % (limit ${o['max-drift']} %)`],
    ['RSS trend after warm-up (least squares)', a.slope_kb_per_min === null || a.slope_kb_per_min === undefined ? '-' : `${round(a.slope_kb_per_min / 1024, 2)} MB/min`],
    ['RSS after all clients closed', rss(a.rss_after_close_kb)],
    ['connections opened / churned', `${c.opened} / ${churned} (clean ${c.close_clean}, dropped ${c.close_drop}, reset ${c.close_reset}, ghosts ${c.ghosts}: ${c.ghosts_reaped} of the ${c.ghosts_checked} checked after ${o['ghost-hold']} s dropped by the server with 4201)`],
    ['subscriptions confirmed / re-subscriptions / sign-ins', `${c.subscriptions} / ${c.resubscribes} / ${c.signins}`],
    ['events published (REST) / acknowledged', `${c.events_sent} / ${c.events_acked}`],
    ['client events sent', `${c.client_events_sent}`],
    ['cache channels: cached event / cache_miss on subscribe', `${c.cache_hits} / ${c.cache_misses}`],
    ['deliveries received: REST events / client events / member events / watchlist', `${c.deliveries} / ${c.client_deliveries} / ${c.member_events} / ${c.watchlist_events}`],
    ['deliveries checked for loss (REST / client)', `${c.deliveries_checked} / ${c.client_deliveries_checked}`],
    ['lost / duplicates', `${c.lost} / ${c.duplicates}`],
    ['errors', errors ? Object.entries(soak.errors).map(([k, v]) => `${k} ${v}`).join(', ') : '0'],
    ['server state at end (channels, subscriptions, presence users, connections)', checks ? (checks.mismatch_count ? `${checks.mismatch_count} mismatches` : `matches the clients (${checks.channels_expected} channels, ${checks.subscriptions_expected} subscriptions, ${checks.client_connections} connections)`) : '-'],
    ['REST latency p50 / p99 / max', a.rest_latency_ms ? `${a.rest_latency_ms.p50} / ${a.rest_latency_ms.p99} / ${a.rest_latency_ms.max} ms` : '-'],
    ['CPU avg (max): server / client; box avg (100 per core)', `${a.server_cpu_avg_pct} (${a.server_cpu_max_pct}) % / ${a.client_cpu_avg_pct} (${a.client_cpu_max_pct}) %; ${a.box_cpu_avg_pct} %`],
    ['client event-loop lag max', `${a.loop_lag_max_ms} ms`],
  ];
  if (a.redis_rss_first_kb !== undefined) rows.push(['redis-server RSS first / last (not in the drift)', `${rss(a.redis_rss_first_kb)} / ${rss(a.redis_rss_last_kb)}`]);
  const m = out.machine;
  const md = [
    `### Soak (${soak.started.slice(0, 16).replace('T', ' ')} UTC)`, '',
    '| | |', '| --- | --- |', ...rows.map(([k, v]) => `| ${k} | ${v} |`), '',
    `Machine: ${m.cpus} cores (${m.cpu_model}), ${m.mem_gb} GiB, ${m.kernel}, Node ${m.node}. Seed ${soak.seed}.`,
    `Warm-up is the first 20 % of the run (at least 2 minutes); drift = (max RSS after warm-up − RSS at warm-up end) / RSS at warm-up end; RSS is the server's, all its processes summed (gunicorn: master + workers), sampled every ${o.sample} s.`,
    '',
  ].join('\n');
  fs.writeFileSync(path.join(o.out, 'soak.md'), md);
  process.stdout.write(md);
  return pass;
}

// --- main -----------------------------------------------------------------------------------

async function main() {
  let o;
  try { o = parseArgs(process.argv.slice(2)); } catch (e) { console.error(`soak.js: ${e.message}`); process.exit(1); }
  fs.mkdirSync(o.out, { recursive: true });
  const soak = new Soak(o);
  let status = 'completed', checks = null, fatal = null, finished = false;
  const finish = (code) => { if (!finished) { finished = true; soak.shutdown(); setTimeout(() => process.exit(code), 200); } };
  const abort = (sig) => {
    if (finished) return;
    soak.log(`${sig}: stopping, writing what was measured`);
    status = 'aborted';
    report(soak, status, checks, null);
    finish(3);
  };
  process.on('SIGINT', () => abort('SIGINT'));
  process.on('SIGTERM', () => abort('SIGTERM'));
  // Hard cap: the run plus generous time to settle and report, whatever happens.
  setTimeout(() => abort('time cap'), (soak.durationS + 180) * 1000).unref();
  try {
    checks = await soak.run();
  } catch (e) {
    status = 'failed';
    fatal = e instanceof Fatal ? e.message : (e.stack || String(e));
    soak.log(`fatal: ${fatal}`);
  }
  if (finished) return;
  const pass = report(soak, status, checks, fatal);
  finish(fatal ? 1 : pass ? 0 : 2);
}

main();
