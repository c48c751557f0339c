import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "./errors.js";
import {
  STRATEGIES,
  checkCron,
  checkGate,
  checkMaxFailures,
  checkSelector,
  checkTimeZone,
  checkWaves,
  compileRolloutRequest,
  compileScheduleRequest,
  gateTimeoutMs,
  orInvalidArgument,
  waveSizes,
  checkStrategy,
  describeProblems,
  strategyName,
  strategyToProto,
} from "./rollout-request.js";
import { Strategy as ProtoStrategy, StrategySchema } from "./gen/flotilla/v1/controller_pb.js";

test("one request: every field compiled, normalized and frozen", () => {
  const r = compileRolloutRequest(
    { selector: "env=prod, region=eu", strategy: "job", waves: "1,25%", maxFailures: "2", window: "1h30m", gate: "manual:30m", allowBreaking: true },
    { strategyRequired: true },
  );
  assert.ok(r.ok);
  assert.deepEqual(r.value, {
    selector: "env=prod,region=eu",
    toRevision: "head",
    strategy: "job",
    waves: "1,25%,100%",
    maxFailures: 2,
    window: "1h30m",
    gate: "manual:30m",
    allowBreaking: true,
    schedule: "",
  });
  assert.ok(Object.isFrozen(r.value));
  assert.match(r.notes[0] ?? "", /added a last wave of 100%/);
});

test("every problem at once, each with its field path", () => {
  const r = compileRolloutRequest(
    { selector: "env", strategy: "canary", toRevision: "a-b", waves: "3,2", maxFailures: -1, window: "2 hours", gate: "auto" },
    { strategyRequired: true },
  );
  assert.ok(!r.ok);
  assert.deepEqual(
    r.problems.map((p) => p.field),
    ["selector", "to_revision", "strategy", "waves", "max_failures", "window", "gate"],
  );
  assert.throws(
    () => orInvalidArgument(r),
    (e: unknown) =>
      e instanceof FlotillaError &&
      e.code === "INVALID_ARGUMENT" &&
      /^selector: .*strategy: "canary" is not a strategy; use one of maintenance, job, blue-green/.test(e.message),
  );
});

test("strategy: required to start, maintenance by default for a plan", () => {
  const start = compileRolloutRequest({ selector: "env=prod" }, { strategyRequired: true });
  assert.ok(!start.ok);
  assert.equal(start.problems[0]?.field, "strategy");
  const plan = compileRolloutRequest({ selector: "env=prod" }, { strategyRequired: false });
  assert.ok(plan.ok);
  assert.equal(plan.value.strategy, "maintenance");
  assert.deepEqual([...STRATEGIES], ["maintenance", "job", "blue-green"]);
});

test("selector: non-empty values, each key once", () => {
  assert.ok(checkSelector("id=webui-1").ok);
  for (const bad of ["env=", "env", "env=prod,,x=y", "env=a,env=b", "env=prod;rm -rf"]) assert.equal(checkSelector(bad).ok, false, bad);
  const missing = compileRolloutRequest({ selector: " ", strategy: "job" }, { strategyRequired: true });
  assert.ok(!missing.ok);
  assert.match(missing.problems[0]?.message ?? "", /is required/);
});

test("waves: ascending counts and percentages; sizes never empty", () => {
  for (const bad of ["", "0", "0%", "101%", "50%,25%", "3,2", "1.5", "1,,2"]) assert.equal(checkWaves(bad).ok, false, bad);
  assert.deepEqual(waveSizes("1,25%,100%", 8), [1, 1, 6]);
  assert.deepEqual(waveSizes("5,100%", 2), [2]);
});

test("gate, limits, cron, time zone", () => {
  assert.ok(checkGate("").ok && checkGate("manual").ok && checkGate("manual:2h").ok);
  assert.equal(checkGate("manual:soon").ok, false);
  assert.equal(gateTimeoutMs("manual:30m"), 1_800_000);
  assert.equal(gateTimeoutMs("manual"), undefined);
  assert.equal(checkMaxFailures("x").ok, false);
  const cron = checkCron(" */5  1-3 * jan-mar MON ");
  assert.ok(cron.ok);
  assert.equal(cron.value, "*/5 1-3 * jan-mar MON");
  for (const bad of ["0 3 * *", "60 3 * * *", "0 24 * * *", "0 3 0 * *", "0 3 * 13 *", "0 3 * * 8", "0 3 * * $(id)", "5-1 * * * *"])
    assert.equal(checkCron(bad).ok, false, bad);
  assert.ok(checkTimeZone("Europe/Berlin").ok);
  assert.equal(checkTimeZone("Mars/Olympus").ok, false);
});

test("schedule: name, cron and zone, with a 2h window by default", () => {
  const s = compileScheduleRequest({ name: "sunday-prod", cron: "0 3 * * 0", timeZone: "UTC", selector: "env=prod", strategy: "maintenance" });
  assert.ok(s.ok);
  assert.equal(s.value.rollout.window, "2h");
  assert.equal(s.value.rollout.schedule, "sunday-prod");
  const bad = compileScheduleRequest({ name: "-x", cron: "0 3 * *", selector: "env=prod", strategy: "job" });
  assert.ok(!bad.ok);
  assert.deepEqual(
    bad.problems.map((p) => p.field),
    ["name", "cron"],
  );
});

test("the strategy names come from the proto enum Strategy: one per value, in its order, both ways", () => {
  assert.equal(STRATEGIES.length, StrategySchema.values.length - 1, "every enum value but UNSPECIFIED is a strategy");
  for (const name of STRATEGIES) assert.equal(strategyName(strategyToProto(name)), name);
  assert.equal(strategyToProto("blue-green"), ProtoStrategy.BLUE_GREEN);
  assert.equal(strategyName(ProtoStrategy.UNSPECIFIED), "");
  assert.equal(strategyName(42 as ProtoStrategy), "");
});

test("strategy by enum number (gRPC): known numbers compile to the name, UNSPECIFIED means not given, others are refused", () => {
  assert.deepEqual(checkStrategy(ProtoStrategy.JOB), { ok: true, value: "job" });
  const r = compileRolloutRequest({ selector: "env=prod", strategy: ProtoStrategy.BLUE_GREEN }, { strategyRequired: true });
  assert.ok(r.ok);
  assert.equal(r.value.strategy, "blue-green");
  const none = compileRolloutRequest({ selector: "env=prod", strategy: ProtoStrategy.UNSPECIFIED }, { strategyRequired: true });
  assert.ok(!none.ok);
  assert.match(describeProblems(none.problems), /^strategy: is required; use one of maintenance, job, blue-green$/);
  const odd = compileRolloutRequest({ selector: "env=prod", strategy: 7 as ProtoStrategy }, { strategyRequired: true });
  assert.ok(!odd.ok);
  assert.match(describeProblems(odd.problems), /^strategy: 7 is not a strategy number; use one of maintenance \(1\), job \(2\), blue-green \(3\)$/);
});
