import { test } from "node:test";
import assert from "node:assert/strict";
import type { RolloutSpec } from "../../common/rollout-request.js";
import type { RolloutDoc } from "./ports.js";
import { type InventoryTarget, planTargets } from "./rollout-plan.js";
import {
  MAX_STEP_ATTEMPTS,
  type SequencerCommand,
  type SequencerEvent,
  type StepResult,
  TARGET_CONCURRENCY,
  type Transition,
  retryTargets,
  rollbackTargets,
  transition,
} from "./rollout-sequencer.js";

const T0 = Date.parse("2026-01-01T03:00:00.000Z");
const at = (minutes: number): string => new Date(T0 + minutes * 60_000).toISOString();
const OLD = "c3d2e1f00d42";
const NEW = "1b8c9d0e1f2a";

function spec(over: Partial<RolloutSpec> = {}): RolloutSpec {
  return {
    selector: "env=prod",
    toRevision: "head",
    strategy: "maintenance",
    waves: "",
    maxFailures: 0,
    window: "",
    gate: "",
    allowBreaking: false,
    schedule: "",
    ...over,
  };
}

function rollout(n: number, over: Partial<RolloutSpec> = {}): RolloutDoc {
  const s = spec(over);
  const inv: InventoryTarget[] = Array.from({ length: n }, (_, i) => ({
    id: `t${i + 1}`,
    ownerAgent: `a${i + 1}`,
    appAgents: [`a${i + 1}`],
    labels: {},
    blueGreen: true,
  }));
  return {
    id: "r-1",
    status: "pending",
    spec: s,
    targets: planTargets(s.strategy, inv, s.waves, s.toRevision),
    createdAt: at(0),
    actor: "alice",
    message: "",
    warnings: [],
    currentWave: 0,
    abortRequested: false,
    version: 0,
    paused: false,
    waitingFor: "",
  };
}

/** What a healthy agent answers for each step. */
function ok(cmd: Extract<SequencerCommand, { kind: "run-step" | "resolve-step" }>): StepResult {
  switch (cmd.step.name) {
    case "precheck":
      return { outcome: "succeeded", effect: "none", detail: `at ${OLD}; 1 pending`, revisionBefore: [OLD] };
    case "backup":
      return { outcome: "succeeded", effect: "none", detail: "backup taken", backupId: `bk-${cmd.targetId}` };
    case "migrate":
    case "migrate-green":
      return { outcome: "succeeded", effect: "changed", detail: "migrated", revisionAfter: [NEW] };
    case "verify":
      return { outcome: "succeeded", effect: "none", detail: `at ${NEW}`, revisionAfter: [NEW] };
    case "rollback-restore":
      return { outcome: "succeeded", effect: "restored", detail: "restored", revisionAfter: [OLD] };
    case "rollback-verify":
      return { outcome: "succeeded", effect: "none", detail: `database at ${OLD}`, revisionAfter: [OLD] };
    default:
      return { outcome: "succeeded", effect: "none", detail: "done" };
  }
}

type Agent = (cmd: Extract<SequencerCommand, { kind: "run-step" | "resolve-step" }>) => StepResult | "hold";

interface Run {
  doc: RolloutDoc;
  /** Steps that ran, as "target:step". */
  ran: string[];
  /** Step commands the fake agent held (not answered). */
  held: Extract<SequencerCommand, { kind: "run-step" | "resolve-step" }>[];
  other: SequencerCommand[];
}

/** A fake driver: applies the event, answers every step with `agent` until nothing is left to run. */
function drive(doc: RolloutDoc, event: SequencerEvent, agent: Agent = ok, now = at(1)): Run {
  const run: Run = { doc, ran: [], held: [], other: [] };
  const queue: Transition[] = [];
  const apply = (e: SequencerEvent): void => {
    const t = transition(run.doc, e);
    assert.equal(t.refusal, undefined, t.refusal?.message);
    run.doc = t.doc;
    queue.push(t);
  };
  apply(event);
  while (queue.length > 0) {
    const t = queue.shift()!;
    for (const c of t.commands) {
      if (c.kind !== "run-step" && c.kind !== "resolve-step") {
        run.other.push(c);
        continue;
      }
      run.ran.push(`${c.targetId}:${c.step.name}`);
      const result = agent(c);
      if (result === "hold") run.held.push(c);
      else apply({ kind: "step-finished", now, targetId: c.targetId, index: c.index, result });
    }
  }
  return run;
}

function finishHeld(run: Run, agent: Agent = ok, now = at(2)): Run {
  const held = run.held.splice(0);
  let current = run;
  for (const c of held) {
    const result = agent(c);
    assert.notEqual(result, "hold");
    const next = drive(current.doc, { kind: "step-finished", now, targetId: c.targetId, index: c.index, result: result as StepResult }, agent, now);
    current = { doc: next.doc, ran: [...current.ran, ...next.ran], held: [...current.held, ...next.held], other: [...current.other, ...next.other] };
  }
  return current;
}

const status = (doc: RolloutDoc): Record<string, string> => Object.fromEntries(doc.targets.map((t) => [t.targetId, t.status]));
const failMigrate =
  (target: string, effect: "restored" | "needs-restore" | "none"): Agent =>
  (c) =>
    c.targetId === target && c.step.name === "migrate" ? { outcome: "failed", code: "ALEMBIC_FAILED", effect, detail: "duplicate column name: x" } : ok(c);

test("maintenance: every step in order, targets succeed, the rollout says once what happened, leases released", () => {
  const run = drive(rollout(2), { kind: "start", now: at(0) });
  assert.equal(run.doc.status, "succeeded");
  assert.deepEqual(
    run.ran.filter((r) => r.startsWith("t1:")),
    ["t1:precheck", "t1:stop", "t1:backup", "t1:migrate", "t1:verify", "t1:start", "t1:health"],
  );
  assert.deepEqual(status(run.doc), { t1: "succeeded", t2: "succeeded" });
  assert.equal(run.doc.message, "2 targets: 2 migrated, 0 already up to date");
  assert.equal(run.doc.targets[0]!.message, `migrated ${OLD} → ${NEW} (verified); app instances started and healthy`);
  assert.equal(run.doc.targets[0]!.backupId, "bk-t1");
  assert.deepEqual(run.other, [{ kind: "finish", status: "succeeded" }]);
  assert.ok(run.doc.targets.every((t) => t.steps.every((s) => s.operationId.startsWith("r-1.") && s.state === "succeeded")));
});

test("the input document is never modified", () => {
  const doc = rollout(1);
  const copy = structuredClone(doc);
  transition(doc, { kind: "start", now: at(0) });
  assert.deepEqual(doc, copy);
});

test("up to date: precheck finds nothing pending, no further step runs for that target", () => {
  const run = drive(rollout(2), { kind: "start", now: at(0) }, (c) =>
    c.targetId === "t2" && c.step.name === "precheck" ? { outcome: "succeeded", effect: "up-to-date", detail: "0 pending", revisionBefore: [NEW] } : ok(c),
  );
  assert.deepEqual(status(run.doc), { t1: "succeeded", t2: "up-to-date" });
  assert.deepEqual(
    run.ran.filter((r) => r.startsWith("t2:")),
    ["t2:precheck"],
  );
  assert.equal(run.doc.targets[1]!.steps.length, 1);
  assert.equal(run.doc.targets[1]!.message, `already at ${NEW}: nothing to do`);
  assert.equal(run.doc.status, "succeeded");
  assert.equal(run.doc.message, "2 targets: 1 migrated, 1 already up to date");
});

test("canary: only wave 1 runs first; later waves start when it is done", () => {
  const first = drive(rollout(4, { waves: "1,100%" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "precheck" ? "hold" : ok(c)));
  assert.deepEqual(first.ran, ["t1:precheck"]);
  assert.deepEqual(status(first.doc), { t1: "running", t2: "pending", t3: "pending", t4: "pending" });
  const done = finishHeld(first);
  assert.equal(done.doc.status, "succeeded");
  assert.equal(done.ran.indexOf("t2:precheck") > done.ran.indexOf("t1:health"), true);
});

test("waves: at most TARGET_CONCURRENCY targets at once within a wave", () => {
  const run = drive(rollout(TARGET_CONCURRENCY + 2), { kind: "start", now: at(0) }, () => "hold");
  assert.equal(run.held.length, TARGET_CONCURRENCY);
  assert.equal(run.doc.targets.filter((t) => t.status === "pending").length, 2);
  const done = finishHeld(run);
  assert.equal(done.doc.status, "succeeded");
});

test("failure budget 0: a restored canary halts the rollout; later targets are skipped and the outcome is said once", () => {
  const run = drive(rollout(3, { waves: "1,100%" }), { kind: "start", now: at(0) }, failMigrate("t1", "restored"));
  assert.equal(run.doc.status, "halted");
  assert.deepEqual(status(run.doc), { t1: "restored", t2: "skipped", t3: "skipped" });
  const t1 = run.doc.targets[0]!;
  assert.equal(t1.message, `migrate failed (ALEMBIC_FAILED) and the database was restored to ${OLD}; fix the cause, then: flotilla rollout retry r-1`);
  assert.deepEqual(t1.revisionAfter, [OLD]);
  // The app stopped for the migration is started again.
  assert.deepEqual(
    t1.steps.filter((s) => s.compensation).map((s) => `${s.name}:${s.state}`),
    ["start:succeeded"],
  );
  assert.deepEqual(
    t1.steps.filter((s) => s.name === "verify" || s.name === "health").map((s) => s.state),
    ["skipped", "skipped"],
  );
  assert.match(run.doc.message, /^halted before wave 2: t1 restored/);
  assert.deepEqual(run.other, [{ kind: "finish", status: "halted" }]);
});

test("failure budget 1: one failure is tolerated and later waves run; the rollout fails at the end", () => {
  const run = drive(rollout(3, { waves: "1,100%", maxFailures: 1 }), { kind: "start", now: at(0) }, failMigrate("t1", "none"));
  assert.deepEqual(status(run.doc), { t1: "failed", t2: "succeeded", t3: "succeeded" });
  assert.equal(run.doc.status, "failed");
  assert.equal(run.doc.message, "3 targets: 2 migrated, 0 already up to date, 1 failed");
  assert.match(run.doc.targets[0]!.message, /^migrate failed \(ALEMBIC_FAILED\): duplicate column name: x; database at c3d2e1f00d42$/);
});

test("needs-restore: the target says the database is not restored and how to restore it", () => {
  const run = drive(rollout(1), { kind: "start", now: at(0) }, failMigrate("t1", "needs-restore"));
  assert.equal(run.doc.targets[0]!.status, "needs-restore");
  assert.equal(
    run.doc.targets[0]!.message,
    "migrate failed (ALEMBIC_FAILED) and the database is NOT restored: restore it with flotilla restore t1 bk-t1 --yes",
  );
  assert.equal(run.doc.status, "failed");
});

test("abort: the running step finishes, stopped apps start again, no new step starts, unstarted targets are skipped", () => {
  const started = drive(rollout(3, { waves: "1,100%" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "backup" ? "hold" : ok(c)));
  assert.deepEqual(
    started.held.map((c) => `${c.targetId}:${c.step.name}`),
    ["t1:backup"],
  );
  const aborted = transition(started.doc, { kind: "abort", now: at(1), actor: "bob" });
  assert.equal(aborted.refusal, undefined);
  assert.deepEqual(aborted.commands, []);
  assert.deepEqual(status(aborted.doc), { t1: "running", t2: "skipped", t3: "skipped" });
  const done = finishHeld({ ...started, doc: aborted.doc });
  assert.equal(done.doc.status, "aborted");
  const t1 = done.doc.targets[0]!;
  assert.equal(t1.status, "skipped");
  assert.equal(t1.message, "aborted before any change to this target");
  assert.deepEqual(done.ran.slice(-1), ["t1:start"]);
  assert.equal(t1.steps.find((s) => s.name === "migrate")?.state, "skipped");
  assert.equal(transition(done.doc, { kind: "abort", now: at(3), actor: "bob" }).refusal?.code, "PRECONDITION_FAILED");
});

test("abort after the migration: the target is aborted at its new revision", () => {
  const started = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.step.name === "verify" ? "hold" : ok(c)));
  const aborted = transition(started.doc, { kind: "abort", now: at(1), actor: "bob" });
  const done = finishHeld({ ...started, doc: aborted.doc });
  assert.equal(done.doc.targets[0]!.status, "aborted");
  assert.equal(done.doc.targets[0]!.message, `aborted after verify: the database is at ${NEW}; remaining steps were not run`);
  assert.equal(done.doc.status, "aborted");
});

test("pause: running steps finish, no new step starts; resume continues; controls that do not apply are refused", () => {
  const started = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.step.name === "backup" ? "hold" : ok(c)));
  const paused = transition(started.doc, { kind: "pause", now: at(1), actor: "bob" });
  assert.equal(paused.doc.paused, true);
  assert.equal(transition(paused.doc, { kind: "pause", now: at(1), actor: "bob" }).refusal?.code, "PRECONDITION_FAILED");
  const afterBackup = finishHeld({ ...started, doc: paused.doc });
  assert.deepEqual(afterBackup.ran.slice(-1), ["t1:backup"], "no step after the running one");
  assert.equal(afterBackup.doc.targets[0]!.steps.find((s) => s.name === "migrate")?.state, "pending");
  assert.equal(afterBackup.doc.status, "running");
  const resumed = drive(afterBackup.doc, { kind: "resume", now: at(3), actor: "bob" });
  assert.equal(resumed.doc.paused, false);
  assert.equal(resumed.doc.status, "succeeded");
  assert.equal(transition(resumed.doc, { kind: "resume", now: at(4), actor: "bob" }).refusal?.code, "PRECONDITION_FAILED");
  assert.equal(transition(resumed.doc, { kind: "pause", now: at(4), actor: "bob" }).refusal?.code, "PRECONDITION_FAILED");
});

test("pause: a paused rollout resumed after a controller restart stays paused and starts nothing", () => {
  const started = drive(rollout(2, { waves: "1,100%" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "stop" ? "hold" : ok(c)));
  const paused = transition(started.doc, { kind: "pause", now: at(1), actor: "bob" }).doc;
  const done = finishHeld({ ...started, doc: paused });
  const restarted = transition(done.doc, { kind: "restarted", now: at(5) });
  assert.deepEqual(restarted.commands, []);
  assert.equal(restarted.doc.paused, true);
  assert.equal(drive(restarted.doc, { kind: "resume", now: at(6), actor: "bob" }).doc.status, "succeeded");
});

test("gate: after each wave the rollout waits for approval, with an expiry timer; approve starts the next wave", () => {
  const run = drive(rollout(3, { waves: "1,2,100%", gate: "manual:30m" }), { kind: "start", now: at(0) }, ok, at(1));
  assert.deepEqual(status(run.doc), { t1: "succeeded", t2: "pending", t3: "pending" });
  assert.equal(run.doc.status, "running");
  assert.equal(run.doc.waitingFor, "approval of wave 2: flotilla rollout approve r-1");
  assert.equal(run.doc.gateExpiresAt, at(31));
  assert.deepEqual(run.other, [{ kind: "wake-at", at: at(31) }]);
  // A tick before expiry changes nothing.
  assert.equal(drive(run.doc, { kind: "tick", now: at(10) }).doc.status, "running");
  const wave2 = drive(run.doc, { kind: "approve", now: at(10), actor: "carol" }, ok, at(11));
  assert.deepEqual(status(wave2.doc), { t1: "succeeded", t2: "succeeded", t3: "pending" });
  assert.equal(wave2.doc.waitingFor, "approval of wave 3: flotilla rollout approve r-1");
  assert.equal(wave2.doc.gateExpiresAt, at(41));
  const done = drive(wave2.doc, { kind: "approve", now: at(12), actor: "carol" });
  assert.equal(done.doc.status, "succeeded");
  assert.equal(transition(done.doc, { kind: "approve", now: at(13), actor: "carol" }).refusal?.code, "PRECONDITION_FAILED");
});

test("gate: approve is refused when the rollout waits for nothing", () => {
  const run = drive(rollout(2, { waves: "1,100%", gate: "manual" }), { kind: "start", now: at(0) }, () => "hold");
  const r = transition(run.doc, { kind: "approve", now: at(1), actor: "carol" });
  assert.equal(r.refusal?.code, "PRECONDITION_FAILED");
  assert.equal(r.doc, run.doc);
});

test("gate: an expired gate halts the rollout and changes nothing more", () => {
  const run = drive(rollout(3, { waves: "1,100%", gate: "manual:30m" }), { kind: "start", now: at(0) }, ok, at(1));
  const expired = drive(run.doc, { kind: "tick", now: at(32) });
  assert.deepEqual(expired.ran, []);
  assert.equal(expired.doc.status, "halted");
  assert.deepEqual(status(expired.doc), { t1: "succeeded", t2: "skipped", t3: "skipped" });
  assert.match(expired.doc.message, /^the gate expired at 2026-01-01T03:31:00.000Z without approval of wave 2/);
  assert.equal(expired.doc.waitingFor, "");
  assert.deepEqual(expired.other, [{ kind: "finish", status: "halted" }]);
  assert.deepEqual(retryTargets(expired.doc), ["t2", "t3"]);
});

test("gate: a plain manual gate waits without expiry; abort while waiting ends the rollout", () => {
  const run = drive(rollout(2, { waves: "1,100%", gate: "manual" }), { kind: "start", now: at(0) });
  assert.equal(run.doc.gateExpiresAt, undefined);
  assert.deepEqual(run.other, []);
  assert.equal(drive(run.doc, { kind: "tick", now: at(60 * 24) }).doc.status, "running");
  const aborted = drive(run.doc, { kind: "abort", now: at(2), actor: "bob" });
  assert.equal(aborted.doc.status, "aborted");
  assert.deepEqual(status(aborted.doc), { t1: "succeeded", t2: "skipped" });
});

test("window: a wave that would start after the maintenance window halts the rollout", () => {
  const run = drive(rollout(2, { waves: "1,100%", window: "30m" }), { kind: "start", now: at(0) }, ok, at(45));
  assert.equal(run.doc.status, "halted");
  assert.deepEqual(status(run.doc), { t1: "succeeded", t2: "skipped" });
  assert.match(run.doc.message, /maintenance window of 30m ended before wave 2/);
});

test("resume after a controller restart, from every step: the journal decides, the rollout goes on", () => {
  const names = rollout(1).targets[0]!.steps.map((s) => s.name);
  for (let k = 0; k < names.length; k++) {
    const started = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.index === k ? "hold" : ok(c)));
    assert.equal(started.doc.targets[0]!.steps[k]!.state, "running", names[k]);
    const restarted = drive(started.doc, { kind: "restarted", now: at(5) });
    assert.deepEqual(restarted.ran[0], `t1:${names[k]}`);
    assert.equal(restarted.doc.status, "succeeded", `resumed at ${names[k]}`);
  }
});

test("restart: a step the agent never started runs again; a step whose end is unknown fails the target and starts its apps", () => {
  const started = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.step.name === "migrate" ? "hold" : ok(c)));
  let first = true;
  const again = drive(started.doc, { kind: "restarted", now: at(5) }, (c) => {
    if (c.kind === "resolve-step" && first) {
      first = false;
      return { outcome: "not-started", detail: "the agent never started this step" };
    }
    return ok(c);
  });
  assert.deepEqual(again.ran.slice(0, 2), ["t1:migrate", "t1:migrate"]);
  assert.equal(again.doc.status, "succeeded");

  const unknown = drive(started.doc, { kind: "restarted", now: at(5) }, (c) =>
    c.kind === "resolve-step" ? { outcome: "unknown", code: "AGENT_UNAVAILABLE", detail: "connection refused" } : ok(c),
  );
  const t = unknown.doc.targets[0]!;
  assert.equal(t.status, "failed");
  assert.equal(t.steps.find((s) => s.name === "migrate")?.state, "interrupted");
  assert.match(t.message, /ended unseen: agent a1 cannot say how \(connection refused\); run flotilla diagnose t1/);
  assert.deepEqual(unknown.ran.slice(-1), ["t1:start"]);
  assert.equal(unknown.doc.status, "failed");
});

test("rollback: refused while running; restores, restarts and reads each database's real revision", () => {
  const running = drive(rollout(1), { kind: "start", now: at(0) }, () => "hold");
  assert.equal(transition(running.doc, { kind: "rollback", now: at(1), actor: "admin" }).refusal?.code, "PRECONDITION_FAILED");
  const done = drive(rollout(2), { kind: "start", now: at(0) }, failMigrate("t2", "restored"));
  assert.equal(done.doc.status, "failed");
  assert.deepEqual(
    rollbackTargets(done.doc).map((t) => t.targetId),
    ["t1"],
  );
  const rb = drive(done.doc, { kind: "rollback", now: at(10), actor: "admin" });
  assert.deepEqual(rb.ran, ["t1:rollback-stop", "t1:rollback-restore", "t1:rollback-start", "t1:rollback-verify"]);
  assert.equal(rb.doc.status, "rolled-back");
  assert.deepEqual(status(rb.doc), { t1: "rolled-back", t2: "restored" });
  assert.deepEqual(rb.doc.targets[0]!.revisionAfter, [OLD]);
  assert.equal(rb.doc.targets[0]!.message, `rolled back: the database is at ${OLD} (verified)`);
  assert.deepEqual(rb.other, [{ kind: "finish", status: "rolled-back" }]);
  assert.equal(transition(rb.doc, { kind: "rollback", now: at(11), actor: "admin" }).refusal?.message, "rollout r-1 was already rolled back");
});

test("rollback of blue-green switches back to blue and stops green", () => {
  const done = drive(rollout(1, { strategy: "blue-green" }), { kind: "start", now: at(0) });
  assert.equal(done.doc.status, "succeeded");
  const rb = drive(done.doc, { kind: "rollback", now: at(10), actor: "admin" });
  assert.deepEqual(rb.ran, ["t1:rollback-switch", "t1:stop-green", "t1:rollback-verify"]);
  assert.equal(rb.doc.status, "rolled-back");
});

test("rollback that fails on a target says so, and the rollout ends failed", () => {
  const done = drive(rollout(1), { kind: "start", now: at(0) });
  const rb = drive(done.doc, { kind: "rollback", now: at(10), actor: "admin" }, (c) =>
    c.step.name === "rollback-restore" ? { outcome: "failed", code: "RESTORE_FAILED", effect: "none", detail: "disk full" } : ok(c),
  );
  assert.equal(rb.doc.status, "failed");
  assert.match(rb.doc.targets[0]!.message, /^rollback rollback-restore failed \(RESTORE_FAILED\): disk full/);
  assert.equal(rb.doc.message, "rollback failed on t1");
});

test("blue-green: a failing green health check stops the green instances; blue keeps serving", () => {
  const run = drive(rollout(1, { strategy: "blue-green" }), { kind: "start", now: at(0) }, (c) =>
    c.step.name === "health-green" ? { outcome: "failed", code: "PRECONDITION_FAILED", effect: "none", detail: "unhealthy" } : ok(c),
  );
  const t = run.doc.targets[0]!;
  assert.equal(t.status, "failed");
  assert.deepEqual(
    t.steps.filter((s) => s.compensation).map((s) => s.name),
    ["stop-green"],
  );
  assert.equal(t.steps.find((s) => s.name === "switch")?.state, "skipped");
});

test("retry covers exactly the failed, restored and skipped targets", () => {
  const run = drive(rollout(4, { waves: "2,100%", maxFailures: 0 }), { kind: "start", now: at(0) }, (c) =>
    c.targetId === "t2" && c.step.name === "migrate" ? { outcome: "failed", code: "ALEMBIC_FAILED", effect: "restored", detail: "x" } : ok(c),
  );
  assert.deepEqual(status(run.doc), { t1: "succeeded", t2: "restored", t3: "skipped", t4: "skipped" });
  assert.deepEqual(retryTargets(run.doc), ["t2", "t3", "t4"]);
});

test("a step result for a step that is not running is refused", () => {
  const r = transition(rollout(1), {
    kind: "step-finished",
    now: at(0),
    targetId: "t1",
    index: 0,
    result: { outcome: "succeeded", effect: "none", detail: "" },
  });
  assert.equal(r.refusal?.code, "PRECONDITION_FAILED");
});

// ------------------------------------------------------------------ an interrupted restart (job strategy)

const interruptedAt = (run: number, ops: string[]): StepResult => ({
  outcome: "interrupted",
  code: "INTERRUPTED",
  detail: `the agent stopped during run ${run}`,
  operations: ops,
});

test("job: a restart the agent was killed in is re-run with a new operation id, completing the interrupted operations first; the rollout succeeds", () => {
  const doc = rollout(1, { strategy: "job" });
  let runs = 0;
  const run = drive(doc, { kind: "start", now: at(0) }, (c) => {
    if (c.step.name !== "restart") return ok(c);
    runs++;
    return runs === 1 ? interruptedAt(1, [`${c.step.operationId}.stop`]) : ok(c);
  });
  assert.equal(run.doc.status, "succeeded", run.doc.message);
  assert.deepEqual(run.ran, ["t1:precheck", "t1:backup", "t1:migrate", "t1:verify", "t1:restart", "t1:restart", "t1:health"]);
  const restart = run.doc.targets[0]!.steps.find((s) => s.name === "restart")!;
  assert.equal(restart.state, "succeeded");
  assert.equal(restart.attempt, 2);
  assert.equal(restart.operationId, "r-1.t1.4.restart.a1.a2", "a new id: the first run's operations are never reused");
  assert.deepEqual(restart.resumes, ["r-1.t1.4.restart.a1.stop"]);
  assert.equal(restart.detail, "done (run 2: the agent was interrupted in the earlier run)", "the step says it was re-run");
  assert.deepEqual(run.other, [{ kind: "finish", status: "succeeded" }], "finished once");
  assert.equal(run.doc.targets[0]!.message, `migrated ${OLD} → ${NEW} (verified); app instances started and healthy`);
});

test("job: the re-run carries the interrupted operations in its run-step command, and is resolved like any step after a controller restart", () => {
  const first = drive(rollout(1, { strategy: "job" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "restart" ? "hold" : ok(c)));
  const held = first.held[0]!;
  const next = transition(first.doc, { kind: "step-finished", now: at(2), targetId: "t1", index: held.index, result: interruptedAt(1, ["op.stop"]) });
  const rerun = next.commands.find((c) => c.kind === "run-step");
  assert.ok(rerun && rerun.kind === "run-step");
  assert.equal(rerun.step.name, "restart");
  assert.equal(rerun.step.attempt, 2);
  assert.deepEqual(rerun.step.resumes, ["op.stop"]);
  assert.match(
    next.doc.targets[0]!.steps[held.index]!.detail,
    /run 1 was interrupted on agent a1 .*restart is safe to repeat: run 2 of at most 3, completing op\.stop first/,
  );
  // The controller dies too: on restart the re-run is resolved by its own id.
  const restarted = transition(next.doc, { kind: "restarted", now: at(3) });
  assert.deepEqual(
    restarted.commands.map((c) => (c.kind === "resolve-step" ? c.step.operationId : c.kind)),
    ["r-1.t1.4.restart.a1.a2"],
  );
});

test("job: a restart interrupted on every run fails the target after MAX_STEP_ATTEMPTS runs, naming diagnose", () => {
  const run = drive(rollout(1, { strategy: "job" }), { kind: "start", now: at(0) }, (c) =>
    c.step.name === "restart" ? interruptedAt(c.step.attempt ?? 1, []) : ok(c),
  );
  assert.equal(MAX_STEP_ATTEMPTS, 3);
  assert.deepEqual(run.ran.filter((r) => r === "t1:restart").length, MAX_STEP_ATTEMPTS);
  const t = run.doc.targets[0]!;
  assert.equal(t.status, "failed");
  assert.equal(t.steps.find((s) => s.name === "restart")!.state, "interrupted");
  assert.match(t.message, /restart \(operation r-1\.t1\.4\.restart\.a1\.a3\) was interrupted on agent a1 in each of 3 runs .*flotilla diagnose t1/);
  assert.equal(run.doc.status, "failed");
});

test("job: an interrupted restart is re-run even when the rollout is paused or aborted meanwhile (instances may be down); nothing new starts", () => {
  for (const control of ["pause", "abort"] as const) {
    const first = drive(rollout(2, { strategy: "job", waves: "1,100%" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "restart" ? "hold" : ok(c)));
    const held = first.held[0]!;
    const controlled = transition(first.doc, { kind: control, now: at(2), actor: "bob" });
    const after = drive(controlled.doc, { kind: "step-finished", now: at(3), targetId: "t1", index: held.index, result: interruptedAt(1, []) });
    assert.deepEqual(after.ran, ["t1:restart"], `${control}: the re-run runs; no health check, no second wave`);
    const restart = after.doc.targets[0]!.steps[held.index]!;
    assert.equal(restart.state, "succeeded");
    assert.equal(restart.attempt, 2);
    assert.equal(after.doc.targets[1]!.status, control === "abort" ? "skipped" : "pending");
    if (control === "abort") {
      assert.equal(after.doc.status, "aborted");
      assert.equal(after.doc.targets[0]!.status, "aborted");
    } else {
      assert.equal(after.doc.status, "running");
    }
  }
});

test("an interrupted step that is not safe to repeat is not re-run: the target fails", () => {
  const run = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.step.name === "verify" ? interruptedAt(1, ["x"]) : ok(c)));
  const t = run.doc.targets[0]!;
  assert.equal(run.ran.filter((r) => r === "t1:verify").length, 1);
  assert.equal(t.status, "failed");
  assert.match(t.message, /verify .* was interrupted on agent a1/);
  assert.ok(run.ran.includes("t1:start"), "the stopped apps are started again");
});

// ------------------------------------------------------------------ an interrupted online migration (job strategy)

test("job: a migrate the agent was killed in is re-run forward with a new operation id, resuming the interrupted one; the rollout succeeds", () => {
  let runs = 0;
  const run = drive(rollout(1, { strategy: "job" }), { kind: "start", now: at(0) }, (c) => {
    if (c.step.name !== "migrate") return ok(c);
    runs++;
    return runs === 1 ? interruptedAt(1, [c.step.operationId]) : ok(c);
  });
  assert.equal(run.doc.status, "succeeded", run.doc.message);
  assert.deepEqual(run.ran, ["t1:precheck", "t1:backup", "t1:migrate", "t1:migrate", "t1:verify", "t1:restart", "t1:health"]);
  const migrate = run.doc.targets[0]!.steps.find((s) => s.name === "migrate")!;
  assert.equal(migrate.attempt, 2);
  assert.equal(migrate.operationId, "r-1.t1.2.migrate.a1.a2");
  assert.deepEqual(migrate.resumes, ["r-1.t1.2.migrate.a1"], "the re-run resumes the interrupted migrate");
  assert.equal(migrate.detail, "migrated (run 2: the agent was interrupted in the earlier run)");
  assert.equal(run.doc.targets[0]!.status, "succeeded");
  assert.deepEqual(run.doc.targets[0]!.revisionAfter, [NEW]);
});

test("job: the re-run of an interrupted migrate says it goes forward", () => {
  const first = drive(rollout(1, { strategy: "job" }), { kind: "start", now: at(0) }, (c) => (c.step.name === "migrate" ? "hold" : ok(c)));
  const held = first.held[0]!;
  const next = transition(first.doc, {
    kind: "step-finished",
    now: at(2),
    targetId: "t1",
    index: held.index,
    result: interruptedAt(1, [held.step.operationId]),
  });
  const rerun = next.commands.find((c) => c.kind === "run-step");
  assert.ok(rerun && rerun.kind === "run-step" && rerun.step.name === "migrate");
  assert.deepEqual(rerun.step.resumes, [held.step.operationId]);
  assert.match(next.doc.targets[0]!.steps[held.index]!.detail, /online migration goes forward from the revision the database reached: run 2 of at most 3/);
});

test("job: a forward re-run that finds the database off its path ends needs-restore, saying a restore loses the app's writes", () => {
  let runs = 0;
  const run = drive(rollout(1, { strategy: "job" }), { kind: "start", now: at(0) }, (c) => {
    if (c.step.name !== "migrate") return ok(c);
    runs++;
    return runs === 1
      ? interruptedAt(1, [c.step.operationId])
      : { outcome: "failed", code: "PRECONDITION_FAILED", effect: "needs-restore", detail: "part of a revision left behind" };
  });
  const t = run.doc.targets[0]!;
  assert.equal(t.status, "needs-restore");
  assert.match(
    t.message,
    /NOT restored: restore it with flotilla restore t1 bk-t1 --yes \(the app kept writing during the migration: restoring loses every row it wrote since backup bk-t1\)$/,
  );
  assert.equal(run.doc.status, "failed");
});

test("maintenance: an interrupted migrate is never re-run (its apps were stopped: the backup is exact)", () => {
  const run = drive(rollout(1), { kind: "start", now: at(0) }, (c) => (c.step.name === "migrate" ? interruptedAt(1, [c.step.operationId]) : ok(c)));
  const t = run.doc.targets[0]!;
  assert.equal(run.ran.filter((r) => r === "t1:migrate").length, 1);
  assert.equal(t.status, "failed");
  assert.ok(run.ran.includes("t1:start"), "the stopped apps are started again");
});
