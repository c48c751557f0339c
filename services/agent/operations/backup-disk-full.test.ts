// A full disk during a backup, on a real (small) tmpfs: the backup operation
// fails cleanly and the backup folder keeps only complete, verified backups —
// no temp files, no artifact without its manifest.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import pino from "pino";
import { BackupCatalog } from "../adapters/backup-catalog.js";
import { SqliteDatabase } from "../adapters/sqlite-database.js";
import { SqliteJournal } from "../adapters/sqlite-journal.js";
import type { AgentConfig } from "../config.js";
import type { BackupManifest, DatabaseAdapter } from "../core/ports.js";
import { OperationContext, type OpEvent, type TargetRuntime } from "./context.js";
import { backup } from "./backup.js";

let dir: string;
let mnt: string;
let mounted = false;
let dbFile: string;

/** Fills the mount until at most `leaveBytes` are free (a filler file per call). */
function fill(leaveBytes: number, name: string): void {
  const st = execFileSync("df", ["-B1", "--output=avail", mnt]).toString().trim().split("\n")[1]!;
  const free = Number(st);
  const want = Math.max(0, free - leaveBytes);
  const fd = openSync(path.join(mnt, name), "w");
  const chunk = Buffer.alloc(4096, 1);
  try {
    for (let done = 0; done + chunk.length <= want; done += chunk.length) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
  } finally {
    closeSync(fd);
  }
}

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-enospc-"));
  mnt = path.join(dir, "backups");
  mkdirSync(mnt);
  execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt]);
  mounted = true;
  dbFile = path.join(dir, "app.db");
  const db = new Database(dbFile);
  db.exec("CREATE TABLE alembic_version (version_num TEXT PRIMARY KEY); INSERT INTO alembic_version VALUES ('abc');");
  db.exec("CREATE TABLE chat (id INTEGER PRIMARY KEY, body TEXT)");
  const ins = db.prepare("INSERT INTO chat (body) VALUES (?)");
  db.transaction(() => {
    for (let i = 0; i < 600; i++) ins.run(`${i} ${"x".repeat(1000)}`);
  })();
  db.close();
});

after(() => {
  if (mounted) execFileSync("umount", [mnt]);
  rmSync(dir, { recursive: true, force: true });
});

function harness(
  folder: string,
  wrap: (db: DatabaseAdapter) => DatabaseAdapter = (d) => d,
): { ctx: OperationContext; catalog: BackupCatalog; journal: SqliteJournal } {
  const real = new SqliteDatabase({ path: dbFile });
  // The free-space precheck passes (the disk fills while the backup is written, as when another writer shares it).
  const db = wrap(Object.assign(Object.create(real) as SqliteDatabase, { freeBytes: async () => Number.MAX_SAFE_INTEGER }));
  const catalog = new BackupCatalog(folder, "t1", "sqlite");
  const journal = new SqliteJournal(mkdtempSync(path.join(dir, "journal-")));
  journal.open();
  const t = { config: { id: "t1", kind: "sqlite", backups: { dir: folder, keep: 5 } }, db, catalog, apps: [] } as unknown as TargetRuntime;
  const ctx = new OperationContext({
    config: { agentId: "a1", targets: [], apps: [] } as unknown as AgentConfig,
    targets: new Map([["t1", t]]),
    journal,
    appControl: {} as never,
    log: pino({ level: "silent" }),
    heartbeatMs: 60_000,
    runHook: async () => ({ ok: true, detail: "" }),
    fileExists: () => false,
    killOrphans: async () => [],
  });
  return { ctx, catalog, journal };
}

async function runBackup(ctx: OperationContext, id: string): Promise<OpEvent[]> {
  const events: OpEvent[] = [];
  await backup(ctx, { targetId: "t1", operationId: id, rolloutId: "", verify: true }, (e) => events.push(e));
  return events;
}

function resultOf(events: OpEvent[]): Extract<OpEvent, { kind: "result" }>["result"] {
  const r = events.find((e) => e.kind === "result");
  assert.ok(r && r.kind === "result");
  return r.result;
}

/** Backup folder entries that are not filler files. */
function backupFiles(folder: string): string[] {
  return readdirSync(folder)
    .filter((n) => !n.startsWith("filler"))
    .sort();
}

test("disk full while the backup copy is written: the operation fails and no temp file is left", async () => {
  const folder = path.join(mnt, "a");
  mkdirSync(folder);
  const { ctx, journal } = harness(folder);
  fill(100 * 1024, "filler-a");
  const r = resultOf(await runBackup(ctx, "op-a"));
  assert.equal(r.status, "failed");
  assert.deepEqual(backupFiles(folder), []);
  assert.equal(journal.lockHolder("t1"), undefined, "the target lock is released");
  rmSync(path.join(mnt, "filler-a"));
});

test("disk full when the manifest is written: the complete artifact is removed with it (no backup without a manifest)", async () => {
  const folder = path.join(mnt, "b");
  mkdirSync(folder);
  // Enough room for the copy (and its temp file), none for the manifest written after it.
  let filled = false;
  const { ctx } = harness(folder, (db) =>
    Object.assign(Object.create(db) as DatabaseAdapter, {
      backup: async (dest: string, onProgress: Parameters<DatabaseAdapter["backup"]>[1], signal?: AbortSignal) => {
        const a = await db.backup(dest, onProgress, signal);
        fill(0, "filler-b");
        filled = true;
        return a;
      },
    }),
  );
  const r = resultOf(await runBackup(ctx, "op-b"));
  assert.equal(filled, true);
  assert.equal(r.status, "failed");
  assert.match(r.message, /ENOSPC|space|full/i);
  assert.deepEqual(backupFiles(folder), []);
  rmSync(path.join(mnt, "filler-b"));
});

test("a backup that fails verification is not kept; leftovers of a crash (temp files, an artifact without manifest) are swept", async () => {
  const folder = path.join(mnt, "c");
  mkdirSync(folder);
  // The backup's own check of the finished file is the verification the operation uses.
  const { ctx, catalog } = harness(folder, (db) =>
    Object.assign(Object.create(db) as DatabaseAdapter, {
      backup: async (dest: string, onProgress: Parameters<DatabaseAdapter["backup"]>[1], signal?: AbortSignal) => ({
        ...(await db.backup(dest, onProgress, signal)),
        proof: { ok: false, detail: "FAILED: integrity_check: page 7 is never used" },
      }),
    }),
  );
  const r = resultOf(await runBackup(ctx, "op-c"));
  assert.equal(r.status, "failed");
  assert.match(r.message, /page 7 is never used/);
  assert.deepEqual(backupFiles(folder), []);
  // Without a proof from the adapter, the operation reads the file again to verify it.
  const reread = harness(folder, (db) =>
    Object.assign(Object.create(db) as DatabaseAdapter, {
      backup: async (dest: string, onProgress: Parameters<DatabaseAdapter["backup"]>[1], signal?: AbortSignal) => {
        const { proof: _dropped, ...artifact } = await db.backup(dest, onProgress, signal);
        return artifact;
      },
      verifyBackup: async (_m: BackupManifest) => ({ ok: false, detail: "sha256 differs" }),
    }),
  );
  const r2 = resultOf(await runBackup(reread.ctx, "op-c2"));
  assert.equal(r2.status, "failed");
  assert.match(r2.message, /sha256 differs/);
  assert.deepEqual(backupFiles(folder), []);
  // What a kill -9 can leave: a temp copy and a complete artifact whose manifest was never written.
  for (const n of ["t1-x.db.tmp-abc", "t1-y.db", "t1-y.json.tmp-1"]) closeSync(openSync(path.join(folder, n), "w"));
  await catalog.prepare();
  assert.deepEqual(backupFiles(folder), []);

  // With room again, a backup is taken, verified, and is all the folder holds.
  const ok = harness(folder);
  const good = resultOf(await runBackup(ok.ctx, "op-d"));
  assert.equal(good.status, "succeeded", good.message);
  const id = good.backup!.id;
  assert.deepEqual(backupFiles(folder), [`${id}.db`, `${id}.json`]);
  const saved = await ok.catalog.get(id);
  assert.equal(saved.verified, true);
  assert.match(saved.verification, /^sha256 of the finished file recorded; .*integrity_check ok; schema ok; row counts ok \(2 tables\); revisions ok \(abc\)$/);
  assert.equal("proof" in saved, false, "the proof is not saved in the manifest");
});
