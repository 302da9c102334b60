'use strict';
// Subscription counting (app 1007, `counted-key`, has `subscription_count: true`): pusher-js
// turns pusher_internal:subscription_count into pusher:subscription_count with the parsed
// data, after pusher:subscription_succeeded, and keeps the number in channel.subscriptionCount.

const KEY = 'counted-key';

module.exports = async (t) => {
  const name = t.channel('counted');
  const first = await t.client({ name: 'first', key: KEY });
  const firstChannel = first.subscribe(name);
  const firstAll = t.recordAll(firstChannel);
  const firstCounts = t.record(firstChannel, 'pusher:subscription_count');
  t.observe('first_events', [(await firstAll.next()).event, await firstAll.next()]);
  await firstCounts.next(); // the 1 just recorded in first_events

  const second = await t.client({ name: 'second', key: KEY });
  const secondChannel = second.subscribe(name);
  const secondCounts = t.record(secondChannel, 'pusher:subscription_count');
  t.observe('second_count', await secondCounts.next());
  t.observe('first_sees_second', await firstCounts.next());
  t.observe('first_subscription_count', firstChannel.subscriptionCount);

  second.unsubscribe(name);
  t.observe('first_after_second_left', await firstCounts.next());
};
