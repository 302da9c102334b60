'use strict';
// pusher-js's browser build in a real headless Chromium (Debian's `chromium`, driven by
// puppeteer-core) with WebSockets removed from the page: pusher-js falls back to HTTP by itself
// (default transports) or uses the one given, cross-origin to ipe, and receives a public and a
// private channel's events triggered by the driver with the Python SDK.
//
// Environment (set by tests/e2e/test_http_browser.py): CHROMIUM (its path), PAGE_URL (the
// test's page server: the page, pusher-js's dist/web build, and the channel auth endpoint),
// BROWSER_TRANSPORTS (a JSON list for `enabledTransports`, or empty: pusher-js's defaults),
// BROWSER_EXPECT ("events", or "refusal": the page's origin is not allowed and ipe says so).

const fs = require('fs');
const os = require('os');
const path = require('path');
const puppeteer = require('puppeteer-core');

module.exports = async (t) => {
  const env = process.env;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ipe-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: env.CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    await run(t, env, await browser.newPage());
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
};

async function run(t, env, page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`${r.status()} ${r.url()}`); });
  // What the page asked of ipe, as Chromium's network stack saw it.
  const toIpe = `http://${t.host}:${t.port}/`;
  const kinds = new Set();
  page.on('request', (request) => {
    if (request.url().startsWith(toIpe)) kinds.add(new URL(request.url()).pathname.split('/').pop());
  });
  const cdp = await page.createCDPSession();
  await cdp.send('Network.enable');
  let websockets = 0;
  cdp.on('Network.webSocketCreated', () => { websockets += 1; });
  // As when a proxy or a policy blocks them: the page has no WebSocket API at all, so
  // pusher-js's default strategy goes straight to its HTTP fallbacks.
  await page.evaluateOnNewDocument(() => {
    window.WebSocket = undefined;
    window.MozWebSocket = undefined;
  });

  const publicName = t.channel('browser-news');
  const privateName = t.channel('private-browser');
  const query = new URLSearchParams({
    host: t.host,
    port: String(t.port),
    key: t.key,
    channels: JSON.stringify([publicName, privateName]),
    transports: env.BROWSER_TRANSPORTS || '',
  });
  await page.goto(`${env.PAGE_URL}/?${query}`);
  t.observe('websocket_api', await page.evaluate(() => typeof WebSocket));
  const wait = { timeout: t.waitMs, polling: 20 };

  if (env.BROWSER_EXPECT === 'refusal') {
    // pusher-js hears pusher:error 4009, then the close frame, and stops (as over a WebSocket).
    await page.waitForFunction(
      () => window.page.errors.length > 0 && window.page.states.includes('disconnected'), wait);
    t.observe('errors', await page.evaluate(() => window.page.errors));
    t.observe('states', await page.evaluate(() => window.page.states));
    t.observe('page_errors', errors.filter((e) => !e.includes('4009')));
    return;
  }

  await page.waitForFunction((n) => window.page.subscribed.length === n, wait, 2);
  t.observe('subscribed', await page.evaluate(() => window.page.subscribed.sort()));
  t.observe('transport', await page.evaluate(() => window.pusher.connection.connection.transport.name));
  await t.step('trigger', {
    public: publicName,
    private: privateName,
    socket_id: await page.evaluate(() => window.pusher.connection.socket_id),
  });
  await page.waitForFunction((n) => window.page.received.length === n, wait, 2);
  t.observe('received', await page.evaluate(
    () => window.page.received.sort((a, b) => a.channel.localeCompare(b.channel))));
  t.observe('states', await page.evaluate(() => window.page.states));
  t.observe('request_kinds', [...kinds].sort());
  t.observe('websockets_created', websockets);
  t.observe('page_errors', errors);
  await page.evaluate(() => window.pusher.disconnect());
}
