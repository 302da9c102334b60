'use strict';
// Quotas, allowed origins and authorized connections as pusher-js and the Node SDK see them.
// The "quota" app allows 2 connections, 2 subscriptions per connection and 3 REST events a
// second; "guarded" only pages of https://example.com (pusher-js under Node sends no Origin);
// "signed" closes sockets that have not signed in within 3 s.

module.exports = async (t) => {
  // --- max_connections: the third socket is refused with 4004 and does not retry ---------
  const first = await t.client({ name: 'first', key: 'quota-key' });
  const second = await t.client({ name: 'second', key: 'quota-key' });
  const third = await t.client({ name: 'third', key: 'quota-key', connect: false });
  const thirdErrors = t.record(third.connection, 'error');
  const thirdStopped = t.record(third.connection, 'state_change', (c) => c.current !== 'connecting');
  t.observe('over_quota_error', await thirdErrors.next());
  t.observe('over_quota_state', (await thirdStopped.next()).current);
  t.observe('over_quota_reconnect', t.reconnectPlan(third));

  // --- max_subscriptions_per_connection: the third channel is refused, the socket stays --
  await t.subscribe(first, t.channel('one'));
  await t.subscribe(first, t.channel('two'));
  const three = first.subscribe(t.channel('three'));
  const refusal = t.record(three, 'pusher:subscription_error');
  t.observe('subscription_refusal', await refusal.next());
  t.observe('after_refusal_state', first.connection.state);

  // --- max_backend_events_per_second: the Node SDK gets 429, nothing is published --------
  const channel = first.channel(t.channel('one'));
  const events = t.record(channel, 'tick');
  const sdk = t.sdk({ appId: '2001', key: 'quota-key', secret: 'quota-secret' });
  const channels = [t.channel('one'), t.channel('a'), t.channel('b'), t.channel('c')];
  try {
    await sdk.trigger(channels, 'tick', { n: 1 }); // 4 events > 3
    t.observe('rate_refusal', null);
  } catch (error) {
    t.observe('rate_refusal', { status: error.status, body: JSON.parse(error.body) });
  }
  await t.until(async () => {
    try {
      await sdk.trigger(t.channel('one'), 'tick', { n: 2 });
      return true;
    } catch (error) {
      return false;
    }
  }, 'a trigger within the rate');
  t.observe('first_tick', await events.next());

  // --- once a connection closes, a new one connects ---------------------------------------
  // The server counts the slot free once it has seen the close: until then a new socket is
  // refused (and pusher-js does not retry a 4004), so a page would open a new one.
  second.disconnect();
  let fourth;
  await t.until(async () => {
    fourth = await t.client({ name: 'fourth', key: 'quota-key', connect: false });
    const settled = t.record(fourth.connection, 'state_change', (c) => c.current !== 'connecting');
    if (fourth.connection.state === 'connecting') await settled.next();
    return fourth.connection.state === 'connected';
  }, 'a new connection once one closed');
  t.observe('fourth_state', fourth.connection.state);

  // --- allowed_origins: no Origin header while a list is set -> 4009 ----------------------
  const foreign = await t.client({ name: 'foreign', key: 'guarded-key', connect: false });
  const foreignErrors = t.record(foreign.connection, 'error');
  t.observe('origin_error', await foreignErrors.next());

  // --- authorized_connections: sign in within signin_timeout or be closed with 4009 -------
  const signer = await t.authServer({ appId: '2003', key: 'signed-key', secret: 'signed-secret' });
  const user = { id: t.user('ann') };
  const signedIn = await t.client({ name: 'signed-in', key: 'signed-key', auth: signer, user });
  const lurker = await t.client({ name: 'lurker', key: 'signed-key', auth: signer });
  const lurkerErrors = t.record(lurker.connection, 'error');
  await t.signin(signedIn);
  t.observe('signin_timeout_error', await lurkerErrors.next());
  t.observe('signed_in_state', signedIn.connection.state);
  await t.state(lurker, 'disconnected');
  t.observe('lurker_reconnect', t.reconnectPlan(lurker));
};
