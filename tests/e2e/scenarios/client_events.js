'use strict';
// Client events between two pusher-js clients: on a private channel the other client receives
// the event and the sender does not; on a presence channel the receiver gets the sender's id as
// metadata.user_id.

module.exports = async (t) => {
  const alice = { id: t.user('alice'), user_info: { name: 'Alice' } };
  const bob = { id: t.user('bob'), user_info: { name: 'Bob' } };
  const aliceClient = await t.client({ name: 'alice', user: alice });
  const bobClient = await t.client({ name: 'bob', user: bob });

  const chat = t.channel('private-chat');
  const chatAlice = await t.subscribe(aliceClient, chat);
  const chatBob = await t.subscribe(bobClient, chat);
  const typingAlice = t.record(chatAlice, 'client-typing');
  const typingBob = t.record(chatBob, 'client-typing');
  const acksAlice = t.record(chatAlice, 'client-ack');
  t.check(chatAlice.trigger('client-typing', { on: true }), 'alice could not send client-typing');
  const received = await typingBob.nextItem();
  t.observe('private_received', received.data);
  t.observe('private_metadata', received.metadata);
  // Bob answers once he has it: an echo of alice's own event would have reached her first.
  t.check(chatBob.trigger('client-ack', { seen: true }), 'bob could not send client-ack');
  t.observe('private_ack', await acksAlice.next());
  t.observe('private_echoed_to_sender', typingAlice.count);

  const room = t.channel('presence-chat');
  const roomAlice = await t.subscribe(aliceClient, room);
  const roomBob = await t.subscribe(bobClient, room);
  const wavesBob = t.record(roomBob, 'client-wave');
  t.check(roomAlice.trigger('client-wave', { to: 'bob' }), 'alice could not send client-wave');
  const wave = await wavesBob.nextItem();
  t.observe('presence_received', wave.data);
  t.observe('presence_metadata', wave.metadata);
};
