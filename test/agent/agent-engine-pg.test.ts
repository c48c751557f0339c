/**
 * The migration engine on PostgreSQL with the real alembic: one Alembic run
 * per migrate, a restore only when a failed run changed something, and
 * needs-restore (never half-migrated) when sessions block that restore.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { Fleet, HEAD_REVISION, OLD_REVISION, run, type AgentClient } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

let fleet: Fleet;
let agent: AgentClient;

async function pgDump(url: string): Promise<string> {
  const r = await run(["pg_dump", "--no-owner", "--no-privileges", url]);
  assert.equal(r.code, 0, r.stderr);
  // pg_dump 17.6+ wraps the dump in \restrict/\unrestrict with a random key: not part of the database.
  return r.stdout
    .split("\n")
    .filter((l) => !/^\\(un)?restrict /.test(l))
    .join("\n");
}

before(async () => {
  fleet = new Fleet({
    agents: ["e1"],
    noController: true,
    targets: [
      // Revisions commit one by one (transaction_per_migration): a failure at 4 of 5 leaves 3 applied.
      { id: "e-txn-fail", kind: "postgresql", owner: "e1", failAt: "0a7b8c9d0e1f", alembicEnv: { FIXTURE_TXN: "per-migration" } },
      { id: "e-txn-lock", kind: "postgresql", owner: "e1", alembicEnv: { FIXTURE_TXN: "per-migration" } },
      { id: "e-eta", kind: "postgresql", owner: "e1" },
    ],
  });
  await fleet.start();
  agent = fleet.agentClient("e1");
});

after(async () => {
  await fleet?.stop();
});

test("revisions that committed before the failure are detected and restored from the backup, exactly", async () => {
  const url = fleet.urls.get("e-txn-fail")!;
  const before = await pgDump(url);
  const m = await collect(agent.migrate({ targetId: "e-txn-fail", toRevision: "head", operationId: "e-fail-1", takeBackup: true }));
  assert.equal(m.result.status, "failed");
  assert.equal(m.result.effect, "restored", m.result.message);
  assert.equal(m.result.restored, true);
  assert.match(m.result.message, /revision 0a7b8c9d0e1f \(4 of 5\)/);
  assert.deepEqual(m.result.revisionAfter, [OLD_REVISION]);
  // The three revisions that ran are timed from their Running lines.
  assert.deepEqual(
    m.result.timings.map((x) => x.toRevision),
    ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1"],
  );
  assert.equal(await pgDump(url), before);
});

test("a session idle in transaction holding a lock: the target ends marked needs-restore naming it, locked, never silently half-migrated; recover restores once it is gone", async () => {
  const url = fleet.urls.get("e-txn-lock")!;
  const before = await pgDump(url);
  const blocker = new pg.Client({ connectionString: url, application_name: "lock-holder" });
  await blocker.connect();
  try {
    await blocker.query("BEGIN");
    // Revision 3 (f6a5b4c3d2e1) alters "user": it waits for this lock and hits lock_timeout after 1 and 2 committed.
    await blocker.query('LOCK TABLE "user" IN ACCESS SHARE MODE');
    const m = await collect(
      agent.migrate({ targetId: "e-txn-lock", toRevision: "head", operationId: "e-lock-1", takeBackup: true, online: true, lockTimeoutMs: 800 }),
    );
    assert.equal(m.result.status, "failed");
    assert.equal(m.result.failureClass, "lock", m.result.message);
    assert.equal(m.result.effect, "needs-restore", m.result.message);
    assert.equal(m.result.restored, false);
    assert.ok(
      m.result.blockingSessions.some((s) => /lock-holder/.test(s) && /idle in transaction/.test(s)),
      m.result.blockingSessions.join("; "),
    );
    assert.match(m.result.message, /flotilla recover e-txn-lock --action restore/);
    // Held: the target stays locked and says why; nothing else may run on it.
    const again = await collect(agent.migrate({ targetId: "e-txn-lock", toRevision: "head", operationId: "e-lock-2", takeBackup: true, online: true }));
    assert.equal(again.result.status, "refused");
    assert.equal(again.result.errorCode, "TARGET_BUSY");
    assert.match(again.result.message, /needs its backup restored/);
    const status = await agent.getStatus({ targetId: "e-txn-lock" });
    assert.deepEqual(status.interruptedOperationIds, ["e-lock-1"]);
    // Recover refuses while the session is still there, and keeps the target held.
    const early = await collect(agent.recover({ targetId: "e-txn-lock", operationId: "", action: "restore", newOperationId: "e-rec-1" }));
    assert.equal(early.result.status, "refused");
    assert.equal(early.result.errorCode, "APP_STILL_RUNNING");
    assert.equal((await agent.getStatus({ targetId: "e-txn-lock" })).busyOperationId, "e-lock-1");
  } finally {
    await blocker.query("ROLLBACK").catch(() => undefined);
    await blocker.end();
  }
  const rec = await collect(agent.recover({ targetId: "e-txn-lock", operationId: "", action: "restore", newOperationId: "e-rec-2" }));
  assert.equal(rec.result.status, "succeeded", rec.result.message);
  assert.equal(rec.result.effect, "restored");
  assert.deepEqual(rec.result.revisionAfter, [OLD_REVISION]);
  assert.equal(await pgDump(url), before);
  assert.equal((await agent.getStatus({ targetId: "e-txn-lock" })).busyOperationId, "");
});

test("a bad --to is refused before anything changes; an up-to-date target runs no step", async () => {
  const url = fleet.urls.get("e-eta")!;
  const before = await pgDump(url);
  for (const to of ["nosuchrev", "b2e1d0c0ffee"]) {
    const r = await collect(agent.migrate({ targetId: "e-eta", toRevision: to, operationId: `e-bad-${to}`, takeBackup: true }));
    assert.equal(r.result.status, "refused", to);
    assert.equal(r.result.errorCode, "INVALID_ARGUMENT", r.result.message);
    assert.equal(r.result.effect, "none");
    assert.deepEqual(r.steps, [], "no step ran (no backup either)");
  }
  await assert.rejects(agent.plan({ targetId: "e-eta", toRevision: "nosuchrev" }), /not in the app's migration history/);
  assert.equal(await pgDump(url), before);
});

test("rehearse times every revision on a scratch copy; plan and the next migrate use those timings for estimates", async () => {
  const url = fleet.urls.get("e-eta")!;
  const before = await pgDump(url);
  const r = await collect(agent.rehearse({ targetId: "e-eta", toRevision: "head", operationId: "e-reh" }));
  assert.equal(r.result.status, "succeeded", r.result.message);
  assert.equal(r.result.details["verdict"], "go");
  assert.equal(r.result.timings.length, 5);
  assert.equal(await pgDump(url), before, "the target is untouched");
  const p = await agent.plan({ targetId: "e-eta", toRevision: "head" });
  assert.equal(p.revisions.length, 5);
  assert.ok(
    p.revisions.every((x) => x.estimateMs > 0n),
    "every revision has an estimate",
  );
  assert.ok(
    p.revisions.every((x) => x.rendered),
    "PostgreSQL renders every fixture revision offline",
  );
  assert.equal(p.revisions.find((x) => x.id === "e5f4a3b2c1d0")?.compatibility, "additive");
  assert.equal(p.revisions.find((x) => x.id === "f6a5b4c3d2e1")?.compatibility, "breaking");
  const m = await collect(agent.migrate({ targetId: "e-eta", toRevision: "head", operationId: "e-eta-1", takeBackup: true }));
  assert.equal(m.result.status, "succeeded", m.result.message);
  assert.equal(m.result.effect, "changed");
  assert.ok(m.revisionProgress.length >= 5);
  assert.ok(
    m.revisionProgress.some((x) => x.index === 1 && x.etaMs > 0),
    "the first revision came with an estimate",
  );
  const same = await collect(agent.migrate({ targetId: "e-eta", toRevision: "head", operationId: "e-eta-2", takeBackup: true }));
  assert.equal(same.result.status, "succeeded");
  assert.equal(same.result.effect, "up-to-date");
  assert.match(same.result.message, /already at .*nothing to do/);
  assert.deepEqual(same.steps, [], "no step ran, not even a backup");
  assert.deepEqual(same.result.revisionAfter, [HEAD_REVISION]);
});
