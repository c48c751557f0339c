// The health guard in front of the AgentService, with a fake service and a
// fake registry: what a broken target answers, and that healthy targets and
// app control pass straight through.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";
import type { CallContext, ServiceImpl } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import { targetHealth, type TargetHealth } from "../core/target-health.js";
import { withTargetHealth } from "./target-health-guard.js";

type Impl = ServiceImpl<typeof AgentService.method>;

const BROKEN = targetHealth({
  targetId: "bad",
  kind: "sqlite",
  secretProblems: [{ key: "alembic.env.WEBUI_SECRET_KEY", ref: { file: "/run/secrets/k" }, state: "empty", detail: "" }],
  alembicDir: { path: "/app", kind: "dir" },
  alembicIni: { path: "/app/alembic.ini", kind: "file", configured: false },
  command: { argv0: "alembic", found: true },
});

function setup(): { guarded: Impl; calls: string[]; checks: string[] } {
  const calls: string[] = [];
  const checks: string[] = [];
  const health: Record<string, TargetHealth> = { bad: BROKEN, good: { state: "ok", problems: [] } };
  const stream = (name: string) =>
    async function* () {
      calls.push(name);
      yield { event: { case: "result" as const, value: { status: "succeeded", kind: name } } };
    };
  const method = (name: string): unknown => {
    if (name === "getStatus")
      return async (req: { targetId: string }) => {
        calls.push("getStatus");
        return { targetId: req.targetId, current: ["abc"], error: "" };
      };
    if (name === "diagnose")
      return async () => {
        calls.push("diagnose");
        return { findings: [], problems: false };
      };
    if (name === "plan")
      return async () => {
        calls.push("plan");
        return {};
      };
    return stream(name);
  };
  // A plain object with every method of the service, as agentServiceImpl returns.
  const inner = Object.fromEntries(Object.keys(AgentService.method).map((name) => [name, method(name)])) as unknown as Impl;
  const guarded = withTargetHealth(inner, {
    has: (id) => id in health,
    check: async (id) => {
      checks.push(id);
      return health[id];
    },
  });
  return { guarded, calls, checks };
}

const ctx = {} as CallContext;

async function drain(it: AsyncIterable<unknown>): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for await (const ev of it) out.push((ev as { event: { value: Record<string, unknown> } }).event.value);
  return out;
}

test("an operation on a broken target is refused with TARGET_BROKEN naming the reason and its fix; the service is never reached", async () => {
  const { guarded, calls } = setup();
  const events = await drain(guarded.migrate({ targetId: "bad", operationId: "op-1" } as never, ctx));
  assert.equal(events.length, 1);
  assert.equal(events[0]!.status, "refused");
  assert.equal(events[0]!.errorCode, "TARGET_BROKEN");
  assert.equal(events[0]!.operationId, "op-1");
  assert.equal(events[0]!.kind, "migrate");
  assert.equal(events[0]!.durationMs, 0n, "a complete result (metrics and clients read its duration)");
  assert.match(String(events[0]!.message), /target bad is broken.*secret file \/run\/secrets\/k is empty \(fix: write/);
  for (const name of ["backup", "restore", "downgrade", "stamp", "clone", "switch", "rehearse", "verifyBackup", "drill"] as const) {
    const [r] = await drain((guarded[name] as (req: unknown, c: CallContext) => AsyncIterable<unknown>)({ targetId: "bad", operationId: "x" }, ctx));
    assert.equal(r!.errorCode, "TARGET_BROKEN", name);
  }
  const [rec] = await drain(guarded.recover({ targetId: "bad", operationId: "old", newOperationId: "new" } as never, ctx));
  assert.equal(rec!.operationId, "new");
  await assert.rejects(
    guarded.plan({ targetId: "bad", toRevision: "head" } as never, ctx),
    (e: unknown) => e instanceof FlotillaError && e.code === "TARGET_BROKEN",
  );
  assert.deepEqual(calls, []);
});

test("status of a broken target says broken with each problem and keeps what could be read; diagnose lists each reason with its fix", async () => {
  const { guarded } = setup();
  const s = (await guarded.getStatus({ targetId: "bad" } as never, ctx)) as { state: string; problems: string[]; current: string[]; error: string };
  assert.equal(s.state, "broken");
  assert.deepEqual(s.current, ["abc"]);
  assert.equal(s.problems.length, 1);
  assert.match(s.problems[0]!, /is empty; fix: write the secret WEBUI_SECRET_KEY/);
  assert.match(s.error, /^target is broken \(/);
  const d = (await guarded.diagnose({ targetId: "bad" } as never, ctx)) as { problems: boolean; findings: { code: string; severity: string; fix: string }[] };
  assert.equal(d.problems, true);
  assert.deepEqual(
    d.findings.map((f) => [f.code, f.severity]),
    [
      ["secret-empty", "error"],
      ["checklist-deferred", "info"],
    ],
  );
});

test("healthy targets, unknown ids and app control pass straight through; a move is refused when either end is broken", async () => {
  const { guarded, calls, checks } = setup();
  assert.equal((await drain(guarded.migrate({ targetId: "good", operationId: "m" } as never, ctx)))[0]!.status, "succeeded");
  assert.equal(((await guarded.getStatus({ targetId: "good" } as never, ctx)) as { state: string }).state, "ok");
  await drain(guarded.stopApps({ targetId: "bad", operationId: "s" } as never, ctx));
  await drain(guarded.startApps({ targetId: "bad", operationId: "s2" } as never, ctx));
  await drain(guarded.migrate({ targetId: "nope", operationId: "n" } as never, ctx));
  assert.deepEqual(calls, ["migrate", "getStatus", "stopApps", "startApps", "migrate"]);
  assert.ok(!checks.includes("nope"), "an id the agent does not have is left to the service's NOT_FOUND");
  const [mv] = await drain(guarded.move({ fromTargetId: "good", toTargetId: "bad", operationId: "mv" } as never, ctx));
  assert.equal(mv!.errorCode, "TARGET_BROKEN");
  assert.equal(mv!.kind, "move");
  assert.ok(!calls.includes("move"));
});
