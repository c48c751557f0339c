import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentMetrics } from "./metrics.js";

function value(text: string, line: RegExp): number | undefined {
  const m = text.split("\n").find((l) => line.test(l));
  return m === undefined ? undefined : Number(m.split(" ").at(-1));
}

test("instrument counts each streamed result by kind and status and passes every event through unchanged", async () => {
  const metrics = new AgentMetrics({ lastVerifiedBackups: async () => [], now: () => 0 });
  const events = [
    { event: { case: "progress", value: { line: "x" } } },
    { event: { case: "result", value: { kind: "migrate", status: "succeeded", durationMs: 1500n } } },
  ];
  const impl = {
    async *migrate() {
      yield* events;
    },
    // A refusal without a duration (as a guard may answer) is counted, never an error.
    async *backup() {
      yield { event: { case: "result", value: { kind: "backup", status: "refused" } } };
    },
    async getInfo() {
      return { agentId: "a" };
    },
  };
  const wrapped = metrics.instrument(impl);
  const seen: unknown[] = [];
  for await (const e of wrapped.migrate()) seen.push(e);
  for await (const e of wrapped.backup()) seen.push(e);
  assert.deepEqual(seen.slice(0, 2), events);
  assert.deepEqual(await wrapped.getInfo(), { agentId: "a" });
  const text = await metrics.text();
  assert.equal(value(text, /^flotilla_agent_operations_total\{kind="migrate",status="succeeded"\}/), 1);
  assert.equal(value(text, /^flotilla_agent_operations_total\{kind="backup",status="refused"\}/), 1);
  assert.equal(value(text, /^flotilla_agent_operation_duration_seconds_sum\{kind="migrate",status="succeeded"\}/), 1.5);
});

test("last backup age per target, none for a target without a verified backup", async () => {
  const now = Date.parse("2030-01-01T01:00:00Z");
  const metrics = new AgentMetrics({
    now: () => now,
    lastVerifiedBackups: async () => [{ targetId: "a", createdAt: "2030-01-01T00:00:00Z", sizeBytes: 42 }, { targetId: "b" }],
  });
  const text = await metrics.text();
  assert.equal(value(text, /^flotilla_agent_last_backup_age_seconds\{target="a"\}/), 3600);
  assert.equal(value(text, /^flotilla_agent_last_backup_bytes\{target="a"\}/), 42);
  assert.equal(value(text, /target="b"/), undefined);
});
