'use strict';
// The harness's own check (test_scenario_runner_reports_failures): a wait that nothing answers
// must fail the scenario with its reason, not hang or pass.

module.exports = async (t) => {
  const client = await t.client({ name: 'idle' });
  const channel = await t.subscribe(client, t.channel('silence'));
  await t.record(channel, 'never-sent').next();
};
