'use strict';
// Handshake refusals as pusher-js sees them: an unknown app key gets 4001 and a disabled app
// 4003; pusher-js reports the code and stops (4001-4099 is "refused": no reconnect).

module.exports = async (t) => {
  for (const [name, key] of [['unknown', 'no-such-key'], ['disabled', 'off-key']]) {
    const client = await t.client({ name, key, connect: false });
    const errors = t.record(client.connection, 'error');
    const stopped = t.record(client.connection, 'state_change', (c) => c.current !== 'connecting');
    t.observe(`${name}_error`, await errors.next());
    t.observe(`${name}_stopped_in`, (await stopped.next()).current);
    t.observe(`${name}_reconnect`, t.reconnectPlan(client));
    t.observe(`${name}_states`, client.states);
  }
};
