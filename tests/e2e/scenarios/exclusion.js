'use strict';
// socket_id exclusion: a REST trigger that excludes one of two subscribers reaches only the
// other. Each exclusion is followed by a trigger to both, so "not received" is decided by
// what arrives first, not by waiting.

module.exports = async (t) => {
  const a = await t.client({ name: 'a' });
  const b = await t.client({ name: 'b' });
  const name = t.channel('feed');
  const feedA = await t.subscribe(a, name);
  const feedB = await t.subscribe(b, name);
  const gotA = t.record(feedA, 'update');
  const gotB = t.record(feedB, 'update');
  const sdk = t.sdk();

  await sdk.trigger(name, 'update', { n: 1 }, { socket_id: a.connection.socket_id });
  await sdk.trigger(name, 'update', { n: 2 });
  t.observe('node_b', [await gotB.next(), await gotB.next()]);
  t.observe('node_a', await gotA.next());

  await t.step('trigger_excluding', { channel: name, socket_id: b.connection.socket_id });
  t.observe('python_a', [await gotA.next(), await gotA.next()]);
  t.observe('python_b', await gotB.next());
};
