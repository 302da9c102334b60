'use strict';
// Runs one end-to-end scenario against a running ipe:
//   IPE_PORT=8080 node tests/e2e/run.js public      (runs tests/e2e/scenarios/public.js)
// Environment: IPE_PORT (required), IPE_HOST, IPE_APP_ID, IPE_KEY, IPE_SECRET, IPE_MASTER_KEY,
// E2E_WAIT_MS (bound of every single wait, default 5000), E2E_DEADLINE_MS (whole scenario,
// default 20000), E2E_RUN_ID (suffix of channel and user names), E2E_DEBUG=1 (pusher-js logs on
// stderr). Output: JSON lines (see harness.js); exit status 0 when the scenario passed.

const fs = require('fs');
const path = require('path');
const { Context, ScenarioFailure, emit, Pusher } = require('./harness');

function reasonOf(error) {
  if (error instanceof ScenarioFailure) return error.message;
  return (error && error.stack) || String(error);
}

function finish(result) {
  emit(result);
  // pusher-js and http keep-alive timers would hold the loop open; stdout is a pipe, which
  // node writes synchronously on POSIX, so nothing is lost by exiting now.
  process.exit(result.result === 'pass' ? 0 : 1);
}

async function main() {
  const name = process.argv[2];
  const file = name && path.join(__dirname, 'scenarios', `${path.basename(name)}.js`);
  if (!file || !fs.existsSync(file)) {
    const known = fs.readdirSync(path.join(__dirname, 'scenarios')).map((f) => f.slice(0, -3));
    throw new ScenarioFailure(`usage: node run.js SCENARIO (one of: ${known.join(', ')})`);
  }
  // pusher-js logs errors through console.warn/console.error (stderr) on its own; debug logs
  // only when asked, and never on stdout, which carries the protocol.
  Pusher.log = process.env.E2E_DEBUG ? (message) => process.stderr.write(`${message}\n`) : null;
  const scenario = require(file);
  const context = new Context(name, process.env);
  const deadline = Number(process.env.E2E_DEADLINE_MS || 20000);
  let timer;
  const overdue = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new ScenarioFailure(`scenario did not finish within ${deadline} ms`)),
      deadline,
    );
  });
  try {
    await Promise.race([scenario(context), overdue]);
  } finally {
    clearTimeout(timer);
    await context.cleanup();
  }
}

process.on('unhandledRejection', (error) => finish({ result: 'fail', reason: reasonOf(error) }));
process.on('uncaughtException', (error) => finish({ result: 'fail', reason: reasonOf(error) }));
main().then(
  () => finish({ result: 'pass' }),
  (error) => finish({ result: 'fail', reason: reasonOf(error) }),
);
