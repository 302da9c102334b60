'use strict';
// The scenario context: real pusher-js clients pointed at a running ipe, an auth endpoint served
// with the official Node server SDK, bounded waits, and JSON-line observations on stdout.
//
// Wire protocol with the driver (tests/e2e/nodejs.py), one JSON object per stdout line:
//   {"observe": name, "value": v}   a fact the pytest side asserts on (names are unique)
//   {"step": name, "data": d}       the scenario waits for one JSON line on stdin (the reply)
//   {"log": text}                   context for a failure report (state changes, errors)
//   {"result": "pass"} | {"result": "fail", "reason": text}   always the last line
// Anything else on stdout (or stderr) is noise kept for the failure report.

const http = require('http');
const readline = require('readline');
// The Node build of pusher-js bundles tweetnacl, so it is the "with-encryption" build: its
// default export is PusherWithEncryption (pusher-js/with-encryption points at the *web* build,
// which needs a browser). Its auth requests go through a bundled node-XMLHttpRequest, which
// POSTs form data over node's http module: `channelAuthorization.endpoint` and
// `userAuthentication.endpoint` work as in a browser, no custom handler needed.
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

class ScenarioFailure extends Error {}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + '\n');
}

/** A queue of the events one `bind` has delivered, with bounded waits on the next one. */
class Recorder {
  constructor(context, label, filter) {
    this.context = context;
    this.label = label;
    this.filter = filter;
    this.items = [];
    this.consumed = 0;
    this.waiters = [];
  }

  push(item) {
    if (this.filter && !this.filter(item.data, item.metadata)) return;
    this.items.push(item);
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((wake) => wake());
  }

  /** Every event seen so far (data only). */
  get all() {
    return this.items.map((item) => item.data);
  }

  get count() {
    return this.items.length;
  }

  /** The next event not returned yet: `{data, metadata}`; fails after `timeout` ms. */
  nextItem(timeout) {
    const ms = timeout || this.context.waitMs;
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.consumed < this.items.length) {
          clearTimeout(timer);
          resolve(this.items[this.consumed++]);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== wake);
        reject(new ScenarioFailure(`timed out after ${ms} ms waiting for ${this.label}`));
      }, ms);
      const wake = () => {
        if (!check()) this.waiters.push(wake);
      };
      if (!check()) this.waiters.push(wake);
    });
  }

  /** The data of the next event not returned yet; fails after `timeout` ms. */
  async next(timeout) {
    return (await this.nextItem(timeout)).data;
  }
}

class Context {
  constructor(scenario, env) {
    this.scenario = scenario;
    this.host = env.IPE_HOST || '127.0.0.1';
    this.port = Number(env.IPE_PORT);
    if (!this.port) throw new ScenarioFailure('IPE_PORT is not set');
    this.appId = env.IPE_APP_ID || '1001';
    this.key = env.IPE_KEY || 'demo-key';
    this.secret = env.IPE_SECRET || 'demo-secret';
    this.masterKey = env.IPE_MASTER_KEY || 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=';
    this.waitMs = Number(env.E2E_WAIT_MS || 5000);
    // Unique per run: the pytest module shares one ipe between scenarios.
    this.runId = env.E2E_RUN_ID || Math.random().toString(36).slice(2, 8);
    this.observed = new Set();
    this.clients = [];
    this.servers = [];
    this.stdin = null;
    this.replies = null;
    this.defaultAuth = null;
    this.labels = new WeakMap(); // pusher-js objects → names for timeout messages
  }

  // --- output -----------------------------------------------------------------------------

  /** Record a fact for the pytest side. */
  observe(name, value) {
    if (this.observed.has(name)) throw new ScenarioFailure(`observation ${name} made twice`);
    this.observed.add(name);
    emit({ observe: name, value: value === undefined ? null : value });
  }

  log(text) {
    emit({ log: text });
  }

  fail(reason) {
    throw new ScenarioFailure(reason);
  }

  check(condition, reason) {
    if (!condition) throw new ScenarioFailure(reason);
  }

  /** Hand control to the pytest side (e.g. to publish with the Python SDK); returns its reply. */
  async step(name, data, timeout) {
    if (!this.replies) {
      this.replies = new Recorder(this, 'the driver\'s reply on stdin');
      this.stdin = readline.createInterface({ input: process.stdin });
      this.stdin.on('line', (line) => this.replies.push({ data: line }));
    }
    emit({ step: name, data: data === undefined ? null : data });
    return JSON.parse(await this.replies.next(timeout));
  }

  // --- names ------------------------------------------------------------------------------

  /** A name unique to this run: `channel('private-chat')` → `private-chat-<scenario>-<run>`. */
  channel(prefix) {
    return `${prefix}-${this.scenario}-${this.runId}`;
  }

  /** A user id unique to this run (online state and watchlists are app-wide). */
  user(name) {
    return `${name}-${this.runId}`;
  }

  // --- server side ------------------------------------------------------------------------

  /** The official Node server SDK pointed at ipe (options override the app's credentials). */
  sdk(options) {
    return new PusherServer({
      appId: this.appId,
      key: this.key,
      secret: this.secret,
      host: this.host,
      port: String(this.port),
      useTLS: false,
      encryptionMasterKeyBase64: this.masterKey,
      ...options,
    });
  }

  /**
   * An app backend's auth endpoints, served with the Node SDK's authorizeChannel and
   * authenticateUser on a local http server: POST /pusher/auth and POST /pusher/user-auth.
   * The signed-in identity comes from the form field `user` (a JSON user object, sent by
   * pusher-js from `params`), as a real backend would take it from its session.
   * `sdkOptions` (e.g. a wrong `secret`) configure the signing SDK; with
   * `presenceChannelData: false` presence authorizations carry no channel_data, so the member
   * is the signed-in user (docs/protocol-notes.md §3.2).
   */
  async authServer(sdkOptions, { presenceChannelData = true } = {}) {
    const signer = this.sdk(sdkOptions);
    const requests = [];
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (chunk) => (body += chunk));
      req.on('end', () => {
        const form = new URLSearchParams(body);
        const socketId = form.get('socket_id');
        const user = form.get('user') ? JSON.parse(form.get('user')) : null;
        const channel = form.get('channel_name');
        requests.push({ path: req.url, channel, user: user && user.id });
        let answer;
        try {
          if (req.url === '/pusher/user-auth') {
            if (!user) throw new Error('no user to sign in');
            answer = signer.authenticateUser(socketId, user);
          } else if (req.url === '/pusher/auth' && channel) {
            const member =
              channel.startsWith('presence-') && user && presenceChannelData
                ? { user_id: user.id, user_info: user.user_info }
                : undefined;
            answer = signer.authorizeChannel(socketId, channel, member);
          } else {
            res.writeHead(404).end();
            return;
          }
        } catch (error) {
          res.writeHead(403, { 'Content-Type': 'text/plain' }).end(String(error));
          return;
        }
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(answer));
      });
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.servers.push(server);
    const base = `http://127.0.0.1:${server.address().port}`;
    return {
      requests,
      channelEndpoint: `${base}/pusher/auth`,
      userEndpoint: `${base}/pusher/user-auth`,
    };
  }

  /** The default auth endpoints (signing with the app's own secret), started on first use. */
  async auth() {
    if (!this.defaultAuth) this.defaultAuth = this.authServer();
    return this.defaultAuth;
  }

  // --- clients ----------------------------------------------------------------------------

  /**
   * A pusher-js client connected to ipe. Options: `name` (label in logs), `user` (the identity
   * the auth endpoint signs: `{id, user_info?, watchlist?}`), `auth` (an authServer(); the
   * default one signs with the app's secret), `key`, `connect` (false: do not wait for
   * `connected`), and `pusher` (extra pusher-js options).
   */
  async client(options = {}) {
    const name = options.name || `client${this.clients.length + 1}`;
    const auth = options.auth || (await this.auth());
    const params = options.user ? { user: JSON.stringify(options.user) } : {};
    const client = new Pusher(options.key || this.key, {
      cluster: '',
      wsHost: this.host,
      wsPort: this.port,
      forceTLS: false,
      ...this.transports(),
      disableStats: true,
      channelAuthorization: { endpoint: auth.channelEndpoint, params },
      userAuthentication: { endpoint: auth.userEndpoint, params },
      ...options.pusher,
    });
    this.track(client, name);
    if (options.connect !== false) await this.state(client, 'connected');
    return client;
  }

  /**
   * Watch a pusher-js client made elsewhere (e.g. by Laravel Echo): its states and errors are
   * kept (`client.states`, `client.errors`), logged, and it is disconnected at the end.
   */
  track(client, name) {
    client.label = name;
    this.labels.set(client, name);
    this.labels.set(client.connection, `${name}.connection`);
    this.labels.set(client.user, `${name}.user`);
    this.labels.set(client.user.watchlist, `${name}.user.watchlist`);
    // The constructor already started connecting: the history starts with that state.
    client.states = [client.connection.state];
    client.errors = [];
    client.connection.bind('state_change', (change) => {
      client.states.push(change.current);
      this.log(`${name}: ${change.previous} -> ${change.current}`);
    });
    client.connection.bind('error', (error) => {
      client.errors.push(error);
      this.log(`${name}: error ${JSON.stringify(error)}`);
    });
    this.clients.push(client);
    return client;
  }

  /** Laravel Echo with the pusher broadcaster, making its own pusher-js (as the README shows). */
  async echo(name, options = {}) {
    const { default: Echo } = await import('laravel-echo');
    const echo = new Echo({
      broadcaster: 'pusher',
      Pusher,
      key: this.key,
      cluster: '',
      wsHost: this.host,
      wsPort: this.port,
      forceTLS: false,
      ...this.transports(),
      disableStats: true,
      ...options,
    });
    this.track(echo.connector.pusher, name);
    return echo;
  }

  /**
   * pusher-js's transport options: WebSocket only (without this pusher-js would also try its
   * HTTP fallbacks), or with E2E_TRANSPORTS='["xhr_streaming"]' (or xhr_polling) the HTTP
   * transports only, on the same host and port, so that any scenario runs over them.
   */
  transports() {
    const http = process.env.E2E_TRANSPORTS;
    if (!http) return { enabledTransports: ['ws'] };
    return { enabledTransports: JSON.parse(http), httpHost: this.host, httpPort: this.port };
  }

  /** Wait until the client's connection is in `state` (now or later). */
  async state(client, state, timeout) {
    if (client.connection.state === state) return;
    const changes = this.record(client.connection, 'state_change', (c) => c.current === state);
    await changes.next(timeout);
  }

  /** Record what `target.bind(event, …)` delivers (channel, connection, user, watchlist, …). */
  record(target, event, filter) {
    const label = `${this.labels.get(target) || target.name || 'target'}: ${event}`;
    const recorder = new Recorder(this, label, filter);
    target.bind(event, (data, metadata) => recorder.push({ data, metadata }));
    return recorder;
  }

  /** Record every event `target.bind_global` delivers, in order, as `{event, data}`. */
  recordAll(target) {
    const recorder = new Recorder(this, `${this.labels.get(target) || target.name}: any event`);
    target.bind_global((event, data) => recorder.push({ data: { event, data } }));
    return recorder;
  }

  /** A recorder fed by hand: pass `recorder.handler` as a callback (e.g. to Laravel Echo). */
  recorder(label, filter) {
    const recorder = new Recorder(this, label, filter);
    recorder.handler = (data, metadata) => recorder.push({ data, metadata });
    return recorder;
  }

  /** Poll `predicate` (may be async) until it is truthy; fails after `timeout` ms. */
  async until(predicate, what, timeout) {
    const ms = timeout || this.waitMs;
    const deadline = Date.now() + ms;
    for (;;) {
      const value = await predicate();
      if (value) return value;
      if (Date.now() > deadline) this.fail(`timed out after ${ms} ms waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** A channel's state through the REST API (Node SDK): `{occupied, subscription_count, …}`. */
  async channelInfo(name, info = 'subscription_count') {
    const response = await this.sdk().get({ path: `/channels/${name}`, params: { info } });
    return response.json();
  }

  /** Subscribe and wait for `pusher:subscription_succeeded`; returns the channel. */
  async subscribe(client, channelName, timeout) {
    const channel = client.subscribe(channelName);
    if (!channel.subscribed) {
      const outcome = this.recorder(`${client.label}: subscription to ${channelName}`);
      channel.bind('pusher:subscription_succeeded', (data) => outcome.push({ data: { data } }));
      channel.bind('pusher:subscription_error', (error) => outcome.push({ data: { error } }));
      const { data, error } = await outcome.next(timeout);
      if (error !== undefined) {
        this.fail(`${client.label}: subscription to ${channelName} failed: ${JSON.stringify(error)}`);
      }
      channel.succeededWith = data;
    }
    return channel;
  }

  /** `pusher.signin()` and wait until its `#server-to-user-{id}` channel is subscribed. */
  async signin(client, timeout) {
    const subscribed = this.recorder(
      `${client.label}: sign-in (its #server-to-user- channel subscribed)`,
      (m) =>
        m.event === 'pusher_internal:subscription_succeeded' &&
        typeof m.channel === 'string' &&
        m.channel.startsWith('#server-to-user-'),
    );
    client.connection.bind('message', subscribed.handler);
    client.signin();
    const message = await subscribed.next(timeout);
    this.check(client.user.user_data, `${client.label}: no user_data after sign-in`);
    return message.channel;
  }

  /** A presence channel's members as pusher-js holds them: `{count, me, members}`. */
  members(channel) {
    const members = channel.members;
    return { count: members.count, me: members.me, members: { ...members.members } };
  }

  /** Facts about the connection that show whether pusher-js will reconnect by itself. */
  reconnectPlan(client) {
    const manager = client.connection;
    return {
      state: manager.state,
      retry_scheduled: Boolean(manager.retryTimer && manager.retryTimer.isRunning()),
      connecting: Boolean(manager.runner),
    };
  }

  /** Disconnect every client and stop the auth servers (the process exits right after). */
  async cleanup() {
    for (const client of this.clients) {
      try {
        client.disconnect();
      } catch (_) {
        // already gone
      }
    }
    if (this.stdin) this.stdin.close();
    for (const server of this.servers) {
      server.closeAllConnections();
      server.close();
    }
  }
}

module.exports = { Context, Recorder, ScenarioFailure, emit, Pusher, PusherServer };
