import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { RolloutEventSchema, RolloutPlanSchema, RolloutSpecSchema, ScheduleSchema, Strategy, StrategySchema } from "./gen/flotilla/v1/controller_pb.js";
import { EnumValueError, enumShortName, enumShortNames, fromApiJson, toApiJson } from "./proto-json.js";

test("a Flotilla enum value's short name: no prefix, lower case, - for _; the zero value is empty", () => {
  assert.deepEqual(StrategySchema.values.map(enumShortName), ["", "maintenance", "job", "blue-green"]);
  assert.deepEqual(enumShortNames(StrategySchema), ["maintenance", "job", "blue-green"]);
});

test("answers spell enums by short name, at every depth (message, list, oneof)", () => {
  const plan = create(RolloutPlanSchema, {
    spec: { selector: "env=prod", strategy: Strategy.BLUE_GREEN },
    targets: [{ targetId: "t1", allowedStrategies: [Strategy.MAINTENANCE, Strategy.JOB] }],
  });
  const json = toApiJson(RolloutPlanSchema, plan) as { spec: { strategy: string }; targets: { allowedStrategies: string[] }[] };
  assert.equal(json.spec.strategy, "blue-green");
  assert.deepEqual(json.targets[0]!.allowedStrategies, ["maintenance", "job"]);
  const event = create(RolloutEventSchema, { event: { case: "snapshot", value: { id: "r1", spec: { strategy: Strategy.JOB } } } });
  assert.equal((toApiJson(RolloutEventSchema, event) as { snapshot: { spec: { strategy: string } } }).snapshot.spec.strategy, "job");
  // Not given: "" in an answer, left out of a request.
  assert.equal((toApiJson(ScheduleSchema, create(ScheduleSchema, { name: "s" })) as { strategy: string }).strategy, "");
  assert.equal("strategy" in (toApiJson(RolloutSpecSchema, create(RolloutSpecSchema, { selector: "a=b" }), { alwaysEmitImplicit: false }) as object), false);
});

test("requests take the short name, the canonical name or the number, under the JSON or the proto field name", () => {
  for (const given of ["blue-green", "STRATEGY_BLUE_GREEN", 3]) {
    assert.equal(fromApiJson(RolloutSpecSchema, { selector: "a=b", strategy: given }).strategy, Strategy.BLUE_GREEN, String(given));
  }
  assert.equal(fromApiJson(RolloutSpecSchema, { strategy: "" }).strategy, Strategy.UNSPECIFIED);
  const plan = fromApiJson(RolloutPlanSchema, { targets: [{ allowed_strategies: ["job", "STRATEGY_MAINTENANCE"] }] });
  assert.deepEqual(plan.targets[0]!.allowedStrategies, [Strategy.JOB, Strategy.MAINTENANCE]);
  // Round trip: what an answer says, a request may send back.
  const spec = create(RolloutSpecSchema, { selector: "a=b", strategy: Strategy.JOB, waves: "1,100%" });
  assert.deepEqual(fromApiJson(RolloutSpecSchema, toApiJson(RolloutSpecSchema, spec)), spec);
});

test("a value that is no spelling of the enum is refused naming the field path and the values it takes", () => {
  for (const given of ["canary", "Job", true, { x: 1 }]) {
    assert.throws(
      () => fromApiJson(RolloutPlanSchema, { spec: { strategy: given } }),
      (e: unknown) =>
        e instanceof EnumValueError && e.message === `spec.strategy: ${JSON.stringify(given)} is not a Strategy value; use one of maintenance, job, blue-green`,
    );
  }
  assert.throws(() => fromApiJson(RolloutPlanSchema, { targets: [{ allowedStrategies: ["job", "fast"] }] }), /targets\[0\]\.allowed_strategies\[1\]: "fast"/);
});
