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
/** Per target: the file the gate appends to when a stop starts, and the file that lets it go on. */
const gates = new Map<string, { marker: string; release: string }>();

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
  fleet = new Fleet({
    agents: ["h1"],
    targets: [
      { id: "job-k", kind: "sqlite", owner: "h1", labels: { env: "kill-once" }, apps: [{ agent: "h1" }] },
      { id: "job-kk", kind: "sqlite", owner: "h1", labels: { env: "kill-twice" }, apps: [{ agent: "h1" }] },
    ],
  });
  await fleet.start();
  const gate = join(fleet.dir, "gate-stop.mjs");
  writeFileSync(gate, GATE);
  const a = fleet.agents.get("h1")!;
  const cfg = parse(readFileSync(a.configPath, "utf8")) as { apps: { target: string; stop: string[] }[] };
  for (const app of cfg.apps) {
    const g = { marker: join(fleet.dir, `${app.target}.stop-started`), release: join(fleet.dir, `${app.target}.stop-release`) };
    gates.set(app.target, g);
    app.stop = [process.execPath, gate, g.marker, g.release, ...app.stop];
  }
  writeFileSync(a.configPath, stringify(cfg));
  await fleet.killAgent("h1", "SIGTERM");
  await fleet.startAgent("h1");
});

after(async () => {
  for (const g of gates.values()) writeFileSync(g.release, "go");
  await fleet?.stop();
});

async function show(id: string): Promise<RolloutJson> {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
  assert.equal(r.code, 0, r.stderr);
  return r.doc;
}

/** Waits until the target's app stop command has started `n` times in all. */
async function stopStarted(targetId: string, n: number, id: string): Promise<void> {
  const { marker } = gates.get(targetId)!;
  for (let i = 0; !existsSync(marker) || readFileSync(marker, "utf8").split("\n").filter(Boolean).length < n; i++) {
    if (i > 2400) assert.fail(`the app's stop command did not start (${n}): ${JSON.stringify(await show(id)).slice(0, 2000)}`);
    await sleep(50);
  }
}

/** Starts a job rollout, kills the agent (kill -9) each time the restart step's app stop is under way, then lets it finish. */
async function rolloutKilledInRestart(targetId: string, env: string, kills: number): Promise<RolloutJson> {
  const started = await fleet.cliJson<RolloutJson>(["rollout", "--selector", `env=${env}`, "--strategy", "job", "--allow-breaking"]);
  assert.equal(started.code, 0, started.stderr);
  const id = started.doc.id;
  for (let k = 1; k <= kills; k++) {
    await stopStarted(targetId, k, id);
    const during = await show(id);
    assert.equal(during.targets[0]!.steps.find((s) => s.name === "restart")?.state, "running", `kill ${k} lands inside the restart step`);
    await fleet.killAgent("h1", "SIGKILL");
    await fleet.startAgent("h1");
  }
  writeFileSync(gates.get(targetId)!.release, "go");
  let done = await show(id);
  for (let i = 0; !TERMINAL.has(done.status); i++) {
    if (i > 400) assert.fail(`rollout ${id} did not end: ${JSON.stringify(done).slice(0, 2000)}`);
    await sleep(500);
    done = await show(id);
  }
  return done;
}

/** The end state wanted after any interruption: new revision, verified, instances running, succeeded, audited once, nothing left to recover. */
async function assertCompleted(done: RolloutJson, targetId: string): Promise<void> {
  const id = done.id;
  const t = done.targets[0]!;
  assert.equal(done.status, "succeeded", `${done.message}: ${t.message} ${JSON.stringify(t.steps)}`);
  assert.equal(t.status, "succeeded");
  const restart = t.steps.filter((s) => s.name === "restart");
  assert.equal(restart.length, 1, "one restart step: re-run in place, no extra step");
  assert.match(restart[0]!.detail ?? "", /\(run [23]: the agent was interrupted in the earlier runs?\)$/, "the step says it was re-run");
  assert.ok(
    t.steps.every((s) => s.state === "succeeded"),
    JSON.stringify(t.steps),
  );

  assert.deepEqual(await fleet.revisionOf(targetId), [HEAD_REVISION]);
  assert.equal(t.steps.find((s) => s.name === "verify")?.state, "succeeded");
  const agent = fleet.agentClient("h1");
  const health = await agent.checkHealth({ targetId }, { timeoutMs: 30_000 });
  assert.ok(health.healthy && health.apps.length === 1 && health.apps.every((x) => x.state === "running"), JSON.stringify(health.apps));
  const status = await agent.getStatus({ targetId }, { timeoutMs: 30_000 });
  assert.equal(status.busyOperationId, "");
  assert.deepEqual(status.interruptedOperationIds, [], "no interrupted operation is left holding the target");

  // Audited once: one finish row for the rollout, and every agent operation of it named by an audit row.
  const audit = await fleet.cliJson<{ entries: { action: string; target: string; args: string; outcome: string }[] }>(["audit", "--limit", "1000"]);
  assert.equal(audit.code, 0, audit.stderr);
  const finishes = audit.doc.entries.filter((e) => e.action === "rollout.finish" && e.target === id);
  assert.equal(finishes.length, 1, JSON.stringify(finishes));
  assert.equal(finishes[0]!.outcome, "ok");
  const named = new Set(
    audit.doc.entries
      .map((e) => {
        try {
          return (JSON.parse(e.args) as { operation?: string }).operation ?? "";
        } catch {
          return "";
        }
      })
      .filter((x) => x !== ""),
  );
  const ops = (await agent.listOperations({ targetId, limit: 200 }, { timeoutMs: 30_000 })).operations.filter((o) => o.id.includes(id));
  const unaudited = ops.filter((o) => ![...named].some((n) => o.id === n || o.id.startsWith(`${n}.`)));
  assert.deepEqual(
    unaudited.map((o) => `${o.kind}:${o.id}`),
    [],
  );
  assert.equal(ops.filter((o) => o.kind === "migrate" && o.state === "succeeded").length, 1, "migrated once");
  assert.ok(
    ops.some((o) => o.kind === "recover" && o.state === "succeeded"),
    "the re-run completed the interrupted stop first",
  );
}

test("job rollout: the agent killed inside the restart step comes back, the restart is re-run, the rollout succeeds with no manual step", {
  timeout: 300_000,
}, async () => {
  await assertCompleted(await rolloutKilledInRestart("job-k", "kill-once", 1), "job-k");
});

test("job rollout: killed again while the re-run completes the interrupted stop, the next run takes over and the rollout still succeeds", {
  timeout: 300_000,
}, async () => {
  const done = await rolloutKilledInRestart("job-kk", "kill-twice", 2);
  await assertCompleted(done, "job-kk");
  const ops = (await fleet.agentClient("h1").listOperations({ targetId: "job-kk", limit: 200 }, { timeoutMs: 30_000 })).operations.filter((o) =>
    o.id.includes(done.id),
  );
  assert.ok(
    ops.some((o) => o.kind === "recover" && o.state === "recovered" && /taken over/.test(o.message)),
    JSON.stringify(ops.map((o) => [o.id, o.kind, o.state])),
  );
});
