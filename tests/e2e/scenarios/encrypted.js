'use strict';
// An encrypted channel: the auth endpoint (Node SDK with encryptionMasterKeyBase64) gives
// pusher-js the channel's shared_secret; events encrypted by the Node SDK and by the Python SDK
// (encryption_master_key_base64, in the driver's step) reach bind() decrypted. ipe only ever
// carries {nonce, ciphertext}.

module.exports = async (t) => {
  const client = await t.client({ name: 'reader' });
  const vault = await t.subscribe(client, t.channel('private-encrypted-vault'));
  const secrets = t.record(vault, 'secret');
  const frames = t.record(
    client.connection,
    'message',
    (m) => m.channel === vault.name && m.event === 'secret',
  );

  await t.sdk().trigger(vault.name, 'secret', { from: 'node', n: 1 });
  t.observe('from_node', await secrets.next());

  await t.step('trigger', { channel: vault.name });
  t.observe('from_python', await secrets.next());

  t.observe('wire_fields', frames.all.map((m) => Object.keys(m.data).sort()));
  // pusher-js asks the endpoint again when a key fails to decrypt: once means it never did.
  t.observe('auth_requests', (await t.auth()).requests.filter((r) => r.channel === vault.name).length);
};
