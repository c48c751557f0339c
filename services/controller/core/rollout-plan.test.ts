import { describe, it, test } from "node:test";
import assert from "node:assert/strict";
import { STRATEGIES } from "../../common/rollout-request.js";
import {
  matchesSelector,
  planTargets,
  preflightVerdict,
  selectorPairs,
  stepsFor,
  upToDateWhenNothingPending,
  waveSizes,
  type InventoryTarget,
} from "./rollout-plan.js";

const t = (id: string, labels: Record<string, string> = {}, appAgents = ["a1"], blueGreen = false): InventoryTarget => ({
  id,
  ownerAgent: "a1",
  appAgents,
  labels,
  blueGreen,
});

test("waves: counts and percentages are cumulative, the last wave takes the rest", () => {
  assert.deepEqual(waveSizes("1,25%,100%", 8), [1, 1, 6]);
  assert.deepEqual(waveSizes("1,100%", 3), [1, 2]);
  assert.deepEqual(waveSizes("", 3), [3]);
  assert.deepEqual(waveSizes("2,100%", 5), [2, 3]);
  assert.deepEqual(waveSizes("1,2,50%,100%", 2), [1, 1]);
});

test("selector: every pair must match; id= selects one target", () => {
  const pairs = selectorPairs("env=prod,region=eu");
  assert.equal(matchesSelector({ id: "x", labels: { env: "prod", region: "eu" } }, pairs), true);
  assert.equal(matchesSelector({ id: "x", labels: { env: "prod" } }, pairs), false);
  assert.equal(matchesSelector({ id: "webui-1", labels: {} }, selectorPairs("id=webui-1")), true);
});

test("maintenance stops every app host before the backup and starts them after verify", () => {
  const names = stepsFor("maintenance", t("db", {}, ["a2", "a1"]), "head").map((s) => `${s.name}@${s.agentId}`);
  assert.deepEqual(names, ["precheck@a1", "stop@a1", "stop@a2", "backup@a1", "migrate@a1", "verify@a1", "start@a1", "start@a2", "health@a1", "health@a2"]);
});

test("blue-green needs a blueGreen target and ends with the switch", () => {
  assert.throws(() => stepsFor("blue-green", t("db"), "head"), /blueGreen/);
  const names = stepsFor("blue-green", t("db", {}, ["a1"], true), "head").map((s) => s.name);
  assert.deepEqual(names, ["precheck", "clone", "migrate-green", "verify", "start-green", "health-green", "switch"]);
});

test("planTargets assigns sorted targets to waves", () => {
  const plan = planTargets("job", [t("c"), t("a"), t("b")], "1,100%", "head");
  assert.deepEqual(
    plan.map((p) => [p.targetId, p.wave]),
    [
      ["a", 0],
      ["b", 1],
      ["c", 1],
    ],
  );
  assert.ok(plan.every((p) => p.steps.every((s) => s.state === "pending")));
});

describe("preflightVerdict", () => {
  it("refuses the whole rollout when any target's plan refused the wanted revision, naming it", () => {
    const v = preflightVerdict([
      { targetId: "a", ok: true, pending: 3 },
      { targetId: "b", ok: false, code: "INVALID_ARGUMENT", message: "revision nosuchrev is not in the app's migration history" },
    ]);
    assert.equal(v.refusal?.code, "INVALID_ARGUMENT");
    assert.match(v.refusal?.message ?? "", /before anything was stopped.*b: revision nosuchrev/);
  });

  it("keeps a single refusal code, and falls back to INVALID_ARGUMENT for mixed ones", () => {
    assert.equal(preflightVerdict([{ targetId: "a", ok: false, code: "MULTIPLE_HEADS", message: "two heads" }]).refusal?.code, "MULTIPLE_HEADS");
    assert.equal(
      preflightVerdict([
        { targetId: "a", ok: false, code: "MULTIPLE_HEADS", message: "x" },
        { targetId: "b", ok: false, code: "UNKNOWN_REVISION", message: "y" },
      ]).refusal?.code,
      "INVALID_ARGUMENT",
    );
  });

  it("an unreachable agent is not a refusal; up-to-date targets are named", () => {
    const v = preflightVerdict([
      { targetId: "a", ok: false, code: "AGENT_UNAVAILABLE", message: "down" },
      { targetId: "b", ok: true, pending: 0 },
      { targetId: "c", ok: true, pending: 2 },
    ]);
    assert.equal(v.refusal, null);
    assert.deepEqual(v.upToDate, ["b"]);
  });
});

test("nothing pending means up to date, except for blue-green (green is still cloned, started and switched to)", () => {
  assert.deepEqual(
    STRATEGIES.filter((s) => !upToDateWhenNothingPending(s)),
    ["blue-green"],
  );
});
