// Evaluates IAM requests with @cloud-copilot/iam-simulate, for the guardrail tests: reads a JSON
// array of cases on stdin, each {name, principal, action, resource, accountId, context,
// identityPolicies: [policy], scps: [policy]}, and prints a JSON array of {name, result} where
// result is the simulator's overallResult (Allowed, ExplicitlyDenied, ImplicitlyDenied) or
// "error: ..." when the simulator refused the request. Run with NODE_PATH pointing at the
// node_modules that `npm ci` made from this directory's package-lock.json.
'use strict';
const { runSimulation } = require('@cloud-copilot/iam-simulate');

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const cases = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const results = [];
  for (const c of cases) {
    const named = (prefix) => (policy, i) => ({ name: `${prefix}${i}`, policy });
    const scps = (c.scps || []).map(named('scp'));
    const simulation = {
      request: {
        principal: c.principal,
        action: c.action,
        resource: { resource: c.resource, accountId: c.accountId },
        contextVariables: c.context || {},
      },
      identityPolicies: (c.identityPolicies || []).map(named('identity')),
      // An SCP that allows everything at the root, as an organization has by default, then ours.
      serviceControlPolicies: scps.length
        ? [
            {
              orgIdentifier: 'r-root',
              policies: [
                {
                  name: 'FullAWSAccess',
                  policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] },
                },
              ],
            },
            { orgIdentifier: c.accountId, policies: scps.concat([
              {
                name: 'FullAWSAccessAccount',
                policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: '*', Resource: '*' }] },
              },
            ]) },
          ]
        : [],
      resourceControlPolicies: [],
    };
    const outcome = await runSimulation(simulation, {});
    const result = outcome.overallResult ?? `error: ${JSON.stringify(outcome.errors ?? outcome)}`;
    results.push({ name: c.name, result });
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((e) => {
  process.stderr.write(`simulate.cjs: ${e.stack || e}\n`);
  process.exit(1);
});
