'use strict';
// Ten config reloads (driver step: rewrite the file, SIGHUP): a pusher-js client of an
// unchanged app keeps its socket through all of them (no close, no reconnect) and still
// receives events after each; a client of an app the last reload disabled is closed with 4003.

module.exports = async (t) => {
  const client = await t.client({ name: 'steady' });
  const socketId = client.connection.socket_id;
  const channel = await t.subscribe(client, t.channel('steady'));
  const ticks = t.record(channel, 'tick');
  for (let i = 0; i < 10; i += 1) {
    await t.step('reload', { round: i });
    await t.sdk().trigger(channel.name, 'tick', { round: i });
    t.observe(`tick_${i}`, (await ticks.next()).round);
  }
  t.observe('states', client.states);
  t.observe('same_socket', client.connection.socket_id === socketId);

  const other = await t.client({ name: 'other', key: 'other-key' });
  const errors = t.record(other.connection, 'error');
  await t.step('disable_other', {});
  const error = await errors.next();
  t.observe('other_error', error.data ? error.data.code : error);
  await t.state(other, 'disconnected');
  t.observe('other_plan', t.reconnectPlan(other));
};
