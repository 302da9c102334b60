'use strict';
// pusher-js with its default transports, behind a proxy that refuses the WebSocket upgrade
// (PROXY_PORT): it falls back to HTTP by itself, subscribes, and receives a REST trigger.

module.exports = async (t) => {
  const port = Number(process.env.PROXY_PORT);
  const client = await t.client({
    name: 'behind-proxy',
    pusher: {
      wsHost: t.host,
      wsPort: port,
      httpHost: t.host,
      httpPort: port,
      enabledTransports: undefined, // pusher-js's own choice: ws first, then HTTP
    },
  });
  t.observe('transport', client.connection.connection.transport.name);
  const channel = await t.subscribe(client, t.channel('behind'));
  const news = t.record(channel, 'news');
  await t.step('trigger', { channel: channel.name });
  t.observe('news', await news.next());
};
