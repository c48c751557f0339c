/**
 * The agent end to end on PostgreSQL: real server, pg_dump/pg_restore, alembic;
 * one database shared by app instances on two hosts.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { CANARY_PASSWORD, CANARY_SECRET, Fleet, HEAD_REVISION, OLD_REVISION, dumpDatabase, run, type AgentClient } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

let fleet: Fleet;

/** Plain-text pg_dump of a database (schema and data). */
async function pgDump(url: string): Promise<string> {
  const r = await run(["pg_dump", "--no-owner", "--no-privileges", url]);
  assert.equal(r.code, 0, r.stderr);
  // pg_dump 17.6+ wraps the dump in \restrict/\unrestrict with a random key: not part of the database.
  return r.stdout
    .split("\n")
    .filter((l) => !/^\\(un)?restrict /.test(l))
    .join("\n");
}
let a1: AgentClient;
let a2: AgentClient;

before(async () => {
  fleet = new Fleet({
    agents: ["a1", "a2"],
    noController: true,
    targets: [
      { id: "p-shared", kind: "postgresql", owner: "a1", apps: [{ agent: "a1" }, { agent: "a2" }] },
      { id: "p-fail", kind: "postgresql", owner: "a1", failAt: "0a7b8c9d0e1f" },
      { id: "p-lock", kind: "postgresql", owner: "a2" },
    ],
  });
  await fleet.start();
  a1 = fleet.agentClient("a1");
  a2 = fleet.agentClient("a2");
});

after(async () => {
  await fleet?.stop();
});

test("sessions of app instances on two hosts block the migration until both are stopped", async () => {
  const before = await dumpDatabase(fleet.urls.get("p-shared")!);
  const held = await collect(a1.migrate({ targetId: "p-shared", toRevision: "head", operationId: "pg-held", takeBackup: true }));
  assert.equal(held.result.status, "refused");
  assert.equal(held.result.errorCode, "APP_STILL_RUNNING");
  assert.match(held.result.message, /p-shared-app-1|other session/);
  assert.equal(await dumpDatabase(fleet.urls.get("p-shared")!), before);
  for (const [c, id] of [
    [a1, "pg-stop-1"],
    [a2, "pg-stop-2"],
  ] as const) {
    const r = await collect(c.stopApps({ targetId: "p-shared", operationId: id }));
    assert.equal(r.result.status, "succeeded", r.result.message);
  }
  const m = await collect(a1.migrate({ targetId: "p-shared", toRevision: "head", operationId: "pg-migrate", takeBackup: true }));
  assert.equal(m.result.status, "succeeded", m.result.message);
  assert.deepEqual(m.result.revisionAfter, [HEAD_REVISION]);
  assert.equal(m.result.timings.length, 5);
  assert.ok(m.lines.some((l) => /PostgresqlImpl/.test(l)));
  assert.ok(m.result.backup?.verified);
  assert.match(m.result.backup!.verification, /pg_restore|full read/i);
  for (const [c, id] of [
    [a1, "pg-start-1"],
    [a2, "pg-start-2"],
  ] as const) {
    const r = await collect(c.startApps({ targetId: "p-shared", operationId: id }));
    assert.equal(r.result.status, "succeeded", r.result.message);
  }
  assert.deepEqual(await fleet.revisionOf("p-shared"), [HEAD_REVISION]);
});

test("a failure at revision 4 of 5 leaves the database byte-for-byte at its old revision, without a restore (one Alembic run, one transaction)", async () => {
  const url = fleet.urls.get("p-fail")!;
  const before = await dumpDatabase(url);
  const pgBefore = await pgDump(url);
  const m = await collect(a1.migrate({ targetId: "p-fail", toRevision: "head", operationId: "pg-fail", takeBackup: true }));
  assert.equal(m.result.status, "failed");
  assert.equal(m.result.effect, "none", m.result.message);
  assert.equal(m.result.restored, false, m.result.message);
  assert.match(m.result.message, /failed at revision 0a7b8c9d0e1f \(4 of 5\)/);
  assert.equal(m.result.details["failedRevision"], "0a7b8c9d0e1f");
  assert.deepEqual(m.result.revisionAfter, [OLD_REVISION]);
  assert.equal(m.steps.filter((x) => x.name === "restore").length, 0, "no restore step ran");
  assert.equal(await dumpDatabase(url), before);
  assert.equal(await pgDump(url), pgBefore, "pg_dump before = after");
  // Progress named the revisions n/N as they started.
  assert.deepEqual(
    [...new Set(m.revisionProgress.map((p) => `${p.index}/${p.count} ${p.revision}`))],
    ["1/5 d4c3b2a1e5f6", "2/5 e5f4a3b2c1d0", "3/5 f6a5b4c3d2e1", "4/5 0a7b8c9d0e1f"],
  );
});

test("lock_timeout: a session holding a lock makes the migration fail fast instead of hanging", async () => {
  const url = fleet.urls.get("p-lock")!;
  const before = await dumpDatabase(url);
  const blocker = new pg.Client({ connectionString: url, application_name: "blocker" });
  await blocker.connect();
  try {
    await blocker.query("BEGIN");
    await blocker.query("LOCK TABLE chat IN ACCESS SHARE MODE");
    const m = await collect(
      a2.migrate({ targetId: "p-lock", toRevision: "head", operationId: "pg-lock", takeBackup: true, online: true, lockTimeoutMs: 1000 }),
    );
    assert.equal(m.result.status, "failed");
    assert.equal(m.result.failureClass, "lock", m.result.message);
    assert.equal(m.result.restored, false, "nothing committed, nothing to restore");
    assert.equal(m.result.effect, "none", m.result.message);
  } finally {
    await blocker.query("ROLLBACK").catch(() => undefined);
    await blocker.end();
  }
  assert.equal(await dumpDatabase(url), before);
});

test("the database password and WEBUI_SECRET_KEY never appear in logs or results", async () => {
  const logs = fleet.logs();
  assert.equal(logs.includes(CANARY_PASSWORD), false);
  assert.equal(logs.includes(CANARY_SECRET), false);
  const list = await a1.listBackups({ targetId: "p-shared" });
  assert.equal(JSON.stringify(list.backups, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)).includes(CANARY_PASSWORD), false);
  const d = await a1.diagnose({ targetId: "p-shared" });
  assert.equal(JSON.stringify(d.findings).includes(CANARY_PASSWORD), false);
});
