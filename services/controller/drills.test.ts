import { test } from "node:test";
import assert from "node:assert/strict";
import pino from "pino";
import { summariseDrills } from "./drills.js";
import { Scheduler } from "./scheduler.js";
import type { ScheduleDoc } from "./core/ports.js";

test("a drill summary says passed for all, or names the failed targets and the first reason", () => {
  assert.equal(
    summariseDrills([
      { targetId: "a", ok: true, message: "" },
      { targetId: "b", ok: true, message: "" },
    ]),
    "passed: 2 target(s) drilled",
  );
  assert.equal(
    summariseDrills([
      { targetId: "a", ok: true, message: "" },
      { targetId: "b", ok: false, message: "sha256 differs" },
    ]),
    "failed: b of 2 (sha256 differs)",
  );
  assert.match(summariseDrills([]), /^failed: no target matches/);
});

test("a drill schedule fires drills, not a rollout, once per slot, and records the result", async () => {
  const doc: ScheduleDoc = {
    name: "weekly-drill",
    cron: "0 4 * * 0",
    selector: "env=prod",
    strategy: "maintenance",
    window: "2h",
    toRevision: "head",
    waves: "",
    source: "api",
    drill: true,
  };
  let stored = doc;
  const claimed = new Set<string>();
  const audits: { action: string; outcome: string; detail?: string }[] = [];
  const drills: string[] = [];
  const store = {
    listSchedules: async () => [stored],
    claimScheduleFire: async (name: string, slot: string) => (claimed.has(`${name}@${slot}`) ? false : (claimed.add(`${name}@${slot}`), true)),
    upsertSchedule: async (s: ScheduleDoc) => {
      stored = s;
    },
  };
  const engine = {
    start: async () => {
      throw new Error("a drill schedule must not start a rollout");
    },
  };
  const audit = {
    append: async (row: { action: string; outcome: string; detail?: string }) => {
      audits.push(row);
    },
  };
  const scheduler = new Scheduler({
    store: store as never,
    engine: engine as never,
    audit: audit as never,
    log: pino({ level: "silent" }),
    drill: async (selector, actor) => {
      drills.push(`${selector} by ${actor}`);
      return "failed: w2 of 2 (sha256 differs)";
    },
  });
  const slot = "2026-11-29T04:00:00.000Z";
  assert.equal(await scheduler.fire("weekly-drill", slot), "failed: w2 of 2 (sha256 differs)");
  assert.equal(await scheduler.fire("weekly-drill", slot), "already-fired");
  assert.deepEqual(drills, ["env=prod by schedule:weekly-drill"]);
  assert.equal(stored.lastResult, "failed: w2 of 2 (sha256 differs)");
  assert.equal(stored.lastRun, slot);
  assert.deepEqual(
    audits.map((a) => `${a.action}:${a.outcome}`),
    ["schedule.drill:error"],
  );
});
