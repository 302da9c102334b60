'use strict';
// Private channels through the app's auth endpoint (signed with the Node SDK's
// authorizeChannel), and what a bad signature gives: pusher:subscription_error on the channel,
// which Laravel Echo's .error() receives.

module.exports = async (t) => {
  const sdk = t.sdk();
  const auth = await t.auth();

  // pusher-js, good signature.
  const client = await t.client({ name: 'good' });
  const orders = await t.subscribe(client, t.channel('private-orders'));
  const shipped = t.record(orders, 'order-shipped');
  await sdk.trigger(orders.name, 'order-shipped', { id: 7 });
  t.observe('private_event', await shipped.next());
  t.observe('auth_requests', auth.requests.map((r) => r.channel));

  // pusher-js, the backend signs with the wrong secret.
  const badAuth = await t.authServer({ secret: 'not-the-secret' });
  const bad = await t.client({ name: 'bad', auth: badAuth });
  const vault = bad.subscribe(t.channel('private-vault'));
  const refused = t.record(vault, 'pusher:subscription_error');
  t.observe('subscription_error', await refused.next());
  t.observe('bad_auth_requested', badAuth.requests.map((r) => r.channel));
  t.observe('vault_subscribed', vault.subscribed);
  t.observe('bad_client_state', bad.connection.state);

  // Laravel Echo with the pusher broadcaster, constructing pusher-js itself.
  const echoBad = await t.echo('echo-bad', { authEndpoint: badAuth.channelEndpoint });
  const echoError = t.recorder('Echo .error()');
  echoBad.private(t.channel('echo-vault')).error(echoError.handler);
  t.observe('echo_error', await echoError.next());

  // Laravel's own names: a dotted channel, an event class with backslashes in its name.
  const echoGood = await t.echo('echo-good', { authEndpoint: auth.channelEndpoint });
  const echoSubscribed = t.recorder('Echo .subscribed()');
  const echoEvents = t.recorder('Echo .listen()');
  const echoName = t.channel('App.Models.User.7');
  echoGood
    .private(echoName)
    .subscribed(echoSubscribed.handler)
    .listen('OrderPaid', echoEvents.handler); // namespace App.Events → App\Events\OrderPaid
  await echoSubscribed.next();
  await sdk.trigger(`private-${echoName}`, 'App\\Events\\OrderPaid', { total: 12.5 });
  t.observe('echo_event', await echoEvents.next());
};
