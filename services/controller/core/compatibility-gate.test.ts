import { test } from "node:test";
import assert from "node:assert/strict";
import { type PlanFacts, type RevisionClass, checkCompatibility, classesFromPlan, strategiesAllowed } from "./compatibility-gate.js";

const rev = (id: string, compatibility: string, compatibilityReason = "") => ({ id, compatibility, compatibilityReason });
const plan = (over: Partial<PlanFacts>): PlanFacts => ({ pending: [], additiveOnly: false, revisions: [], ...over });
const cls = (id: string, compatibility: RevisionClass["compatibility"], reason = ""): RevisionClass => ({ id, compatibility, reason });

test("classes come from the agent's per-revision classification", () => {
  const p = plan({
    pending: [{ id: "a" }, { id: "b" }, { id: "c" }],
    revisions: [rev("a", "additive"), rev("b", "breaking", "drops column user.name"), rev("c", "unknown", "runs Python")],
  });
  assert.deepEqual(classesFromPlan(p), [cls("a", "additive"), cls("b", "breaking", "drops column user.name"), cls("c", "unknown", "runs Python")]);
});

test("an agent that does not classify revisions one by one is read through its whole-plan verdict", () => {
  assert.deepEqual(classesFromPlan(plan({ pending: [{ id: "a" }], additiveOnly: true })), [cls("a", "additive")]);
  const notAdditive = classesFromPlan(plan({ pending: [{ id: "a" }, { id: "b" }], additiveOnly: false }));
  assert.deepEqual(
    notAdditive.map((r) => r.compatibility),
    ["unknown", "unknown"],
  );
  assert.match(notAdditive[0]!.reason, /not purely additive/);
  // Per-revision entries with the field still empty (older agent): the plan verdict decides.
  assert.deepEqual(classesFromPlan(plan({ pending: [{ id: "a" }], additiveOnly: true, revisions: [rev("a", "")] })), [cls("a", "additive")]);
  assert.equal(classesFromPlan(plan({ pending: [{ id: "a" }], additiveOnly: false, revisions: [rev("a", "")] }))[0]!.compatibility, "unknown");
});

test("strategies allowed: all when every revision is additive (or none is pending), else maintenance only", () => {
  assert.deepEqual(strategiesAllowed([]), ["maintenance", "job", "blue-green"]);
  assert.deepEqual(strategiesAllowed([cls("a", "additive")]), ["maintenance", "job", "blue-green"]);
  assert.deepEqual(strategiesAllowed([cls("a", "additive"), cls("b", "unknown")]), ["maintenance"]);
  assert.deepEqual(strategiesAllowed([cls("b", "breaking")]), ["maintenance"]);
});

test("job and blue-green are refused over a revision that is not additive, naming each once", () => {
  const byTarget = new Map([
    ["t1", [cls("a", "additive"), cls("b", "breaking", "drops column user.name")]],
    ["t2", [cls("b", "breaking", "drops column user.name"), cls("c", "unknown", "runs Python")]],
    ["t3", [cls("a", "additive")]],
  ]);
  for (const strategy of ["job", "blue-green"] as const) {
    const v = checkCompatibility(strategy, byTarget, false);
    assert.ok(!v.ok);
    assert.deepEqual([...v.offending.keys()], ["t1", "t2"]);
    assert.equal(v.message.split("b is breaking").length, 2, "each revision is named once");
    assert.match(v.message, new RegExp(`^strategy ${strategy} runs old and new application code side by side`));
    assert.match(v.message, /c is unknown \(runs Python\)/);
    assert.match(v.message, /Nothing was started\. Use --strategy maintenance/);
  }
});

test("--allow-breaking lets them run and lists what it let through (for the audit)", () => {
  const v = checkCompatibility(
    "job",
    new Map([
      ["t1", [cls("a", "additive"), cls("b", "breaking")]],
      ["t2", [cls("b", "breaking")]],
    ]),
    true,
  );
  assert.ok(v.ok);
  assert.deepEqual(
    v.overridden.map((r) => r.id),
    ["b"],
  );
});

test("maintenance is never gated; additive-only revisions pass every strategy", () => {
  const breaking = new Map([["t1", [cls("b", "breaking")]]]);
  assert.deepEqual(checkCompatibility("maintenance", breaking, false), { ok: true, overridden: [] });
  const additive = new Map([
    ["t1", [cls("a", "additive")]],
    ["t2", []],
  ]);
  assert.deepEqual(checkCompatibility("job", additive, false), { ok: true, overridden: [] });
  assert.deepEqual(checkCompatibility("blue-green", additive, false), { ok: true, overridden: [] });
});
