'use strict';
// pusher-js against the bundled ipe inside a network namespace: connect, subscribe, get an
// event triggered with the official Node server SDK. Prints one line per step; exit 0 on
// success, 1 on failure or after 15 s. Usage: node offline_client.js PORT KEY SECRET APP_ID
const Pusher = require('pusher-js');
const PusherServer = require('pusher');

const [port, key, secret, appId] = process.argv.slice(2);
const fail = (why) => { console.log(`fail: ${why}`); process.exit(1); };
setTimeout(() => fail('timed out'), 15000).unref();

const client = new Pusher(key, {
  wsHost: '127.0.0.1', wsPort: Number(port), forceTLS: false,
  enabledTransports: ['ws'], cluster: '',
});
const server = new PusherServer({ appId, key, secret, host: '127.0.0.1', port, useTLS: false });
client.connection.bind('connected', () => console.log(`connected ${client.connection.socket_id}`));
client.connection.bind('error', (error) => fail(`connection error ${JSON.stringify(error)}`));
const channel = client.subscribe('orders');
channel.bind('pusher:subscription_succeeded', () => {
  console.log('subscribed');
  server.trigger('orders', 'order', { id: 7 }).catch((error) => fail(`trigger: ${error}`));
});
channel.bind('order', (data) => {
  if (data.id !== 7) fail(`unexpected ${JSON.stringify(data)}`);
  console.log('received');
  client.disconnect();
  process.exit(0);
});
