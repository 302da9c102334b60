'use strict';
// Laravel Echo (pusher broadcaster) on a presence channel as a Laravel app uses it: integer
// user ids in channel_data, .here() / .joining() / .leaving(), and whispers (client events)
// through .whisper() / .listenForWhisper().

module.exports = async (t) => {
  const auth = await t.auth();
  const join = async (name, user, room) => {
    const echo = await t.echo(name, {
      authEndpoint: auth.channelEndpoint,
      auth: { headers: {}, params: { user: JSON.stringify(user) } },
    });
    const seen = {};
    for (const what of ['here', 'joining', 'leaving']) seen[what] = t.recorder(`${name} .${what}()`);
    seen.whispers = t.recorder(`${name} .listenForWhisper('typing')`);
    const channel = echo
      .join(room)
      .here(seen.here.handler)
      .joining(seen.joining.handler)
      .leaving(seen.leaving.handler)
      .listenForWhisper('typing', seen.whispers.handler);
    return { echo, channel, seen };
  };
  const room = t.channel('room'); // Echo's join() adds the presence- prefix

  const taylor = await join('taylor', { id: 1, user_info: { name: 'Taylor' } }, room);
  t.observe('taylor_here', await taylor.seen.here.next());
  const jess = await join('jess', { id: 2, user_info: { name: 'Jess' } }, room);
  t.observe('jess_here', await jess.seen.here.next());
  t.observe('taylor_sees_joining', await taylor.seen.joining.next());

  jess.channel.whisper('typing', { typing: true });
  const whisper = await taylor.seen.whispers.nextItem();
  t.observe('whisper', whisper.data);
  t.observe('whisper_metadata', whisper.metadata);

  jess.echo.leave(room);
  t.observe('taylor_sees_leaving', await taylor.seen.leaving.next());
  t.observe('jess_whispers_heard', jess.seen.whispers.count);
};
