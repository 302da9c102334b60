'use strict';
// terminate_connections closes a signed-in pusher-js client and it does not reconnect (4009
// is a "refused" close for pusher-js), while a client of another user stays connected.
// Alice is terminated through the Node SDK, carol through the Python SDK (driver step).

module.exports = async (t) => {
  const sdk = t.sdk();
  const name = t.channel('lobby');
  const users = {};
  for (const who of ['alice', 'bob', 'carol']) {
    const client = await t.client({ name: who, user: { id: t.user(who) } });
    await t.signin(client);
    users[who] = { client, lobby: await t.subscribe(client, name) };
  }
  const watch = (client) => ({
    errors: t.record(client.connection, 'error'),
    down: t.record(client.connection, 'state_change', (c) => c.previous === 'connected'),
  });

  const alice = watch(users.alice.client);
  await sdk.terminateUserConnections(t.user('alice'));
  t.observe('alice_left_connected_for', (await alice.down.next()).current);
  t.observe('alice_errors', users.alice.client.errors);
  t.observe('alice_reconnect', t.reconnectPlan(users.alice.client));

  const carol = watch(users.carol.client);
  await t.step('terminate', { user_id: t.user('carol') });
  t.observe('carol_left_connected_for', (await carol.down.next()).current);
  t.observe('carol_errors', users.carol.client.errors);
  t.observe('carol_reconnect', t.reconnectPlan(users.carol.client));

  // Bob was never touched: a later event reaches him on the same connection.
  const news = t.record(users.bob.lobby, 'news');
  await sdk.trigger(name, 'news', { n: 1 });
  t.observe('bob_news', await news.next());
  t.observe('bob_states', users.bob.client.states);
  await t.until(
    async () => (await t.channelInfo(name)).subscription_count === 1,
    'ipe to drop the terminated sockets from the lobby',
  );
  // Nothing scheduled a reconnect in the meantime either.
  t.observe('terminated_states', {
    alice: users.alice.client.states,
    carol: users.carol.client.states,
  });
};
