'use strict';
// A public channel: pusher-js subscribes (pusher:subscription_succeeded fires), then REST
// triggers from the Python SDK (driver step) and the Node SDK reach its bind() with their data.

module.exports = async (t) => {
  const client = await t.client({ name: 'reader' });
  const channel = await t.subscribe(client, t.channel('news'));
  t.observe('subscribed', channel.subscribed);
  t.observe('succeeded_data', channel.succeededWith);
  const headlines = t.record(channel, 'headline');

  await t.step('trigger', { channel: channel.name });
  t.observe('from_python', await headlines.next());

  await t.sdk().trigger(channel.name, 'headline', { from: 'node', tags: ['a', 'b'] });
  t.observe('from_node', await headlines.next());
};
