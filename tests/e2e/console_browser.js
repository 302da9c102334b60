'use strict';
// The debug console in a real headless Chromium (Debian's `chromium`, driven by puppeteer-core),
// against running ipe processes; pusher-js and the Node server SDK play the app.
//
// Configured by environment variables (set by tests/e2e/test_console_browser.py):
//   CONSOLE_URLS   ipe base URLs, comma-separated (the browser uses the first)
//   CONSOLE_USER / CONSOLE_PASSWORD, APP_ID / APP_KEY / APP_SECRET, CHROMIUM (its path)
//   CONSOLE_MODE   "single" (the whole walk), "cluster" (events of two nodes in one log) or
//                  "apps" (add an app on the Manage apps page, use it, disable it; driver redis)
//   SCREENSHOTS    a directory for the console's screenshots (optional)
// Prints {"observe": name, "value": v} lines, then {"result": "pass"|"fail", ...} last.

const fs = require('fs');
const os = require('os');
const path = require('path');
const puppeteer = require('puppeteer-core');
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const env = process.env;
const urls = env.CONSOLE_URLS.split(',');
const WAIT = 8000; // ms: bound of every wait but the one the issue times
const observations = {};

function observe(name, value) {
  observations[name] = value;
  process.stdout.write(JSON.stringify({ observe: name, value }) + '\n');
}

function sdkFor(url) {
  const u = new URL(url);
  return new PusherServer({
    appId: env.APP_ID, key: env.APP_KEY, secret: env.APP_SECRET,
    host: u.hostname, port: u.port, useTLS: false,
  });
}

function client(url, authSdk, key) {
  const u = new URL(url);
  return new Pusher(key || env.APP_KEY, {
    cluster: '', wsHost: u.hostname, wsPort: Number(u.port), forceTLS: false,
    enabledTransports: ['ws'], disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const member = { user_id: 'ada', user_info: { name: 'Ada Lovelace' } };
        callback(null, authSdk.authorizeChannel(socketId, channelName, member));
      },
    },
  });
}

function connected(pusher) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('pusher-js did not connect')), WAIT);
    pusher.connection.bind('connected', () => { clearTimeout(timer); resolve(); });
  });
}

function next(channel, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} on ${channel.name}`)), WAIT);
    channel.bind(event, (data) => { clearTimeout(timer); resolve(data); });
  });
}

function subscribed(channel) {
  return next(channel, 'pusher:subscription_succeeded');
}

async function logIn(page, base) {
  await page.goto(base + '/console/');
  observe('redirected_to_login', new URL(page.url()).pathname);
  await page.type('#username', env.CONSOLE_USER);
  await page.type('#password', env.CONSOLE_PASSWORD);
  await Promise.all([page.waitForNavigation(), page.click('#login')]);
  observe('after_login', new URL(page.url()).pathname);
}

async function logRows(page) {
  return page.$$eval('#log tbody tr',
    (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent)));
}

async function logRow(page, want, timeout) {
  // `want`: {kind, channel, details (a prefix)}; polled from here, every 25 ms.
  const matches = (cells) => cells[2] === want.kind &&
    (want.channel === undefined || cells[3] === want.channel) &&
    (want.details === undefined || cells[4].startsWith(want.details));
  const deadline = Date.now() + (timeout || WAIT);
  for (;;) {
    const rows = await logRows(page);
    if (rows.some(matches)) return;
    if (Date.now() > deadline) {
      throw new Error(`no log row ${JSON.stringify(want)}; rows:\n` +
        rows.map((cells) => cells.join(' | ')).join('\n'));
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function single(page, base) {
  const sdk = sdkFor(base);
  await logIn(page, base);
  await page.waitForFunction(
    () => /^\d+$/.test(document.querySelector('#total-connections').textContent),
    { timeout: WAIT });
  const before = Number(await page.$eval('#total-connections', (e) => e.textContent));
  observe('connections_before', before);
  const alice = client(base, sdk);
  await connected(alice);
  await page.waitForFunction(
    (n) => Number(document.querySelector('#total-connections').textContent) === n,
    { timeout: WAIT }, before + 1);
  observe('connections_after', Number(await page.$eval('#total-connections', (e) => e.textContent)));
  if (env.SCREENSHOTS) {
    // Some traffic for the chart: a few seconds of triggers to a subscribed channel.
    const ticker = alice.subscribe('ticker');
    await subscribed(ticker);
    const until = Date.now() + 12000;
    for (let i = 0; Date.now() < until; i++) {
      await sdk.trigger('ticker', 'tick', { i });
      await new Promise((resolve) => setTimeout(resolve, 20 + 30 * Math.sin(i / 15) ** 2));
    }
    await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length === 3,
      { timeout: WAIT });
    await page.screenshot({ path: path.join(env.SCREENSHOTS, 'console-overview.png') });
  }

  // The live log: an SDK trigger appears within a second.
  await page.goto(base + '/console/apps/' + env.APP_ID);
  await page.waitForFunction(() => document.querySelector('#stream-state').textContent === 'live',
    { timeout: WAIT });
  const bob = client(base, sdk);
  await connected(bob);
  await logRow(page, { kind: 'connected' });
  const news = alice.subscribe('console-news');
  await subscribed(news);
  await logRow(page, { kind: 'subscribed', channel: 'console-news' });
  const started = Date.now();
  await sdk.trigger('console-news', 'sdk-event', { from: 'the node SDK' });
  await logRow(page, { kind: 'api_message', details: 'sdk-event' }, 1000);
  observe('sdk_event_in_log_ms', Date.now() - started);

  // The send form publishes like REST: pusher-js receives it.
  const received = next(news, 'from-console');
  await page.evaluate(() => { document.querySelector('#send-data').value = ''; });
  await page.type('#send-channel', 'console-news');
  await page.type('#send-event', 'from-console');
  await page.type('#send-data', '{"hello": "browser"}');
  await page.click('#send');
  observe('pusher_js_received', await received);
  await page.waitForFunction(() => document.querySelector('#send-result').textContent === 'sent',
    { timeout: WAIT });

  // Presence: the member and its user_info on the channels page.
  const room = alice.subscribe('presence-console-room');
  await subscribed(room);
  await logRow(page, { kind: 'member_added', channel: 'presence-console-room' });
  bob.disconnect();
  await logRow(page, { kind: 'disconnected' });
  if (env.SCREENSHOTS) {
    await page.screenshot({ path: path.join(env.SCREENSHOTS, 'console-live-log.png') });
  }
  await page.goto(base + '/console/apps/' + env.APP_ID + '/channels');
  await page.waitForSelector('#channels tr[data-channel="presence-console-room"] a',
    { timeout: WAIT });
  await page.click('#channels tr[data-channel="presence-console-room"] a');
  await page.waitForSelector('#members tbody tr', { timeout: WAIT });
  observe('members', await page.$$eval('#members tbody tr',
    (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))));

  // The whole page never shows the secret.
  const html = await page.content();
  observe('secret_in_page', html.includes(env.APP_SECRET));

  // Log out: the pages and the data refuse us.
  await Promise.all([page.waitForNavigation(), page.click('#logout')]);
  observe('after_logout', new URL(page.url()).pathname);
  await page.goto(base + '/console/');
  observe('page_after_logout', new URL(page.url()).pathname);
  observe('data_after_logout', await page.evaluate(
    async () => (await fetch('/console/api/overview')).status));
  alice.disconnect();
}

async function cluster(page) {
  const [a, b] = urls;
  await logIn(page, a);
  await page.goto(a + '/console/apps/' + env.APP_ID);
  await page.waitForFunction(() => document.querySelector('#stream-state').textContent === 'live',
    { timeout: WAIT });
  // The lease reaches the other node within a moment; until then it records nothing. A
  // trigger through each node until both show up.
  const kinds = (kind) => page.$$eval('#log tbody tr', (rows, k) => [...new Set(rows
    .filter((r) => r.cells[2].textContent === k).map((r) => r.cells[1].textContent))].sort(), kind);
  const t = Date.now();
  let nodes = [];
  while (Date.now() - t < WAIT) {
    await sdkFor(b).trigger('cluster-news', 'via-b', { n: 1 });
    await sdkFor(a).trigger('cluster-news', 'via-a', { n: 1 });
    nodes = await kinds('api_message');
    if (nodes.length >= 2) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  observe('api_message_nodes', nodes);
  // Both nodes record now: one client on each.
  const onA = client(a, sdkFor(a));
  const onB = client(b, sdkFor(b));
  await Promise.all([connected(onA), connected(onB)]);
  const deadline = Date.now() + WAIT;
  let connectedNodes = [];
  while (Date.now() < deadline) {
    connectedNodes = await kinds('connected');
    if (connectedNodes.length >= 2) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  observe('connected_nodes', connectedNodes);
  await page.goto(a + '/console/');
  await page.waitForFunction(() => document.querySelectorAll('#nodes tbody tr:not(.muted)').length >= 2,
    { timeout: WAIT });
  observe('overview_nodes', await page.$$eval('#nodes tbody tr',
    (rows) => rows.map((r) => r.cells[0].textContent).sort()));
  // Each node's numbers are a couple of seconds old at most: wait for both clients.
  await page.waitForFunction(() => document.querySelector('#total-connections').textContent === '2',
    { timeout: WAIT }).catch(() => {});
  observe('overview_connections', Number(await page.$eval('#total-connections', (e) => e.textContent)));
  onA.disconnect();
  onB.disconnect();
}

async function apps(page, base) {
  // Add an app by hand on the Manage apps page; its secret is shown once.
  await logIn(page, base);
  await Promise.all([page.waitForNavigation(), page.click('#nav-apps')]);
  await page.type('#add-app-id', '4242');
  await page.type('#add-name', 'Added in a browser');
  await page.type('#add-key', 'browser-key');
  await Promise.all([page.waitForNavigation(), page.click('#add')]);
  const secret = (await page.$eval('#new-secret', (e) => e.textContent)).trim();
  observe('secret_length', secret.length);
  if (env.SCREENSHOTS) {
    await page.screenshot({ path: path.join(env.SCREENSHOTS, 'console-new-app.png') });
  }
  // pusher-js connects with its key; the Node SDK signs with the shown secret.
  const u = new URL(base);
  const sdk = new PusherServer({
    appId: '4242', key: 'browser-key', secret, host: u.hostname, port: u.port, useTLS: false,
  });
  const shopper = client(base, sdk, 'browser-key');
  await connected(shopper);
  const orders = shopper.subscribe('orders');
  await subscribed(orders);
  const received = next(orders, 'placed');
  await sdk.trigger('orders', 'placed', { n: 1 });
  observe('pusher_js_received', await received);
  // The settings page shows the last four characters only; Disable closes the socket (4003).
  await Promise.all([page.waitForNavigation(), page.click('#continue')]);
  observe('secret_hints', await page.$eval('#secret-hints', (e) => e.textContent));
  observe('secret_in_page', (await page.content()).includes(secret));
  if (env.SCREENSHOTS) {
    await page.screenshot({ path: path.join(env.SCREENSHOTS, 'console-app-settings.png'),
      fullPage: true });
  }
  const closed = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('pusher-js was not closed')), WAIT);
    shopper.connection.bind('error', (e) => {
      if (e && e.data && e.data.code) { clearTimeout(timer); resolve(e.data.code); }
    });
  });
  await Promise.all([page.waitForNavigation(), page.click('#disable')]);
  observe('close_code', await closed);
  observe('state_after_disable', await page.$eval('#app-state', (e) => e.textContent));
  shopper.disconnect();
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ipe-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: env.CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    if (env.CONSOLE_MODE === 'cluster') await cluster(page);
    else if (env.CONSOLE_MODE === 'apps') await apps(page, urls[0]);
    else await single(page, urls[0]);
    observe('page_errors', errors.filter((e) => !e.includes('401')));
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => { process.stdout.write(JSON.stringify({ result: 'pass' }) + '\n'); process.exit(0); },
  (e) => {
    process.stdout.write(JSON.stringify({ result: 'fail', reason: String(e && e.stack || e) }) + '\n');
    process.exit(1);
  },
);
