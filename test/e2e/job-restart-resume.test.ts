/**
 * An agent killed (kill -9) inside the job strategy's rolling `restart` step:
 * the controller waits for it to come back and re-runs the restart (bringing
 * instances up again is safe to repeat) — no person needed. Real agent and
 * controller processes, the real CLI, real Alembic on a real SQLite file.
 *
 * The kill lands inside the step by construction, not by timing: the app's
 * stop command is wrapped in a gate that records that it started and then
 * waits for a release file the test creates only after the agent was killed
 * and started again.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { Fleet, HEAD_REVISION } from "../helpers/fleet.js";

interface RolloutJson {
  id: string;
  status: string;
  message?: string;
  targets: { targetId: string; status: string; message?: string; steps: { name: string; state: string; agentId: string; detail?: string }[] }[];
}

const TERMINAL = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let fleet: Fleet;
let marker: string;
let release: string;

/** A stop command that says it started, then waits for the release file before running the real stop. */
const GATE = `
import { appendFileSync, existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
const [marker, release, ...real] = process.argv.slice(2);
appendFileSync(marker, "stop\\n");
while (!existsSync(release)) await new Promise((r) => setTimeout(r, 50));
const r = spawnSync(real[0], real.slice(1), { stdio: "inherit" });
process.exit(r.status ?? 1);
`;

before(async () => {
  // The controller waits this long for a killed agent to come back (the default, written out).
  process.env.FLOTILLA_AGENT_RETURN_MS = "60000";
  fleet = new Fleet({ agents: ["h1"], targets: [{ id: "job-k", kind: "sqlite", owner: "h1", labels: { env: "jobkill" }, apps: [{ agent: "h1" }] }] });
  await fleet.start();
  marker = join(fleet.dir, "stop-started");
  release = join(fleet.dir, "stop-release");
  const gate = join(fleet.dir, "gate-stop.mjs");
  writeFileSync(gate, GATE);
  const a = fleet.agents.get("h1")!;
  const cfg = parse(readFileSync(a.configPath, "utf8")) as { apps: { stop: string[] }[] };
  for (const app of cfg.apps) app.stop = [process.execPath, gate, marker, release, ...app.stop];
  writeFileSync(a.configPath, stringify(cfg));
  await fleet.killAgent("h1", "SIGTERM");
  await fleet.startAgent("h1");
});

after(async () => {
  if (release) writeFileSync(release, "go");
  await fleet?.stop();
});

async function show(id: string): Promise<RolloutJson> {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
  assert.equal(r.code, 0, r.stderr);
  return r.doc;
}

test("job rollout: the agent killed inside the restart step comes back, the restart is re-run, the rollout succeeds with no manual step", { timeout: 300_000 }, async () => {
  const started = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=jobkill", "--strategy", "job", "--allow-breaking"]);
  assert.equal(started.code, 0, started.stderr);
  const id = started.doc.id;

  // Inside the restart step: the app's stop command is running on the agent.
  for (let i = 0; !existsSync(marker); i++) {
    if (i > 2400) assert.fail(`the restart step never stopped the app: ${JSON.stringify(await show(id)).slice(0, 2000)}`);
    await sleep(50);
  }
  const during = await show(id);
  assert.equal(during.targets[0]!.steps.find((s) => s.name === "restart")?.state, "running", "the kill lands inside the restart step");
  await fleet.killAgent("h1", "SIGKILL");
  await fleet.startAgent("h1");
  writeFileSync(release, "go");

  let done = await show(id);
  for (let i = 0; !TERMINAL.has(done.status); i++) {
    if (i > 400) assert.fail(`rollout ${id} did not end: ${JSON.stringify(done).slice(0, 2000)}`);
    await sleep(500);
    done = await show(id);
  }
  const t = done.targets[0]!;
  assert.equal(done.status, "succeeded", `${done.message}: ${t.message} ${JSON.stringify(t.steps)}`);
  assert.equal(t.status, "succeeded");
  const restart = t.steps.filter((s) => s.name === "restart");
  assert.equal(restart.length, 1, "one restart step: re-run in place, no extra step");
  assert.equal(restart[0]!.state, "succeeded");
  assert.ok(t.steps.every((s) => s.state === "succeeded"), JSON.stringify(t.steps));

  // The database is at the new revision, verified; every app instance runs; nothing is left for a person.
  assert.deepEqual(await fleet.revisionOf("job-k"), [HEAD_REVISION]);
  assert.equal(t.steps.find((s) => s.name === "verify")?.state, "succeeded");
  const agent = fleet.agentClient("h1");
  const health = await agent.checkHealth({ targetId: "job-k" }, { timeoutMs: 30_000 });
  assert.ok(health.healthy && health.apps.length === 1 && health.apps.every((x) => x.state === "running"), JSON.stringify(health.apps));
  const status = await agent.getStatus({ targetId: "job-k" }, { timeoutMs: 30_000 });
  assert.equal(status.busyOperationId, "");
  assert.deepEqual(status.interruptedOperationIds, [], "no interrupted operation is left holding the target");

  // Audited once: one finish row for the rollout, and every agent operation of it named by an audit row.
  const audit = await fleet.cliJson<{ entries: { action: string; target: string; args: string; outcome: string }[] }>(["audit", "--limit", "1000"]);
  assert.equal(audit.code, 0, audit.stderr);
  const finishes = audit.doc.entries.filter((e) => e.action === "rollout.finish" && e.target === id);
  assert.equal(finishes.length, 1, JSON.stringify(finishes));
  assert.equal(finishes[0]!.outcome, "ok");
  const named = new Set(audit.doc.entries.map((e) => { try { return (JSON.parse(e.args) as { operation?: string }).operation ?? ""; } catch { return ""; } }).filter((x) => x !== ""));
  const ops = (await agent.listOperations({ targetId: "job-k", limit: 200 }, { timeoutMs: 30_000 })).operations.filter((o) => o.id.includes(id));
  const unaudited = ops.filter((o) => ![...named].some((n) => o.id === n || o.id.startsWith(`${n}.`)));
  assert.deepEqual(unaudited.map((o) => `${o.kind}:${o.id}`), []);
  assert.equal(ops.filter((o) => o.kind === "migrate" && o.state === "succeeded").length, 1, "migrated once");
});
