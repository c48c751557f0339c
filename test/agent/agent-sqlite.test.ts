/**
 * The agent end to end on SQLite: a real agent process, real gRPC on loopback,
 * the real alembic CLI and the Open WebUI-shaped fixture.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync, openSync, writeSync, closeSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { CANARY_SECRET, Fleet, HEAD_REVISION, OLD_REVISION, alembic, dumpDatabase, run, type AgentClient } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

let fleet: Fleet;
let a1: AgentClient;
const sqlitePath = (id: string): string => fleet.urls.get(id)!.slice("sqlite:///".length);

before(async () => {
  fleet = new Fleet({
    agents: ["a1", "a2"],
    noController: true,
    agentEnv: { FLOTILLA_HEARTBEAT_MS: "1000" },
    targets: [
      {
        id: "s-quiet",
        kind: "sqlite",
        owner: "a1",
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: { FIXTURE_PROGRESS: "0", FIXTURE_SLEEP_MS: "1500", FIXTURE_BATCH: "20" },
      },
      { id: "s-happy", kind: "sqlite", owner: "a1", apps: [{ agent: "a1" }] },
      { id: "s-fail", kind: "sqlite", owner: "a1", failAt: "0a7b8c9d0e1f" },
      { id: "s-branch", kind: "sqlite", owner: "a1", ini: "alembic-branch.ini" },
      { id: "s-skew", kind: "sqlite", owner: "a1" },
      { id: "s-nosecret", kind: "sqlite", owner: "a1", noSecret: true },
      { id: "s-misc", kind: "sqlite", owner: "a1" },
      { id: "s-trap", kind: "sqlite", owner: "a1" },
      { id: "s-race", kind: "sqlite", owner: "a1" },
      { id: "s-lock", kind: "sqlite", owner: "a1" },
      { id: "s-dup", kind: "sqlite", owner: "a1", revision: "e5f4a3b2c1d0", dupEmails: 1 },
      { id: "s-kill", kind: "sqlite", owner: "a2", seed: { users: 20, chats: 80, msgs: 2 }, alembicEnv: { FIXTURE_SLEEP_MS: "1500", FIXTURE_BATCH: "10" } },
    ],
  });
  await fleet.start();
  a1 = fleet.agentClient("a1");
});

after(async () => {
  await fleet?.stop();
});

test("status reads revisions from the database and pending revisions from the cached graph", async () => {
  const s = await a1.getStatus({ targetId: "s-happy" });
  assert.deepEqual(s.current, [OLD_REVISION]);
  assert.deepEqual(s.heads, [HEAD_REVISION]);
  assert.equal(s.currentKnown, true);
  assert.deepEqual(
    s.pending.map((p) => p.id),
    ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", HEAD_REVISION],
  );
  assert.equal(s.apps[0]?.state, "running");
  await assert.rejects(a1.getStatus({ targetId: "nope" }), /no target "nope"/);
});

test("migrate refuses without a verified backup and while the app holds the file, changing nothing", async () => {
  const before = await dumpDatabase(fleet.urls.get("s-happy")!);
  const noBackup = await collect(a1.migrate({ targetId: "s-happy", toRevision: "head", operationId: "t-nobackup" }));
  assert.equal(noBackup.result.status, "refused");
  assert.equal(noBackup.result.errorCode, "BACKUP_UNVERIFIED");
  const held = await collect(a1.migrate({ targetId: "s-happy", toRevision: "head", operationId: "t-held", takeBackup: true }));
  assert.equal(held.result.status, "refused");
  assert.equal(held.result.errorCode, "APP_STILL_RUNNING");
  assert.match(held.result.message, /s-happy-app-1|pid \d+/);
  assert.equal(await dumpDatabase(fleet.urls.get("s-happy")!), before);
});

test("stop → migrate (backup, verify, one revision at a time, streamed) → start", async () => {
  const stop = await collect(a1.stopApps({ targetId: "s-happy", operationId: "t-stop" }));
  assert.equal(stop.result.status, "succeeded", stop.result.message);
  const m = await collect(a1.migrate({ targetId: "s-happy", toRevision: "head", operationId: "t-migrate", takeBackup: true }));
  assert.equal(m.result.status, "succeeded", m.result.message);
  assert.deepEqual(m.result.revisionBefore, [OLD_REVISION]);
  assert.deepEqual(m.result.revisionAfter, [HEAD_REVISION]);
  assert.equal(m.result.timings.length, 5);
  assert.deepEqual(
    m.result.timings.map((t) => t.toRevision),
    ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", HEAD_REVISION],
  );
  assert.equal(m.lines.filter((l) => /Running upgrade/.test(l)).length, 5);
  assert.ok(m.result.backup?.verified, "the backup was verified before migrating");
  assert.deepEqual(
    m.steps
      .filter((s) => s.state === "succeeded")
      .map((s) => s.name)
      .slice(0, 2),
    ["backup", "verify-backup"],
  );
  const start = await collect(a1.startApps({ targetId: "s-happy", operationId: "t-start" }));
  assert.equal(start.result.status, "succeeded", start.result.message);
  const s = await a1.getStatus({ targetId: "s-happy" });
  assert.deepEqual(s.current, [HEAD_REVISION]);
  assert.equal(s.pending.length, 0);
  assert.equal(s.apps[0]?.state, "running");
  assert.equal(s.lastVerifiedBackup?.id, m.result.backup?.id);
  const again = await collect(a1.migrate({ targetId: "s-happy", toRevision: "head", operationId: "t-again", takeBackup: true, online: true }));
  assert.equal(again.result.status, "succeeded");
  assert.match(again.result.message, /already at/);
});

test("a revision failing half-way on SQLite is restored automatically and the database is exactly as before", async () => {
  const url = fleet.urls.get("s-fail")!;
  const before = await dumpDatabase(url);
  const m = await collect(a1.migrate({ targetId: "s-fail", toRevision: "head", operationId: "t-fail", takeBackup: true }));
  assert.equal(m.result.status, "failed");
  assert.equal(m.result.errorCode, "MIGRATION_FAILED");
  assert.equal(m.result.restored, true);
  assert.match(m.result.message, /0a7b8c9d0e1f/);
  assert.match(m.result.message, /restored/);
  assert.equal(m.result.timings.length, 3, "three revisions applied before the failure");
  assert.deepEqual(m.result.revisionAfter, [OLD_REVISION]);
  assert.equal(await dumpDatabase(url), before);
});

test("several heads: upgrade to head is refused; diagnose names the heads", async () => {
  const m = await collect(a1.migrate({ targetId: "s-branch", toRevision: "head", operationId: "t-heads", takeBackup: true }));
  assert.equal(m.result.status, "refused");
  assert.equal(m.result.errorCode, "MULTIPLE_HEADS");
  const d = await a1.diagnose({ targetId: "s-branch" });
  assert.equal(d.problems, true);
  const f = d.findings.find((x) => x.code === "multiple-heads");
  assert.ok(f, "multiple-heads finding");
  assert.match(f.what, /9c9c9c9c9c9c/);
});

test("a database revision unknown to the code is refused; stamp only with a legitimate reason", async () => {
  const db = new Database(sqlitePath("s-skew"));
  db.prepare("UPDATE alembic_version SET version_num = '9f0c9cd09105'").run();
  db.close();
  const s = await a1.getStatus({ targetId: "s-skew" });
  assert.equal(s.currentKnown, false);
  const m = await collect(a1.migrate({ targetId: "s-skew", toRevision: "head", operationId: "t-skew", takeBackup: true }));
  assert.equal(m.result.status, "refused");
  assert.equal(m.result.errorCode, "UNKNOWN_REVISION");
  assert.match(m.result.message, /never stamp/);
  const d = await a1.diagnose({ targetId: "s-skew" });
  assert.ok(d.findings.some((x) => x.code === "version-skew" && x.severity === "error"));
  const bad = await collect(a1.stamp({ targetId: "s-skew", revision: OLD_REVISION, reason: "fix-it", operationId: "t-stamp-bad" }));
  assert.equal(bad.result.errorCode, "STAMP_REFUSED");
  const head = await collect(a1.stamp({ targetId: "s-skew", revision: "head", reason: "imported-backup", operationId: "t-stamp-head" }));
  assert.equal(head.result.errorCode, "STAMP_REFUSED");
  const ok = await collect(a1.stamp({ targetId: "s-skew", revision: OLD_REVISION, reason: "imported-backup", operationId: "t-stamp-ok" }));
  assert.equal(ok.result.status, "succeeded", ok.result.message);
  assert.deepEqual(await fleet.revisionOf("s-skew"), [OLD_REVISION]);
  assert.ok(ok.result.backup?.verified, "stamp takes a verified backup first");
});

test("diagnose reports a missing WEBUI_SECRET_KEY and a leftover batch table", async () => {
  const d = await a1.diagnose({ targetId: "s-nosecret" });
  assert.ok(
    d.findings.some((x) => x.code === "secret-missing" && x.severity === "error"),
    JSON.stringify(d.findings.map((f) => f.code)),
  );
  // Leave a failed batch migration behind by hand (what a crashed run leaves), then diagnose.
  const fail = await alembic(fleet.urls.get("s-dup")!, ["upgrade", "f6a5b4c3d2e1"]);
  assert.equal(fail.code, 1);
  assert.match(fail.stderr, /UNIQUE constraint failed: _alembic_tmp_user\.email/);
  const d2 = await a1.diagnose({ targetId: "s-dup" });
  assert.ok(d2.findings.some((x) => x.code === "batch-leftover" && x.severity === "error"));
  const m = await collect(a1.migrate({ targetId: "s-dup", toRevision: "head", operationId: "t-leftover", takeBackup: true }));
  assert.equal(m.result.status, "refused");
  assert.match(m.result.message, /_alembic_tmp_user/);
});

test("diagnose finds the duplicate-column trap after a partial run by hand", async () => {
  const url = fleet.urls.get("s-trap")!;
  const up = await alembic(url, ["upgrade", "f6a5b4c3d2e1"]);
  assert.equal(up.code, 0, up.stderr);
  const partial = await alembic(url, ["upgrade", "head"], { FIXTURE_FAIL_AT: "0a7b8c9d0e1f" });
  assert.equal(partial.code, 1);
  const d = await a1.diagnose({ targetId: "s-trap" });
  const f = d.findings.find((x) => x.code === "partial-apply");
  assert.ok(f, JSON.stringify(d.findings.map((x) => x.code)));
  assert.match(f.what, /archived_at|shared_chat/);
});

test("plan shows pending SQL and says plainly where SQLite batch operations cannot be rendered offline", async () => {
  const p = await a1.plan({ targetId: "s-misc", toRevision: "head" });
  assert.deepEqual(p.current, [OLD_REVISION]);
  assert.equal(p.pending.length, 5);
  assert.equal(p.sqlComplete, false);
  assert.match(p.sql, /ALTER TABLE chat ADD COLUMN pinned/);
  assert.ok(
    p.notes.some((n) => /f6a5b4c3d2e1/.test(n) && /batch/.test(n)),
    p.notes.join("\n"),
  );
  assert.deepEqual(await fleet.revisionOf("s-misc"), [OLD_REVISION], "plan changes nothing");
});

test("rehearse runs the migration on a throwaway copy and leaves the database alone", async () => {
  const before = await dumpDatabase(fleet.urls.get("s-misc")!);
  const r = await collect(a1.rehearse({ targetId: "s-misc", toRevision: "head", operationId: "t-rehearse" }));
  assert.equal(r.result.status, "succeeded", r.result.message);
  assert.equal(r.result.timings.length, 5);
  assert.deepEqual(r.result.revisionAfter, [HEAD_REVISION]);
  assert.equal(await dumpDatabase(fleet.urls.get("s-misc")!), before);
});

test("downgrade needs an explicit data-loss acknowledgement and takes a backup first", async () => {
  const refused = await collect(a1.downgrade({ targetId: "s-misc", toRevision: "b2e1d0c0ffee", operationId: "t-down-no" }));
  assert.equal(refused.result.errorCode, "DATA_LOSS_NOT_ACCEPTED");
  const ok = await collect(a1.downgrade({ targetId: "s-misc", toRevision: "b2e1d0c0ffee", acceptDataLoss: true, operationId: "t-down" }));
  assert.equal(ok.result.status, "succeeded", ok.result.message);
  assert.deepEqual(await fleet.revisionOf("s-misc"), ["b2e1d0c0ffee"]);
  assert.ok(ok.result.backup?.verified);
  // Put it back for the next test.
  const back = await collect(a1.restore({ targetId: "s-misc", backupId: ok.result.backup!.id, operationId: "t-down-restore" }));
  assert.equal(back.result.status, "succeeded", back.result.message);
  assert.deepEqual(await fleet.revisionOf("s-misc"), [OLD_REVISION]);
});

test("backups: listed with verification; a corrupted or truncated backup is refused and the database untouched", async () => {
  const b = await collect(a1.backup({ targetId: "s-misc", operationId: "t-backup", verify: true }));
  assert.equal(b.result.status, "succeeded", b.result.message);
  const info = b.result.backup!;
  assert.match(info.sha256, /^[0-9a-f]{64}$/);
  assert.ok(
    b.lines.some((l) => /bytes/.test(l)),
    "progress mentions bytes",
  );
  const list = await a1.listBackups({ targetId: "s-misc" });
  assert.ok(list.backups.some((x) => x.id === info.id && x.verified));
  const before = await dumpDatabase(fleet.urls.get("s-misc")!);
  // Flip bytes in the middle of the artifact.
  const size = statSync(info.path).size;
  const fd = openSync(info.path, "r+");
  writeSync(fd, Buffer.alloc(64, 0x5a), 0, 64, Math.floor(size / 2));
  closeSync(fd);
  const v = await collect(a1.verifyBackup({ targetId: "s-misc", backupId: info.id, operationId: "t-verify-bad" }));
  assert.equal(v.result.status, "failed");
  assert.match(v.result.message, /sha256/);
  const r = await collect(a1.restore({ targetId: "s-misc", backupId: info.id, operationId: "t-restore-bad" }));
  assert.notEqual(r.result.status, "succeeded");
  assert.equal(await dumpDatabase(fleet.urls.get("s-misc")!), before);
  // Truncated.
  const b2 = await collect(a1.backup({ targetId: "s-misc", operationId: "t-backup2", verify: true }));
  const p2 = b2.result.backup!.path;
  writeFileSync(p2, readFileSync(p2).subarray(0, Math.floor(statSync(p2).size * 0.75)));
  const v2 = await collect(a1.verifyBackup({ targetId: "s-misc", backupId: b2.result.backup!.id, operationId: "t-verify-trunc" }));
  assert.equal(v2.result.status, "failed");
  const bad = await collect(a1.restore({ targetId: "s-misc", backupId: "../../etc/passwd", operationId: "t-restore-path" })).catch((e: Error) => e);
  assert.ok(bad instanceof Error ? /not a backup id/.test(bad.message) : bad.result.status !== "succeeded");
});

test("kill -9 of the agent mid-migration: interrupted after restart, target locked, Recover restores, nothing lost", async () => {
  const a2 = fleet.agentClient("a2");
  const url = fleet.urls.get("s-kill")!;
  const before = await dumpDatabase(url);
  let sawBackfill!: () => void;
  const backfilling = new Promise<void>((r) => (sawBackfill = r));
  const op = collect(a2.migrate({ targetId: "s-kill", toRevision: "head", operationId: "t-kill", takeBackup: true }), (l) => {
    if (/chat meta backfill: [1-9]/.test(l)) sawBackfill();
  }).catch((e: unknown) => e);
  await backfilling;
  await fleet.killAgent("a2", "SIGKILL");
  await op;
  await fleet.startAgent("a2");
  const a2b = fleet.agentClient("a2");
  const s = await a2b.getStatus({ targetId: "s-kill" });
  assert.deepEqual(s.interruptedOperationIds, ["t-kill"]);
  assert.equal(s.busyOperationId, "t-kill");
  const rec = await a2b.getOperation({ operationId: "t-kill" });
  assert.equal(rec.state, "interrupted");
  assert.ok(rec.backupId, "the journal recorded the pre-migration backup");
  const busy = await collect(a2b.migrate({ targetId: "s-kill", toRevision: "head", operationId: "t-kill-2", takeBackup: true }));
  assert.equal(busy.result.errorCode, "TARGET_BUSY");
  assert.match(busy.result.message, /interrupted/);
  const r = await collect(a2b.recover({ targetId: "s-kill", operationId: "t-kill", action: "restore", newOperationId: "t-kill-recover" }));
  assert.equal(r.result.status, "succeeded", r.result.message);
  assert.equal(r.result.restored, true);
  assert.equal(await dumpDatabase(url), before);
  const s2 = await a2b.getStatus({ targetId: "s-kill" });
  assert.equal(s2.busyOperationId, "");
  assert.deepEqual(s2.interruptedOperationIds, []);
});

test("a silent long revision reports that it is still alive", async () => {
  const m = await collect(a1.migrate({ targetId: "s-quiet", toRevision: "d4c3b2a1e5f6", operationId: "t-quiet", takeBackup: true }));
  assert.equal(m.result.status, "succeeded", m.result.message);
  assert.ok(
    m.lines.some((l) => /still running d4c3b2a1e5f6: \d+s elapsed, no output for \d+s/.test(l)),
    m.lines.join("\n"),
  );
});

test("two migrations of one target at once: one runs, the other is refused TARGET_BUSY", async () => {
  const [x, y] = await Promise.all([
    collect(a1.migrate({ targetId: "s-race", toRevision: "head", operationId: "t-race-1", takeBackup: true })),
    collect(a1.migrate({ targetId: "s-race", toRevision: "head", operationId: "t-race-2", takeBackup: true })),
  ]);
  const statuses = [x.result.status, y.result.status].sort();
  assert.deepEqual(statuses, ["refused", "succeeded"]);
  const loser = x.result.status === "refused" ? x : y;
  assert.equal(loser.result.errorCode, "TARGET_BUSY");
  assert.match(loser.result.message, /t-race-[12]/);
  assert.deepEqual(await fleet.revisionOf("s-race"), [HEAD_REVISION]);
  const ops = await a1.listOperations({ targetId: "s-race", limit: 10 });
  assert.equal(ops.operations.filter((o) => o.state === "succeeded").length, 1);
});

test("a reader holding the SQLite file: the migration fails as a lock, and the database is unchanged", async () => {
  const url = fleet.urls.get("s-lock")!;
  const before = await dumpDatabase(url);
  const reader = new Database(sqlitePath("s-lock"));
  reader.prepare("BEGIN").run();
  reader.prepare("SELECT count(*) FROM chat").get();
  try {
    const m = await collect(a1.migrate({ targetId: "s-lock", toRevision: "head", operationId: "t-lock", takeBackup: true, online: true }));
    assert.equal(m.result.status, "failed");
    assert.equal(m.result.failureClass, "lock", m.result.message);
    assert.match(m.result.message, /locked/);
  } finally {
    reader.prepare("ROLLBACK").run();
    reader.close();
  }
  assert.equal(await dumpDatabase(url), before);
});

test("secrets never appear in agent logs or results", async () => {
  const logs = fleet.logs();
  assert.ok(logs.length > 0);
  assert.equal(logs.includes(CANARY_SECRET), false);
  const ops = await a1.listOperations({ limit: 200 });
  assert.equal(JSON.stringify(ops.operations.map((o) => o.message)).includes(CANARY_SECRET), false);
  void mkdirSync;
  void join;
  void run;
});
