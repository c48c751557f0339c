/**
 * Operator controls end to end (real agents, controller and CLI on loopback):
 * manual gates with approve and expiry, pause surviving a controller restart,
 * retry of a half-failed rollout, rollback --yes, and the compatibility gate.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ControllerService, Strategy } from "../../services/common/gen/flotilla/v1/controller_pb.js";
import { channelCredentials, createClient } from "../../services/common/grpc-bridge.js";
import { Fleet, HEAD_REVISION, OLD_REVISION } from "../helpers/fleet.js";

interface RolloutJson {
  id: string;
  status: string;
  message: string;
  paused: boolean;
  waitingFor: string;
  gateExpiresAt: string;
  targets: { targetId: string; status: string; message: string; revisionAfter: string[]; steps: { name: string; state: string }[] }[];
}

const SLOW = { seed: { users: 20, chats: 60, msgs: 2 }, alembicEnv: { FIXTURE_SLEEP_MS: "1000", FIXTURE_BATCH: "10" } };
/** The fixture revision that only adds indexes (purely additive), and the one before it. */
const BACKFILL = "d4c3b2a1e5f6";
const INDEXES = "e5f4a3b2c1d0";

let fleet: Fleet;

before(async () => {
  fleet = new Fleet({
    agents: ["c1", "c2"],
    targets: [
      { id: "gate-1", kind: "sqlite", owner: "c1", labels: { env: "gate" }, apps: [{ agent: "c1" }] },
      { id: "gate-2", kind: "sqlite", owner: "c2", labels: { env: "gate" }, apps: [{ agent: "c2" }] },
      { id: "exp-1", kind: "sqlite", owner: "c1", labels: { env: "expire" } },
      { id: "exp-2", kind: "sqlite", owner: "c2", labels: { env: "expire" } },
      { id: "pz-1", kind: "sqlite", owner: "c1", labels: { env: "pause" }, apps: [{ agent: "c1" }], ...SLOW },
      { id: "pz-2", kind: "sqlite", owner: "c2", labels: { env: "pause" } },
      { id: "rt-1", kind: "sqlite", owner: "c1", labels: { env: "retry" }, ...SLOW },
      { id: "rt-2", kind: "sqlite", owner: "c2", labels: { env: "retry" } },
      { id: "rb-1", kind: "sqlite", owner: "c1", labels: { env: "rb" }, apps: [{ agent: "c1" }] },
      { id: "rb-2", kind: "postgresql", owner: "c2", labels: { env: "rb" }, apps: [{ agent: "c2" }] },
      { id: "cp-1", kind: "sqlite", owner: "c1", labels: { env: "compat" }, apps: [{ agent: "c1" }] },
      { id: "cp-2", kind: "sqlite", owner: "c2", labels: { env: "compat-add" }, revision: BACKFILL, apps: [{ agent: "c2" }] },
      { id: "en-1", kind: "sqlite", owner: "c1", labels: { env: "enum" } },
    ],
  });
  await fleet.start();
});

after(async () => {
  await fleet?.stop();
});

async function show(id: string): Promise<RolloutJson> {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
  assert.equal(r.code, 0, r.stderr);
  return r.doc;
}

async function waitFor(id: string, done: (r: RolloutJson) => boolean, timeoutMs = 300_000): Promise<RolloutJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const doc = await show(id);
    if (done(doc)) return doc;
    if (Date.now() > deadline) throw new Error(`rollout ${id} did not reach the expected state: ${JSON.stringify(doc).slice(0, 2000)}`);
    await new Promise((res) => setTimeout(res, 400));
  }
}

const statusOf = (r: RolloutJson): Record<string, string> => Object.fromEntries(r.targets.map((t) => [t.targetId, t.status]));
const stepOf = (r: RolloutJson, target: string, name: string): string | undefined =>
  r.targets.find((t) => t.targetId === target)?.steps.find((s) => s.name === name)?.state;

test("approve: a manual gate holds the next wave until flotilla rollout approve; --wait follows to the end", async () => {
  const start = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=gate", "--strategy", "maintenance", "--waves", "1,100%", "--gate", "manual"]);
  assert.equal(start.code, 0, start.stderr);
  const waiting = await waitFor(start.doc.id, (r) => r.waitingFor !== "");
  assert.match(waiting.waitingFor, /^approval of wave 2/);
  assert.equal(waiting.status, "running");
  assert.deepEqual(statusOf(waiting), { "gate-1": "succeeded", "gate-2": "pending" });
  assert.deepEqual(await fleet.revisionOf("gate-2"), [OLD_REVISION], "the second wave waits");
  const list = await fleet.cli(["rollouts"]);
  assert.match(list.stdout, new RegExp(`${start.doc.id}.*waiting for approval of wave 2`));
  const shown = await fleet.cli(["rollout", "show", start.doc.id]);
  assert.match(shown.stdout, new RegExp(`approve: flotilla rollout approve ${start.doc.id}`));

  const approved = await fleet.cli(["rollout", "approve", start.doc.id, "--wait"]);
  assert.equal(approved.code, 0, approved.stderr + approved.stdout);
  assert.match(approved.stdout, /where each database is now:/);
  assert.deepEqual(await fleet.revisionOf("gate-2"), [HEAD_REVISION]);
  assert.equal((await show(start.doc.id)).status, "succeeded");
  const again = await fleet.cli(["rollout", "approve", start.doc.id]);
  assert.equal(again.code, 2, "nothing waits any more");
  const audit = await fleet.cliJson<{ entries: { action: string; outcome: string }[] }>(["audit", "--action", "api.ApproveRollout"]);
  assert.ok(
    audit.doc.entries.some((e) => e.outcome === "ok"),
    "approve is audited",
  );
});

test("gate expiry: nobody approves in time, the rollout halts and changes nothing more", async () => {
  const r = await fleet.cliJson<RolloutJson>([
    "rollout",
    "--selector",
    "env=expire",
    "--strategy",
    "maintenance",
    "--waves",
    "1,100%",
    "--gate",
    "manual:3s",
    "--wait",
  ]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.doc.status, "halted");
  assert.match(r.doc.message, /the gate expired at .* without approval of wave 2/);
  assert.deepEqual(statusOf(r.doc), { "exp-1": "succeeded", "exp-2": "skipped" });
  assert.deepEqual(await fleet.revisionOf("exp-1"), [HEAD_REVISION]);
  assert.deepEqual(await fleet.revisionOf("exp-2"), [OLD_REVISION], "the second wave was never touched");
  assert.ok(r.doc.targets.find((t) => t.targetId === "exp-2")!.steps.every((s) => s.state === "skipped"));
  assert.equal((await fleet.cli(["rollout", "approve", r.doc.id])).code, 2, "an expired gate cannot be approved");
});

test("pause → controller restart → resume: the running step finishes, nothing new starts, leases are kept, resume completes it", async () => {
  const start = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=pause", "--strategy", "maintenance", "--waves", "1,100%"]);
  assert.equal(start.code, 0, start.stderr);
  const id = start.doc.id;
  await waitFor(id, (r) => stepOf(r, "pz-1", "migrate") === "running");
  const paused = await fleet.cliJson<RolloutJson>(["rollout", "pause", id]);
  assert.equal(paused.code, 0, paused.stderr);
  assert.equal(paused.doc.paused, true);
  const settled = await waitFor(id, (r) => stepOf(r, "pz-1", "migrate") === "succeeded");
  await new Promise((res) => setTimeout(res, 1500));
  const still = await show(id);
  assert.equal(stepOf(still, "pz-1", "verify"), "pending", `no new step while paused: ${JSON.stringify(settled.targets[0]?.steps)}`);
  assert.deepEqual(statusOf(still), { "pz-1": "running", "pz-2": "pending" });

  await fleet.killController("SIGKILL");
  await fleet.startController();
  const after = await show(id);
  assert.equal(after.paused, true, "the pause survives the restart");
  assert.equal(after.status, "running");
  await new Promise((res) => setTimeout(res, 1500));
  assert.equal(stepOf(await show(id), "pz-1", "verify"), "pending", "a resumed controller starts nothing for a paused rollout");
  const other = await fleet.cli(["rollout", "--selector", "env=pause", "--strategy", "maintenance"]);
  assert.equal(other.code, 2, "the paused rollout keeps its leases");
  assert.match(other.stderr, new RegExp(id));

  const resumed = await fleet.cli(["rollout", "resume", id]);
  assert.equal(resumed.code, 0, resumed.stderr);
  const followed = await fleet.cli(["rollout", "show", id, "--follow"]);
  assert.equal(followed.code, 0, followed.stdout + followed.stderr);
  assert.equal((await show(id)).status, "succeeded");
  assert.deepEqual(await fleet.revisionOf("pz-1"), [HEAD_REVISION]);
  assert.deepEqual(await fleet.revisionOf("pz-2"), [HEAD_REVISION]);
  assert.equal((await fleet.cli(["rollout", "resume", id])).code, 2, "a finished rollout cannot be resumed");
});

test("retry of a half-failed rollout: a new rollout over exactly the target that failed", async () => {
  const start = await fleet.cliJson<RolloutJson>([
    "rollout",
    "--selector",
    "env=retry",
    "--strategy",
    "maintenance",
    "--waves",
    "1,100%",
    "--max-failures",
    "1",
  ]);
  assert.equal(start.code, 0, start.stderr);
  const id = start.doc.id;
  await waitFor(id, (r) => stepOf(r, "rt-1", "migrate") === "running");
  await fleet.killAgent("c2"); // rt-2's agent is gone when its wave comes
  const failed = await waitFor(id, (r) => !["running", "pending"].includes(r.status));
  await fleet.startAgent("c2");
  assert.equal(failed.status, "failed", JSON.stringify(failed).slice(0, 2000));
  assert.deepEqual(statusOf(failed), { "rt-1": "succeeded", "rt-2": "failed" });
  assert.deepEqual(await fleet.revisionOf("rt-2"), [OLD_REVISION]);

  // The controller sees the restarted agent again before the retry plans.
  for (let i = 0; i < 60; i++) {
    const t = await fleet.cliJson<{ targets: { targetId: string; error: string }[] }>(["targets", "--selector", "env=retry"]);
    if (t.doc.targets.some((x) => x.targetId === "rt-2" && x.error === "")) break;
    await new Promise((res) => setTimeout(res, 500));
  }
  const retry = await fleet.cli(["rollout", "retry", id, "--wait"]);
  assert.equal(retry.code, 0, retry.stdout + retry.stderr);
  assert.match(retry.stdout, /retries .* over rt-2\n/);
  const list = await fleet.cliJson<{ rollouts: RolloutJson[] }>(["rollouts", "--limit", "1"]);
  const second = list.doc.rollouts[0]!;
  assert.notEqual(second.id, id);
  assert.deepEqual(
    second.targets.map((t) => t.targetId),
    ["rt-2"],
    "exactly the target that failed",
  );
  assert.equal(second.status, "succeeded");
  assert.deepEqual(await fleet.revisionOf("rt-2"), [HEAD_REVISION]);
  assert.deepEqual(await fleet.revisionOf("rt-1"), [HEAD_REVISION]);
  const nothing = await fleet.cli(["rollout", "retry", second.id]);
  assert.equal(nothing.code, 2, "nothing left to retry");
});

test("rollback needs --yes (CLI and API); with --yes --wait it ends with each database's real revision", async () => {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=rb", "--strategy", "maintenance", "--wait"]);
  assert.equal(r.code, 0, r.stderr);
  const refused = await fleet.cli(["rollout", "rollback", r.doc.id]);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /--yes/);
  const api = await fetch(`${fleet.controllerUrl}/v1/RollbackRollout`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: r.doc.id }),
  });
  assert.equal(api.status, 400, "the controller refuses a rollback without yes as well");
  assert.deepEqual(await fleet.revisionOf("rb-1"), [HEAD_REVISION], "nothing was rolled back");

  const rb = await fleet.cli(["rollout", "rollback", r.doc.id, "--yes", "--wait"]);
  assert.equal(rb.code, 0, rb.stdout + rb.stderr);
  const tail = rb.stdout.slice(rb.stdout.lastIndexOf("where each database is now:"));
  assert.match(tail, new RegExp(`rb-1\\s+${OLD_REVISION}\\s+rolled-back`));
  assert.match(tail, new RegExp(`rb-2\\s+${OLD_REVISION}\\s+rolled-back`));
  assert.deepEqual(await fleet.revisionOf("rb-1"), [OLD_REVISION]);
  assert.deepEqual(await fleet.revisionOf("rb-2"), [OLD_REVISION]);
  const doc = await show(r.doc.id);
  assert.equal(doc.status, "rolled-back");
  for (const t of doc.targets) assert.deepEqual(t.revisionAfter, [OLD_REVISION], t.targetId);
  assert.equal((await fleet.cli(["rollout", "show", r.doc.id, "--follow"])).code, 0, "following a rolled-back rollout is a success");
});

test("compatibility gate: job is refused over a revision that is not additive, allowed with --allow-breaking (audited) or when every revision is additive", async () => {
  const plan = await fleet.cli(["plan", "--selector", "env=compat", "--strategy", "job"]);
  assert.equal(plan.code, 0, plan.stderr);
  assert.match(plan.stdout, /COMPATIBILITY/);
  assert.match(plan.stdout, /allows {4}maintenance \(/);
  assert.match(plan.stdout, /job is refused for these revisions/);
  assert.doesNotMatch(plan.stdout, /--strategy job/, "the plan does not print a command the gate would refuse");

  const refused = await fleet.cli(["rollout", "--selector", "env=compat", "--strategy", "job", "--wait"]);
  assert.equal(refused.code, 2, refused.stderr);
  // Which revisions the agent calls breaking or unknown is its classifier's business; the gate names them.
  assert.match(refused.stderr, /not every pending revision is additive: [0-9a-f]{12}[^;]* (is|are) (breaking|unknown)/);
  const planned = await fleet.cliJson<{ targets: { revisions: { id: string; compatibility: string }[] }[] }>([
    "plan",
    "--selector",
    "env=compat",
    "--strategy",
    "job",
  ]);
  const notAdditive = planned.doc.targets[0]!.revisions.filter((r) => r.compatibility !== "additive").map((r) => r.id);
  assert.ok(notAdditive.length > 0);
  for (const id of notAdditive) assert.match(refused.stderr, new RegExp(id), `the refusal names ${id}`);
  assert.deepEqual(await fleet.revisionOf("cp-1"), [OLD_REVISION], "nothing was started");

  const allowed = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=compat", "--strategy", "job", "--allow-breaking", "--wait"]);
  assert.equal(allowed.code, 0, allowed.stderr);
  assert.deepEqual(await fleet.revisionOf("cp-1"), [HEAD_REVISION]);
  const audit = await fleet.cliJson<{ entries: { action: string; outcome: string }[] }>(["audit", "--action", "rollout.allow-breaking"]);
  assert.equal(audit.doc.entries.length, 1, "--allow-breaking is audited");

  const additive = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=compat-add", "--strategy", "job", "--to", INDEXES, "--wait"]);
  assert.equal(additive.code, 0, `${additive.stderr} ${JSON.stringify(additive.doc).slice(0, 1500)}`);
  assert.deepEqual(await fleet.revisionOf("cp-2"), [INDEXES]);
  const upToDate = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=compat-add", "--strategy", "job", "--to", INDEXES, "--wait"]);
  assert.equal(upToDate.code, 0, upToDate.stderr);
  assert.equal(upToDate.doc.targets[0]!.status, "up-to-date");
  assert.deepEqual(upToDate.doc.targets[0]!.steps, [], "no step runs for an up-to-date target");
});

test("strategy is the proto enum on gRPC and its short name on HTTP; every spelling of a bad one is refused naming the choices", async () => {
  const grpc = createClient(ControllerService, `127.0.0.1:${fleet.grpcPort}`, channelCredentials());
  try {
    const plan = await grpc.planRollout({ selector: "env=enum", strategy: Strategy.JOB }, { timeoutMs: 120_000 });
    assert.equal(plan.spec?.strategy, Strategy.JOB);
    assert.equal(plan.refused, true, "the compatibility gate refuses job over a revision that is not additive");
    assert.deepEqual(plan.targets[0]?.allowedStrategies, [Strategy.MAINTENANCE]);
    const unspecified = await grpc.planRollout({ selector: "env=enum" }, { timeoutMs: 120_000 });
    assert.equal(unspecified.spec?.strategy, Strategy.MAINTENANCE, "a plan without a strategy plans maintenance");
    await assert.rejects(
      grpc.startRollout({ selector: "env=enum" }),
      (e: Error & { code?: string }) => e.code === "INVALID_ARGUMENT" && /strategy: is required; use one of maintenance, job, blue-green/.test(e.message),
    );
    await assert.rejects(
      grpc.startRollout({ selector: "env=enum", strategy: 9 as Strategy }),
      (e: Error & { code?: string }) =>
        e.code === "INVALID_ARGUMENT" && /strategy: 9 is not a strategy number; use one of maintenance \(1\), job \(2\), blue-green \(3\)/.test(e.message),
    );
  } finally {
    grpc.close();
  }
  const post = (body: unknown) =>
    fetch(`${fleet.controllerUrl}/v1/PlanRollout`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  for (const spelling of ["job", "STRATEGY_JOB", 2]) {
    const res = await post({ selector: "env=enum", strategy: spelling });
    assert.equal(res.status, 200, String(spelling));
    const json = (await res.json()) as { spec: { strategy: string }; refused: boolean; targets: { allowedStrategies: string[] }[] };
    assert.equal(json.spec.strategy, "job", `${spelling} is answered as job`);
    assert.deepEqual(json.targets[0]?.allowedStrategies, ["maintenance"]);
  }
  const bad = await post({ selector: "env=enum", strategy: "canary" });
  assert.equal(bad.status, 400);
  assert.match(JSON.stringify(await bad.json()), /strategy: \\"canary\\" is not a Strategy value; use one of maintenance, job, blue-green/);
  assert.deepEqual(await fleet.revisionOf("en-1"), [OLD_REVISION], "nothing was started by any of these");
});

test("schedules: an existing name is refused unless replaced; the list shows each next run and time zone", async () => {
  const add = ["schedule", "add", "weekly", "--cron", "0 3 * * 0", "--time-zone", "Europe/Berlin", "--selector", "env=gate", "--strategy", "maintenance"];
  const first = await fleet.cli(add);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /next run \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(Europe\/Berlin\)/);
  const again = await fleet.cli([...add.slice(0, 4), "0 4 * * 0", ...add.slice(5)]);
  assert.equal(again.code, 2, "the same name is refused");
  assert.match(again.stderr, /schedule replace weekly/);
  const replaced = await fleet.cli([
    "schedule",
    "replace",
    "weekly",
    "--cron",
    "30 4 * * 1",
    "--time-zone",
    "UTC",
    "--selector",
    "env=gate",
    "--strategy",
    "maintenance",
    "--gate",
    "manual:1h",
  ]);
  assert.equal(replaced.code, 0, replaced.stderr);
  const list = await fleet.cliJson<{ schedules: { name: string; cron: string; timeZone: string; nextRun: string; gate: string }[] }>(["schedules"]);
  const s = list.doc.schedules.find((x) => x.name === "weekly")!;
  assert.equal(s.cron, "30 4 * * 1");
  assert.equal(s.timeZone, "UTC");
  assert.equal(s.gate, "manual:1h");
  const next = new Date(s.nextRun);
  assert.ok(next.getTime() > Date.now(), s.nextRun);
  assert.equal(next.getUTCDay(), 1);
  assert.equal(`${next.getUTCHours()}:${next.getUTCMinutes()}`, "4:30");
  const human = await fleet.cli(["schedules"]);
  assert.match(human.stdout, /NEXT RUN/);
  assert.match(human.stdout, /weekly\s+30 4 \* \* 1\s+UTC\s+\d{4}-/);
  const badZone = await fleet.cli([
    "schedule",
    "add",
    "other",
    "--cron",
    "0 3 * * 0",
    "--time-zone",
    "Mars/Olympus",
    "--selector",
    "env=gate",
    "--strategy",
    "maintenance",
  ]);
  assert.equal(badZone.code, 2);
  assert.match(badZone.stderr, /--time-zone: "Mars\/Olympus" is not a time zone/);
  assert.equal((await fleet.cli(["schedule", "rm", "weekly"])).code, 0);
});

test("audit --outcome lists only entries of that outcome (the refused rollback above is an error); a bad outcome is exit 2", async () => {
  const errors = await fleet.cliJson<{ entries: { action: string; outcome: string }[] }>(["audit", "--outcome", "error"]);
  assert.equal(errors.code, 0, errors.stderr);
  assert.ok(errors.doc.entries.length > 0);
  assert.ok(
    errors.doc.entries.every((e) => e.outcome === "error"),
    JSON.stringify(errors.doc.entries.slice(0, 3)),
  );
  assert.ok(
    errors.doc.entries.some((e) => e.action === "api.RollbackRollout"),
    "the rollback refused without --yes",
  );
  const exported = await fleet.cli(["audit", "export", "--outcome", "error"]);
  assert.equal(exported.code, 0, exported.stderr);
  const lines = exported.stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { outcome: string });
  assert.equal(lines.length, errors.doc.entries.length);
  for (const args of [
    ["audit", "--outcome", "failed"],
    ["audit", "export", "--outcome", "failed"],
  ]) {
    const bad = await fleet.cli(args);
    assert.equal(bad.code, 2, `${args.join(" ")}: ${bad.stderr}`);
    assert.match(bad.stderr, /"failed" is not an outcome; use intent, ok, error or denied/);
  }
});
