// Recover after a kill -9 of the agent, for each kind of interrupted
// operation, on a real SQLite database, backup catalog and journal (the kill is
// reproduced by leaving the journal as a killed agent leaves it: a running row
// holding the target lock, marked interrupted at the next start).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import pino from "pino";
import { BackupCatalog } from "../adapters/backup-catalog.js";
import { SqliteDatabase } from "../adapters/sqlite-database.js";
import { SqliteJournal } from "../adapters/sqlite-journal.js";
import type { AgentConfig } from "../config.js";
import type { AppInstance, DatabaseAdapter } from "../core/ports.js";
import { OperationContext, type OpEvent, type OpResult, type TargetRuntime } from "./context.js";
import { backup, restore as restoreOp } from "./backup.js";
import { startApps, stopApps } from "./apps.js";
import { recover } from "./recover.js";
import { RevisionGraph } from "../core/revision-graph.js";
import type { AlembicPort } from "../core/ports.js";

let dir: string;

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-recover-"));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

interface Harness {
  ctx: OperationContext;
  journal: SqliteJournal;
  catalog: BackupCatalog;
  dbFile: string;
  /** App instance states the fake app control reports and changes. */
  apps: Map<string, "running" | "stopped">;
  /** Pids the fake database reports as holding it. */
  holders: number[];
  /** Revisions the fake Alembic was asked to upgrade to. */
  upgrades: string[];
  /** Set to hold app stops until released. */
  gate?: Promise<void>;
}

function harness(name: string): Harness {
  const dbFile = path.join(dir, `${name}.db`);
  const sq = new Database(dbFile);
  sq.exec("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY); INSERT INTO alembic_version VALUES ('abc');");
  sq.exec("CREATE TABLE chat (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO chat (body) VALUES ('one'), ('two');");
  sq.close();
  const h = { apps: new Map([["app-1", "running" as const]]) as Harness["apps"], holders: [] as number[] } as Harness;
  const real = new SqliteDatabase({ path: dbFile });
  const db = Object.assign(Object.create(real) as DatabaseAdapter, {
    freeBytes: async () => Number.MAX_SAFE_INTEGER,
    holders: async () => h.holders.map((pid) => ({ pid, description: "app" })),
  });
  const catalog = new BackupCatalog(path.join(dir, `${name}-backups`), "t1", "sqlite");
  const journal = new SqliteJournal(path.join(dir, `${name}-journal`));
  journal.open();
  const apps: AppInstance[] = [{ id: "app-1", target: "t1", color: "" } as unknown as AppInstance];
  // A fake Alembic over the real database: abc → def → ghi; an upgrade writes the revision it reaches.
  const graph = RevisionGraph.fromHistory(
    ["abc", "def", "ghi"].map((id, i, all) => ({
      id,
      down: i === 0 ? [] : [all[i - 1]!],
      message: "",
      isHead: false,
      isBranchpoint: false,
      isMergepoint: false,
      branchLabels: [],
      dependsOn: [],
    })),
  );
  h.upgrades = [];
  const alembic = {
    graph: async () => graph,
    upgrade: async (to: string) => {
      h.upgrades.push(to);
      const sq2 = new Database(dbFile);
      sq2.prepare("UPDATE alembic_version SET version_num = ?").run(to);
      sq2.close();
      return { ok: true, exitCode: 0, stdout: "", stderr: "", durationMs: 1, steps: [] };
    },
  } as unknown as AlembicPort;
  const t = {
    alembic,
    config: { id: "t1", kind: "sqlite", lockTimeoutMs: 1000, alembic: { timeoutMs: 60_000 }, backups: { dir: path.join(dir, `${name}-backups`), keep: 5 } },
    db,
    catalog,
    apps,
  } as unknown as TargetRuntime;
  const appControl = {
    state: async (a: AppInstance) => ({ state: h.apps.get(a.id) ?? "stopped", detail: "" }),
    stop: async (a: AppInstance) => {
      await h.gate;
      h.apps.set(a.id, "stopped");
      return { ok: true, detail: "stopped" };
    },
    start: async (a: AppInstance) => {
      h.apps.set(a.id, "running");
      return { ok: true, detail: "started" };
    },
  };
  h.ctx = new OperationContext({
    config: { agentId: "a1", targets: [], apps: [] } as unknown as AgentConfig,
    targets: new Map([["t1", t]]),
    journal,
    appControl: appControl as never,
    log: pino({ level: "silent" }),
    heartbeatMs: 60_000,
    runHook: async () => ({ ok: true, detail: "" }),
    fileExists: () => false,
    killOrphans: async () => [],
  });
  Object.assign(h, { journal, catalog, dbFile });
  return h;
}

async function result(p: (emit: (e: OpEvent) => void) => Promise<OpResult>): Promise<OpResult> {
  return p(() => undefined);
}

function rows(dbFile: string): string[] {
  const sq = new Database(dbFile, { readonly: true });
  try {
    return (sq.prepare("SELECT body FROM chat ORDER BY id").all() as { body: string }[]).map((r) => r.body);
  } finally {
    sq.close();
  }
}

/** What a kill -9 leaves: the operation's row running with the target lock; the next start marks it interrupted. */
function killedDuring(h: Harness, op: { id: string; kind: string; toRevision?: string; backupId?: string }): void {
  h.journal.begin({ id: op.id, targetId: "t1", kind: op.kind, ...(op.toRevision ? { toRevision: op.toRevision } : {}) }, true);
  if (op.backupId) h.journal.update(op.id, { backupId: op.backupId });
  h.journal.markInterrupted();
}

test("stop and start run under the target lock, so an interrupted one is found and recoverable", async () => {
  const h = harness("lock");
  let release!: () => void;
  h.gate = new Promise<void>((r) => {
    release = r;
  });
  const stopping = result((emit) => stopApps(h.ctx, { targetId: "t1", operationId: "stop-1", color: "" }, emit));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(h.journal.lockHolder("t1"), "stop-1", "the stop holds the target lock while it runs");
  release();
  assert.equal((await stopping).status, "succeeded");
  assert.equal(h.journal.lockHolder("t1"), undefined);
  assert.equal((await result((emit) => startApps(h.ctx, { targetId: "t1", operationId: "start-1", color: "" }, emit))).status, "succeeded");
});

test("an interrupted stop is completed by accept and reverted by restore; the lock is released", async () => {
  const h = harness("stop");
  killedDuring(h, { id: "stop-2", kind: "stop-apps" });
  const done = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "stop-2", action: "accept", newOperationId: "rec-1" }, emit));
  assert.equal(done.status, "succeeded", done.message);
  assert.equal(h.apps.get("app-1"), "stopped");
  assert.equal(h.journal.lockHolder("t1"), undefined);
  assert.equal(h.journal.get("stop-2")?.state, "recovered");

  killedDuring(h, { id: "stop-3", kind: "stop-apps" });
  h.apps.set("app-1", "stopped");
  const undone = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "stop-3", action: "restore", newOperationId: "rec-2" }, emit));
  assert.equal(undone.status, "succeeded", undone.message);
  assert.equal(h.apps.get("app-1"), "running", "reverting a stop starts the app again");
  assert.equal(h.journal.lockHolder("t1"), undefined);
});

test("a recover cut off by a second kill is taken over: recovering its operation again (or the recover itself) resolves it", async () => {
  for (const asked of ["stop-4", "rec-5", ""]) {
    const h = harness(`cut-${asked || "holder"}`);
    killedDuring(h, { id: "stop-4", kind: "stop-apps" });
    // The first recover started (journaled with its subject, holding the lock) and the agent was killed again.
    h.journal.begin({ id: "rec-5", targetId: "t1", kind: "recover", toRevision: "recovers:stop-4" }, false);
    h.journal.transferLock("t1", "stop-4", "rec-5");
    h.journal.markInterrupted();
    const done = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: asked, action: "accept", newOperationId: "rec-6" }, emit));
    assert.equal(done.status, "succeeded", `${asked}: ${done.message}`);
    assert.equal(h.apps.get("app-1"), "stopped", "the interrupted stop was completed");
    assert.equal(h.journal.lockHolder("t1"), undefined);
    assert.equal(h.journal.get("stop-4")?.state, "recovered");
    assert.equal(h.journal.get("rec-5")?.state, "recovered");
    assert.match(h.journal.get("rec-5")?.message ?? "", /taken over by rec-6/);
    assert.equal(h.journal.get("rec-6")?.toRevision, "recovers:stop-4", "a recover journals what it resolves");
    assert.deepEqual(h.journal.interrupted("t1"), []);
  }
});

test("a recover refuses when the lock is held by another operation's recover", async () => {
  const h = harness("cut-other");
  killedDuring(h, { id: "stop-7", kind: "stop-apps" });
  h.journal.begin({ id: "rec-7", targetId: "t1", kind: "recover", toRevision: "recovers:stop-7" }, false);
  h.journal.transferLock("t1", "stop-7", "rec-7");
  h.journal.markInterrupted();
  h.journal.begin({ id: "stop-8", targetId: "t1", kind: "stop-apps" }, false);
  h.journal.markInterrupted();
  const refused = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "stop-8", action: "accept", newOperationId: "rec-8" }, emit));
  assert.equal(refused.status, "refused");
  assert.equal(refused.errorCode, "TARGET_BUSY");
  assert.equal(h.journal.lockHolder("t1"), "rec-7");
});

test("a refused recover leaves the lock with the interrupted operation, and a later recover succeeds", async () => {
  const h = harness("refused");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-1", rolloutId: "", verify: true }, emit));
  assert.equal(b.status, "succeeded", b.message);
  killedDuring(h, { id: "mig-1", kind: "migrate", toRevision: "def", backupId: b.backup!.id });
  h.holders = [4242];
  const refused = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "mig-1", action: "restore", newOperationId: "rec-3" }, emit));
  assert.equal(refused.status, "refused");
  assert.equal(refused.errorCode, "APP_STILL_RUNNING");
  assert.equal(h.journal.lockHolder("t1"), "mig-1", "the interrupted operation still holds the lock");
  assert.equal(h.journal.get("mig-1")?.state, "interrupted");
  h.holders = [];
  const ok = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "mig-1", action: "restore", newOperationId: "rec-4" }, emit));
  assert.equal(ok.status, "succeeded", ok.message);
  assert.equal(ok.restored, true);
  assert.equal(h.journal.lockHolder("t1"), undefined);
});

test("an interrupted backup is discarded, never restored: rows written since are kept", async () => {
  const h = harness("backup");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-2", rolloutId: "", verify: true }, emit));
  assert.equal(b.status, "succeeded", b.message);
  // The same backup, as if the agent had been killed right after recording it.
  killedDuring(h, { id: "b-3", kind: "backup", backupId: b.backup!.id });
  const sq = new Database(h.dbFile);
  sq.exec("INSERT INTO chat (body) VALUES ('written after the backup')");
  sq.close();
  for (const action of ["restore", "accept"] as const) {
    if (action === "accept") killedDuring(h, { id: "b-4", kind: "backup" });
    const r = await result((emit) =>
      recover(h.ctx, { targetId: "t1", operationId: action === "restore" ? "b-3" : "b-4", action, newOperationId: `rec-${action}` }, emit),
    );
    assert.equal(r.status, "succeeded", r.message);
    assert.equal(r.restored, false);
    assert.deepEqual(rows(h.dbFile), ["one", "two", "written after the backup"]);
    assert.equal(h.journal.lockHolder("t1"), undefined);
  }
  assert.equal(
    readdirSync(path.join(dir, "backup-backups")).some((n) => n.startsWith(b.backup!.id)),
    false,
    "the interrupted backup is gone",
  );
});

test("a backup damaged after it was verified is refused by restore, and the database is not touched", async () => {
  const h = harness("corrupt");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-5", rolloutId: "", verify: true }, emit));
  assert.equal(b.status, "succeeded", b.message);
  const sq = new Database(h.dbFile);
  sq.exec("INSERT INTO chat (body) VALUES ('three')");
  sq.close();
  const fd = openSync(b.backup!.path, "r+");
  writeSync(fd, Buffer.alloc(32, 0x5a), 0, 32, Math.floor(statSync(b.backup!.path).size / 2));
  closeSync(fd);
  h.apps.set("app-1", "stopped");
  const r = await result((emit) => restoreOp(h.ctx, { targetId: "t1", backupId: b.backup!.id, operationId: "r-1", manageApps: false }, emit));
  assert.equal(r.status, "refused");
  assert.equal(r.errorCode, "BACKUP_UNVERIFIED");
  assert.deepEqual(rows(h.dbFile), ["one", "two", "three"]);
  assert.equal(h.journal.lockHolder("t1"), undefined);
});

function sql(dbFile: string, text: string): void {
  const sq = new Database(dbFile);
  sq.exec(text);
  sq.close();
}

test("forward: an online migrate cut off at a revision on its path goes on to the wanted revision; the app's rows are kept", async () => {
  const h = harness("forward");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-f", rolloutId: "", verify: true }, emit));
  assert.equal(b.status, "succeeded", b.message);
  killedDuring(h, { id: "mig-f", kind: "migrate", toRevision: "ghi", backupId: b.backup!.id });
  h.journal.update("mig-f", { revisionBefore: ["abc"] });
  // Revision def was committed before the kill, and the running app wrote a row since the backup.
  sql(h.dbFile, "UPDATE alembic_version SET version_num = 'def'; INSERT INTO chat (body) VALUES ('written by the app')");
  const done = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "mig-f", action: "forward", newOperationId: "rec-f" }, emit));
  assert.equal(done.status, "succeeded", done.message);
  assert.equal(done.effect, "changed");
  assert.equal(done.restored, false);
  assert.deepEqual(h.upgrades, ["ghi"]);
  assert.deepEqual(done.revisionAfter, ["ghi"]);
  assert.deepEqual(rows(h.dbFile), ["one", "two", "written by the app"]);
  assert.equal(h.journal.lockHolder("t1"), undefined);
  assert.equal(h.journal.get("mig-f")?.state, "recovered");
});

test("forward: a database already at the wanted revision is accepted without running anything", async () => {
  const h = harness("forward-at");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-a", rolloutId: "", verify: true }, emit));
  killedDuring(h, { id: "mig-a", kind: "migrate", toRevision: "ghi", backupId: b.backup!.id });
  h.journal.update("mig-a", { revisionBefore: ["abc"] });
  sql(h.dbFile, "UPDATE alembic_version SET version_num = 'ghi'");
  const done = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "mig-a", action: "forward", newOperationId: "rec-a" }, emit));
  assert.equal(done.status, "succeeded", done.message);
  assert.deepEqual(h.upgrades, []);
  assert.equal(h.journal.lockHolder("t1"), undefined);
});

test("forward: a revision left half-applied is not resumed; needs-restore says the app's writes would be lost and nothing is touched", async () => {
  const h = harness("forward-partial");
  const b = await result((emit) => backup(h.ctx, { targetId: "t1", operationId: "b-p", rolloutId: "", verify: true }, emit));
  killedDuring(h, { id: "mig-p", kind: "migrate", toRevision: "ghi", backupId: b.backup!.id });
  h.journal.update("mig-p", { revisionBefore: ["abc"] });
  // Revision def's DDL committed (pysqlite commits DDL as it runs) but its version row did not.
  sql(h.dbFile, "ALTER TABLE chat ADD COLUMN pinned BOOLEAN; INSERT INTO chat (body) VALUES ('written by the app')");
  const refused = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "mig-p", action: "forward", newOperationId: "rec-p" }, emit));
  assert.equal(refused.status, "refused", refused.message);
  assert.equal(refused.effect, "needs-restore");
  assert.match(refused.message, /LOSES every row the app wrote to t1 since that backup/);
  assert.deepEqual(h.upgrades, [], "nothing ran");
  assert.deepEqual(rows(h.dbFile), ["one", "two", "written by the app"], "nothing was restored");
  assert.equal(h.journal.lockHolder("t1"), "mig-p", "the interrupted migrate keeps the lock for a person");
  assert.equal(h.journal.get("mig-p")?.state, "interrupted");
});

test("forward applies only to an interrupted migrate", async () => {
  const h = harness("forward-kind");
  killedDuring(h, { id: "stop-f", kind: "stop-apps" });
  const refused = await result((emit) => recover(h.ctx, { targetId: "t1", operationId: "stop-f", action: "forward", newOperationId: "rec-k" }, emit));
  assert.equal(refused.status, "refused");
  assert.equal(refused.errorCode, "INVALID_ARGUMENT");
  assert.equal(h.journal.lockHolder("t1"), "stop-f");
});
