'use strict';
// Cache channels: pusher:cache_miss on an empty cache channel; a late subscriber gets the last
// event replayed right after subscription_succeeded.

module.exports = async (t) => {
  const sdk = t.sdk();
  const name = t.channel('cache-scores');
  const first = await t.client({ name: 'first' });
  const early = first.subscribe(name);
  const earlyAll = t.recordAll(early);
  t.observe('first_events', [(await earlyAll.next()).event, await earlyAll.next()]);

  const scores = t.record(early, 'score');
  await sdk.trigger(name, 'score', { home: 1 });
  await scores.next();
  await sdk.trigger(name, 'score', { home: 2 });
  await scores.next();

  const late = await t.client({ name: 'late' });
  const lateAll = t.recordAll(late.subscribe(name));
  t.observe('late_events', [(await lateAll.next()).event, await lateAll.next()]);
  // A later event arrives next: no cache_miss (or second replay) slipped in between.
  await sdk.trigger(name, 'score', { home: 3 });
  t.observe('late_next', await lateAll.next());
};
