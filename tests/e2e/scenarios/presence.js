'use strict';
// Presence with several clients: both sides see each other in `members`, member_added and
// member_removed fire, and one user with two tabs counts once (added on the first tab, removed
// when the last one leaves).

module.exports = async (t) => {
  const alice = { id: t.user('alice'), user_info: { name: 'Alice' } };
  const bob = { id: t.user('bob'), user_info: { name: 'Bob' } };
  const name = t.channel('presence-room');
  const sdk = t.sdk();

  const aliceTab1 = await t.client({ name: 'alice-tab1', user: alice });
  const room1 = await t.subscribe(aliceTab1, name);
  t.observe('alice_alone', t.members(room1));
  const addedToAlice = t.record(room1, 'pusher:member_added');

  const bobClient = await t.client({ name: 'bob', user: bob });
  const roomBob = await t.subscribe(bobClient, name);
  t.observe('bob_joined', t.members(roomBob));
  const addedToBob = t.record(roomBob, 'pusher:member_added');
  const removedToBob = t.record(roomBob, 'pusher:member_removed');
  t.observe('alice_sees_bob_added', await addedToAlice.next());
  t.observe('alice_after_bob', t.members(room1));

  // Alice opens a second tab: she stays one member. A REST event published after the tab
  // joined reaches bob after anything ipe sent him because of the tab.
  const aliceTab2 = await t.client({ name: 'alice-tab2', user: alice });
  const room2 = await t.subscribe(aliceTab2, name);
  t.observe('alice_tab2_joined', t.members(room2));
  const marks = t.record(roomBob, 'mark');
  await sdk.trigger(name, 'mark', { n: 1 });
  await marks.next();
  t.observe('bob_after_alice_tab2', { added: addedToBob.all, count: roomBob.members.count });

  // Alice closes one tab: still present.
  aliceTab1.disconnect();
  await t.until(
    async () => (await t.channelInfo(name)).subscription_count === 2,
    'ipe to drop alice-tab1',
  );
  await sdk.trigger(name, 'mark', { n: 2 });
  await marks.next();
  t.observe('bob_after_alice_tab1_left', {
    removed: removedToBob.all,
    count: roomBob.members.count,
  });

  // Her last tab closes: she leaves.
  aliceTab2.disconnect();
  t.observe('bob_sees_alice_removed', await removedToBob.next());
  t.observe('bob_at_end', t.members(roomBob));
};
