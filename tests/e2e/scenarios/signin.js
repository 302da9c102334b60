'use strict';
// User sign-in and the watchlist: pusher.signin() through the user-auth endpoint (Node SDK's
// authenticateUser); the SDKs' sendToUser reaches pusher.user.bind() on every tab of the user;
// a presence authorization without channel_data makes the signed-in user the member; alice
// watches bob and sees him go online and offline on pusher.user.watchlist.

module.exports = async (t) => {
  const sdk = t.sdk();
  const aliceId = t.user('alice');
  const bobId = t.user('bob');
  const alice = { id: aliceId, user_info: { name: 'Alice' }, watchlist: [bobId] };

  const tab1 = await t.client({ name: 'alice-tab1', user: alice });
  const online = t.record(tab1.user.watchlist, 'online');
  const offline = t.record(tab1.user.watchlist, 'offline');
  const inbox1 = t.record(tab1.user, 'notice');
  t.observe('alice_channel', await t.signin(tab1));
  t.observe('alice_user_data', tab1.user.user_data);
  t.observe('watchlist_at_signin', await offline.next());

  await sdk.sendToUser(aliceId, 'notice', { text: 'hello alice' });
  t.observe('from_node', await inbox1.next());
  await t.step('send_to_user', { user_id: aliceId });
  t.observe('from_python', await inbox1.next());

  // A second tab whose backend authorizes presence without channel_data.
  const signinOnly = await t.authServer({}, { presenceChannelData: false });
  const tab2 = await t.client({ name: 'alice-tab2', user: alice, auth: signinOnly });
  const inbox2 = t.record(tab2.user, 'notice');
  await t.signin(tab2);
  const room = await t.subscribe(tab2, t.channel('presence-signed'));
  t.observe('presence_from_signin', t.members(room));
  await sdk.sendToUser(aliceId, 'notice', { text: 'both tabs' });
  t.observe('both_tabs', [await inbox1.next(), await inbox2.next()]);

  const bob = await t.client({ name: 'bob', user: { id: bobId } });
  await t.signin(bob);
  t.observe('bob_online', await online.next());
  bob.disconnect();
  t.observe('bob_offline', await offline.next());
};
