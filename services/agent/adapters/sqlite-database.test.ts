import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { clearScratch } from "../main.js";
import type { BackupArtifact, DatabaseAdapter } from "../core/ports.js";
import { FlotillaError } from "../../common/errors.js";
import { SqliteDatabase } from "./sqlite-database.js";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const NEEDLE = "NEEDLE-unindexed-7f3a9c";

let root: string;
let n = 0;
function freshDir(): string {
  const d = path.join(root, `case-${++n}`);
  fs.mkdirSync(d);
  return d;
}

/** An Open WebUI-shaped database: alembic_version, user, chat (indexed title), message (unindexed content). */
function makeDb(file: string, opts: { chats?: number; padding?: number; wal?: boolean } = {}): void {
  const chats = opts.chats ?? 200;
  const pad = "p".repeat(opts.padding ?? 100);
  const db = new Database(file);
  try {
    if (opts.wal ?? true) db.pragma("journal_mode = WAL");
    db.exec(`
      CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
      INSERT INTO alembic_version VALUES ('1b8c9d0e1f2a');
      CREATE TABLE user (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, name TEXT);
      CREATE TABLE chat (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES user(id), title TEXT NOT NULL, body TEXT);
      CREATE INDEX ix_chat_title ON chat(title);
      CREATE TABLE message (id INTEGER PRIMARY KEY, chat_id INTEGER, content TEXT);
      CREATE TABLE tick (id INTEGER PRIMARY KEY, at TEXT);
    `);
    const u = db.prepare("INSERT INTO user (email, name) VALUES (?, ?)");
    const c = db.prepare("INSERT INTO chat (user_id, title, body) VALUES (?, ?, ?)");
    const m = db.prepare("INSERT INTO message (chat_id, content) VALUES (?, ?)");
    db.transaction(() => {
      for (let i = 0; i < 10; i++) u.run(`u${i}@example.test`, `User ${i}`);
      for (let i = 0; i < chats; i++) {
        c.run((i % 10) + 1, `title ${i}`, `${pad}${i}`);
        m.run(i + 1, i === Math.floor(chats / 2) ? NEEDLE : `message ${i} ${pad}`);
      }
    })();
  } finally {
    db.close();
  }
}

/** Every table's rows (ordered by rowid) plus the schema, as one comparable value. */
function dump(file: string): unknown {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const schema = db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").all();
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all() as string[];
    const rows: Record<string, unknown[]> = {};
    for (const t of tables) rows[t] = db.prepare(`SELECT * FROM "${t}" ORDER BY rowid`).all();
    return { schema, rows };
  } finally {
    db.close();
  }
}

function sha256Of(file: string): string {
  return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
}

const noProgress = (): void => undefined;

async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp): Promise<FlotillaError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FlotillaError, `expected FlotillaError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (re) assert.match(err.message, re);
    return err;
  }
  assert.fail(`expected rejection with ${code}`);
}

/** A node child process running `script` with the database path as argv[1]; resolves when it prints "ready". */
async function startChild(script: string, dbPath: string, extraArgs: string[] = []): Promise<{ child: ChildProcess; lines: string[]; exited: Promise<void> }> {
  const child = spawn(process.execPath, ["-e", script, dbPath, ...extraArgs], { cwd: REPO, stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let buf = "";
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(line);
        if (line === "ready") resolve();
      }
    });
    child.once("exit", (code) => reject(new Error(`child exited early with ${code}`)));
  });
  return { child, lines, exited };
}

// Commits one row every 50 ms and prints "commit <n>" after each.
const WRITER = `
const Database = require('better-sqlite3');
const db = new Database(process.argv[1], { timeout: 10000 });
db.pragma('journal_mode = WAL');
const ins = db.prepare('INSERT INTO tick (at) VALUES (?)');
let n = 0;
console.log('ready');
setInterval(() => { ins.run(new Date().toISOString()); console.log('commit ' + (++n)); }, 50);
`;

// Holds the database open (with a read) until killed.
const HOLDER = `
const Database = require('better-sqlite3');
const db = new Database(process.argv[1], { readonly: true });
db.prepare('SELECT count(*) FROM chat').get();
console.log('ready');
setInterval(() => {}, 1000);
`;

// Changes data in WAL mode without checkpointing, then dies, leaving a live -wal behind.
const CRASHING_CHANGER = `
const Database = require('better-sqlite3');
const db = new Database(process.argv[1]);
db.pragma('journal_mode = WAL');
db.pragma('wal_autocheckpoint = 0');
db.exec("INSERT INTO chat (user_id, title, body) VALUES (1, 'after backup', 'new')");
db.exec("UPDATE user SET name = 'renamed' WHERE id = 3");
db.exec("DELETE FROM message WHERE id <= 5");
db.exec("CREATE TABLE extra (x INTEGER)");
db.exec("UPDATE alembic_version SET version_num = 'ffffffffffff'");
console.log('ready');
process.kill(process.pid, 'SIGKILL');
`;

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-sqlite-test-"));
});
after(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

describe("SqliteDatabase construction and URLs", () => {
  it("parses sqlite:////abs and sqlite:///rel URLs and round-trips alembicUrl", () => {
    const abs = SqliteDatabase.fromUrl("sqlite:////var/lib/webui/webui.db");
    assert.equal(abs.path, "/var/lib/webui/webui.db");
    assert.equal(abs.alembicUrl(), "sqlite:////var/lib/webui/webui.db");
    const rel = SqliteDatabase.fromUrl("sqlite:///data/webui.db?timeout=5");
    assert.equal(rel.path, path.resolve("data/webui.db"));
    assert.equal(rel.alembicUrl(), `sqlite:///${path.resolve("data/webui.db")}`);
    assert.equal(SqliteDatabase.fromUrl("sqlite+pysqlite:////x/y.db").path, "/x/y.db");
    assert.equal(abs.kind, "sqlite");
  });

  it("refuses in-memory and non-SQLite URLs", () => {
    for (const bad of ["sqlite://", "sqlite:///:memory:", "sqlite:///", "postgresql://u:pw@h/db", "sqlite:/x.db"]) {
      assert.throws(
        () => SqliteDatabase.fromUrl(bad),
        (e: unknown) => e instanceof FlotillaError && e.code === "INVALID_ARGUMENT",
        bad,
      );
    }
  });

  it("does no I/O when constructed; exists() and reads report a missing file", async () => {
    const p = path.join(freshDir(), "missing", "nope.db");
    const db = new SqliteDatabase({ path: p });
    assert.equal(await db.exists(), false);
    assert.equal(fs.existsSync(path.dirname(p)), false);
    await rejectsWith(db.readRevisions(), "NOT_FOUND");
    assert.equal(fs.existsSync(p), false);
  });
});

describe("SqliteDatabase metadata", () => {
  it("reads revisions, tables, columns, counts, schema hash, sizes", async () => {
    const dir = freshDir();
    const p = path.join(dir, "app.db");
    makeDb(p, { chats: 50 });
    const db = new SqliteDatabase({ path: p });
    assert.equal(await db.exists(), true);
    assert.deepEqual(await db.readRevisions(), ["1b8c9d0e1f2a"]);
    assert.deepEqual(await db.listTables(), ["alembic_version", "chat", "message", "tick", "user"]);
    assert.deepEqual(await db.listColumns("chat"), ["id", "user_id", "title", "body"]);
    assert.deepEqual(await db.listColumns("no_such_table"), []);
    assert.deepEqual(await db.tableCounts(), { alembic_version: 1, chat: 50, message: 50, tick: 0, user: 10 });

    const h1 = await db.schemaHash();
    assert.match(h1, /^[0-9a-f]{64}$/);
    assert.equal(await db.schemaHash(), h1);
    const raw = new Database(p);
    raw.exec("INSERT INTO tick (at) VALUES ('x')");
    assert.equal(await db.schemaHash(), h1, "data changes do not change the schema hash");
    raw.exec("CREATE INDEX ix_message_chat ON message(chat_id)");
    const h2 = await db.schemaHash();
    assert.notEqual(h2, h1, "a new index changes the schema hash");
    raw.exec("DROP TABLE alembic_version");
    assert.equal(await db.readRevisions(), null);

    const wal = fs.existsSync(`${p}-wal`) ? fs.statSync(`${p}-wal`).size : 0;
    assert.ok(wal > 0, "the open WAL connection keeps a -wal file");
    assert.equal(await db.sizeBytes(), fs.statSync(p).size + fs.statSync(`${p}-wal`).size);
    raw.close();
    assert.ok((await db.freeBytes(dir)) > 0);
  });

  it("integrityCheck passes a good database and reports an index/table mismatch", async () => {
    const dir = freshDir();
    const p = path.join(dir, "app.db");
    makeDb(p, { chats: 400, wal: false });
    const db = new SqliteDatabase({ path: p });
    assert.deepEqual(await db.integrityCheck(), { ok: true, detail: "ok" });
    // Point the index's definition at another column: its entries no longer match any row.
    const raw = new Database(p);
    raw.unsafeMode(true);
    raw.pragma("writable_schema = ON");
    raw.prepare("UPDATE sqlite_master SET sql = 'CREATE INDEX ix_chat_title ON chat(body)' WHERE name = 'ix_chat_title'").run();
    raw.close();
    const r = await db.integrityCheck();
    assert.equal(r.ok, false);
    assert.match(r.detail, /^row 1 missing from index ix_chat_title$/m);
    assert.equal(r.detail.split("\n").length, 10, "only the first 10 of 400 problems");
  });
});

describe("SqliteDatabase backup and verify", () => {
  let dir: string;
  let dbPath: string;
  let db: SqliteDatabase;
  let artifact: BackupArtifact;
  const progress: Array<{ line: string; bytesDone?: number }> = [];
  let commitsDuring = 0;
  let ticksBefore = 0;
  let ticksAfter = 0;

  before(async () => {
    dir = freshDir();
    dbPath = path.join(dir, "webui.db");
    // ~60 MB so the copy overlaps several of the writer's 50 ms commits.
    makeDb(dbPath, { chats: 30_000, padding: 2000 });
    db = new SqliteDatabase({ path: dbPath });
    const writer = await startChild(WRITER, dbPath);
    try {
      await new Promise((r) => setTimeout(r, 200));
      ticksBefore = (await db.tableCounts()).tick ?? 0;
      const startLine = writer.lines.length;
      artifact = await db.backup(path.join(dir, "b1.db"), (p) => progress.push(p));
      commitsDuring = writer.lines.slice(startLine).filter((l) => l.startsWith("commit ")).length;
      ticksAfter = (await db.tableCounts()).tick ?? 0;
    } finally {
      writer.child.kill("SIGKILL");
      await writer.exited;
    }
  });

  it("completes while another process commits every 50 ms, consistent with the copy", async () => {
    assert.ok(commitsDuring >= 2, `writer committed ${commitsDuring} times during the backup`);
    const tick = artifact.tableCounts.tick;
    assert.ok(tick !== undefined && tick >= ticksBefore && tick <= ticksAfter, `backup has ${tick} ticks, live went ${ticksBefore}→${ticksAfter}`);
    assert.equal(artifact.path, path.join(dir, "b1.db"));
    assert.equal(artifact.sizeBytes, fs.statSync(artifact.path).size);
    assert.equal(artifact.sha256, sha256Of(artifact.path));
    assert.deepEqual(artifact.revisions, ["1b8c9d0e1f2a"]);
    assert.match(artifact.tool, /^sqlite snapshot copy \d+\.\d+\.\d+$/);
    // The writer's commits sit in the WAL: the copy is the file plus the snapshot's frames, applied.
    assert.ok(
      progress.some((p) => /by snapshot copy \+ \d+ WAL frames, check passed/.test(p.line)),
      progress.map((p) => p.line).join("\n"),
    );
    assert.equal(artifact.proof?.ok, true, artifact.proof?.detail);
    assert.match(
      artifact.proof?.detail ?? "",
      /^sha256 of the finished file recorded; counts, schema and revisions from the source at the snapshot; integrity_check ok; schema ok; row counts ok \(5 tables\); revisions ok/,
    );
    const copy = new SqliteDatabase({ path: artifact.path });
    assert.deepEqual(await copy.tableCounts(), artifact.tableCounts);
    assert.equal(await copy.schemaHash(), artifact.schemaHash);
    assert.equal(await copy.schemaHash(), await db.schemaHash());
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.includes(".tmp-")),
      [],
      "no temp file left",
    );
  });

  it("reports the temp file growing and a final line", () => {
    assert.ok(
      progress.some((p) => /bytes written/.test(p.line) && (p.bytesDone ?? 0) > 0),
      JSON.stringify(progress.slice(0, 5)),
    );
    assert.match(progress.at(-1)?.line ?? "", /^backup: done, \d+ bytes, sha256 [0-9a-f]{12}/);
  });

  it("verifies a good backup", async () => {
    const r = await db.verifyBackup(artifact, noProgress);
    assert.equal(r.ok, true, r.detail);
    assert.match(r.detail, /sha256 ok; integrity_check ok; schema ok; row counts ok \(5 tables\); revisions ok/);
  });

  it("refuses an existing destination and leaves it untouched", async () => {
    const dest = path.join(dir, "taken.db");
    fs.writeFileSync(dest, "precious");
    await rejectsWith(db.backup(dest, noProgress), "PRECONDITION_FAILED", /already exists/);
    assert.equal(fs.readFileSync(dest, "utf8"), "precious");
    await rejectsWith(db.backup(artifact.path, noProgress), "PRECONDITION_FAILED");
    assert.equal(sha256Of(artifact.path), artifact.sha256);
    await rejectsWith(db.backup("relative.db", noProgress), "INVALID_ARGUMENT");
  });

  function damagedCopy(name: string, damage: (b: Buffer) => Buffer): BackupArtifact {
    const p = path.join(dir, name);
    fs.writeFileSync(p, damage(fs.readFileSync(artifact.path)));
    return { ...artifact, path: p };
  }

  it("fails a backup with bytes overwritten in the middle", async () => {
    const bad = damagedCopy("corrupt.db", (b) => {
      const pageSize = b.readUInt16BE(16);
      const at = Math.floor(b.length / 2 / pageSize) * pageSize;
      for (let i = 0; i < pageSize; i++) b[at + i] = (b[at + i]! ^ 0xa5) & 0xff;
      return b;
    });
    const r = await db.verifyBackup(bad, noProgress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /sha256 mismatch/);
    assert.match(r.detail, /integrity_check[: ]/);
    assert.doesNotMatch(r.detail, /integrity_check ok/);
  });

  it("fails a backup truncated to 75%", async () => {
    const bad = damagedCopy("truncated.db", (b) => b.subarray(0, Math.floor(b.length * 0.75)));
    const r = await db.verifyBackup(bad, noProgress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /size \d+ bytes, manifest says \d+/);
    assert.match(r.detail, /sha256 mismatch/);
    assert.doesNotMatch(r.detail, /integrity_check ok/);
  });

  it("fails a backup with a flip in an unindexed column: only sha256 catches it", async () => {
    const bad = damagedCopy("flipped.db", (b) => {
      const at = b.indexOf(Buffer.from(NEEDLE));
      assert.ok(at > 0);
      b[at] = "M".charCodeAt(0);
      return b;
    });
    const r = await db.verifyBackup(bad, noProgress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /^FAILED: sha256 mismatch/);
    assert.match(r.detail, /passed: integrity_check ok; schema ok; row counts ok/);
  });

  it("fails when the manifest's counts, schema or revisions differ from the file", async () => {
    const r = await db.verifyBackup(
      { ...artifact, tableCounts: { ...artifact.tableCounts, chat: 1 }, revisions: ["a1f0c0de0001"], schemaHash: "0".repeat(64) },
      noProgress,
    );
    assert.equal(r.ok, false);
    assert.match(r.detail, /row counts differ: chat: 1 rows in manifest, 30000 in backup/);
    assert.match(r.detail, /alembic_version is \[1b8c9d0e1f2a\], manifest says \[a1f0c0de0001\]/);
    assert.match(r.detail, /schema hash mismatch/);
    assert.match(r.detail, /passed: sha256 ok; integrity_check ok/);
  });

  it("reports a missing or non-SQLite backup file", async () => {
    const missing = await db.verifyBackup({ ...artifact, path: path.join(dir, "gone.db") }, noProgress);
    assert.equal(missing.ok, false);
    assert.match(missing.detail, /unreadable/);
    const junk = damagedCopy("junk.db", (b) => Buffer.alloc(b.length, 7));
    const r = await db.verifyBackup(junk, noProgress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /sha256 mismatch.*(cannot open as SQLite|not a database)/);
  });

  it("cancels with CANCELLED and leaves no temp file or destination", async () => {
    const pre = new AbortController();
    pre.abort();
    await rejectsWith(db.backup(path.join(dir, "never.db"), noProgress, pre.signal), "CANCELLED");
    // Abort once the worker says it is copying: the worker stops at its next step.
    const mid = new AbortController();
    const seen: string[] = [];
    const running = db.backup(
      path.join(dir, "aborted.db"),
      (x) => {
        seen.push(x.line);
        if (/copying the database file/.test(x.line)) mid.abort();
      },
      mid.signal,
    );
    await rejectsWith(running, "CANCELLED");
    assert.ok(
      seen.some((l) => /copying the database file/.test(l)),
      "the worker had started copying",
    );
    const left = fs.readdirSync(dir).filter((f) => f.startsWith("never.db") || f.startsWith("aborted.db"));
    assert.deepEqual(left, []);
  });
});

describe("SqliteDatabase snapshot copy", () => {
  it("copies a rollback-journal database byte for byte under its read lock", async () => {
    const dir = freshDir();
    const dbPath = path.join(dir, "rollback.db");
    makeDb(dbPath, { wal: false, chats: 500 });
    const db = new SqliteDatabase({ path: dbPath });
    const lines: string[] = [];
    const a = await db.backup(path.join(dir, "b.db"), (p) => lines.push(p.line));
    assert.match(a.tool, /^sqlite snapshot copy /);
    assert.ok(
      lines.some((l) => /by snapshot copy, check passed/.test(l)),
      lines.join("\n"),
    );
    assert.equal(a.sha256, sha256Of(dbPath), "the backup is the database file itself");
    assert.equal(a.proof?.ok, true, a.proof?.detail);
    assert.deepEqual(dump(a.path), dump(dbPath));
    assert.equal(fs.statSync(a.path).mode & 0o777, 0o600);
  });

  it("copies a WAL database with uncheckpointed commits as the snapshot: file plus WAL frames, exactly", async () => {
    const dir = freshDir();
    const dbPath = path.join(dir, "wal.db");
    makeDb(dbPath, { chats: 500 });
    // A live connection whose commits stay in the WAL (no checkpoint), as an app leaves them.
    const live = new Database(dbPath);
    try {
      live.pragma("wal_autocheckpoint = 0");
      live.exec(
        "INSERT INTO chat (user_id, title, body) VALUES (1, 'in the wal', 'x'); UPDATE user SET name = 'renamed' WHERE id = 2; DELETE FROM message WHERE id <= 100; CREATE TABLE extra (x INTEGER)",
      );
      const walBefore = fs.statSync(`${dbPath}-wal`).size;
      assert.ok(walBefore > 32, "commits are in the WAL");
      const db = new SqliteDatabase({ path: dbPath });
      const lines: string[] = [];
      const a = await db.backup(path.join(dir, "b.db"), (p) => lines.push(p.line));
      assert.ok(
        lines.some((l) => /by snapshot copy \+ \d+ WAL frames, check passed/.test(l)),
        lines.join("\n"),
      );
      assert.equal(a.proof?.ok, true, a.proof?.detail);
      assert.deepEqual(dump(a.path), dump(dbPath), "the backup holds the WAL's commits");
      assert.equal(a.tableCounts.message, 400);
      assert.ok("extra" in a.tableCounts);
      assert.deepEqual(
        fs.readdirSync(dir).filter((f) => f.includes(".tmp-")),
        [],
        "no temp file, WAL or shm left",
      );
      assert.equal(fs.statSync(`${dbPath}-wal`).size, walBefore, "the source's WAL was only read");
      // A rollback-journal file, as VACUUM INTO gives: verifying it leaves no -wal/-shm in the backups folder.
      assert.equal(fs.readFileSync(a.path)[18], 1);
      const v = await db.verifyBackup(a, noProgress);
      assert.equal(v.ok, true, v.detail);
      assert.deepEqual(
        fs.readdirSync(dir).filter((f) => f.startsWith("b.db")),
        ["b.db"],
      );
      // Checkpointed, the source has the backup's pages: the same bytes but for the header's journal mode and change counters.
      live.pragma("wal_checkpoint(TRUNCATE)");
      const [src, copy] = [fs.readFileSync(dbPath), fs.readFileSync(a.path)];
      assert.equal(copy.length, src.length);
      assert.ok(src.subarray(100).equals(copy.subarray(100)), "every byte after the 100-byte header is the source's");
    } finally {
      live.close();
    }
  });

  it("reads the wal-index header: the last committed frame and the WAL's salts", async () => {
    const { readWalIndexHeader } = await import("./sqlite-worker.js");
    const dir = freshDir();
    const dbPath = path.join(dir, "hdr.db");
    makeDb(dbPath, { chats: 10 });
    const live = new Database(dbPath);
    try {
      live.pragma("wal_autocheckpoint = 0");
      for (let i = 0; i < 3; i++) live.exec(`INSERT INTO tick (at) VALUES ('${i}')`);
      const h = readWalIndexHeader(`${dbPath}-shm`);
      assert.ok(h !== null);
      const [res] = live.pragma("wal_checkpoint(PASSIVE)") as Array<{ log: number }>;
      assert.equal(h.mxFrame, res?.log);
      assert.equal(h.pageSize, 4096);
      assert.deepEqual(h.salts, fs.readFileSync(`${dbPath}-wal`).subarray(16, 24));
    } finally {
      live.close();
    }
    assert.equal(readWalIndexHeader(path.join(dir, "missing-shm")), null);
  });
});

describe("SqliteDatabase restore", () => {
  it("restores the exact rows of backup time, discarding a live WAL written after it", async () => {
    const dir = freshDir();
    const p = path.join(dir, "webui.db");
    makeDb(p, { chats: 500 });
    const db = new SqliteDatabase({ path: p });
    const atBackup = dump(p);
    const artifact = await db.backup(path.join(dir, "pre.db"), noProgress);

    const changer = await startChild(CRASHING_CHANGER, p);
    await changer.exited;
    assert.ok(fs.statSync(`${p}-wal`).size > 0, "changes left in an un-checkpointed WAL");
    assert.notDeepEqual(dump(p), atBackup);
    assert.deepEqual(await db.readRevisions(), ["ffffffffffff"]);

    const lines: string[] = [];
    await db.restore(artifact, (x) => lines.push(x.line));
    assert.equal(fs.existsSync(`${p}-wal`), false);
    assert.equal(fs.existsSync(`${p}-shm`), false);
    assert.equal(sha256Of(p), artifact.sha256, "restored file is byte-identical to the backup");
    assert.deepEqual(dump(p), atBackup);
    assert.deepEqual(await db.readRevisions(), ["1b8c9d0e1f2a"]);
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.includes(".restore-")),
      [],
    );
    assert.ok(lines.some((l) => /restore: done/.test(l)));
    assert.deepEqual(await db.integrityCheck(), { ok: true, detail: "ok" });
  });

  it("refuses a backup that fails verification and leaves the database as it was", async () => {
    const dir = freshDir();
    const p = path.join(dir, "webui.db");
    makeDb(p, { chats: 300 });
    const db = new SqliteDatabase({ path: p });
    const artifact = await db.backup(path.join(dir, "pre.db"), noProgress);
    new Database(p).exec("INSERT INTO tick (at) VALUES ('later')");
    const before = dump(p);
    const bytes = fs.readFileSync(artifact.path);
    bytes[bytes.indexOf(Buffer.from(NEEDLE))] = 0x4d;
    fs.writeFileSync(artifact.path, bytes);
    await rejectsWith(db.restore(artifact, noProgress), "VERIFY_FAILED", /sha256 mismatch/);
    assert.deepEqual(dump(p), before);
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.includes(".restore-")),
      [],
    );
  });
});

describe("SqliteDatabase holders", () => {
  it("reports another process holding the database, redacted, and forgets it after it exits", async () => {
    const dir = freshDir();
    const p = path.join(dir, "webui.db");
    makeDb(p, { chats: 10 });
    const db = new SqliteDatabase({ path: p });
    const mine = new Database(p, { readonly: true });
    try {
      assert.deepEqual(await db.holders(), [], "our own connection is not a holder");
      const holder = await startChild(HOLDER, p, ["--password=hunter2-canary"]);
      const found = (await db.holders()).find((h) => h.pid === holder.child.pid);
      assert.ok(found, "holder reported");
      assert.match(found.description, /node/);
      assert.ok(found.description.includes(p));
      assert.ok(!found.description.includes("hunter2-canary"), found.description);
      holder.child.kill("SIGKILL");
      await holder.exited;
      assert.equal(
        (await db.holders()).some((h) => h.pid === holder.child.pid),
        false,
      );
    } finally {
      mine.close();
    }
  });
});

describe("SqliteDatabase copies", () => {
  it("cloneTo replaces the target with a consistent copy and drops its stale WAL", async () => {
    const dir = freshDir();
    const src = path.join(dir, "blue.db");
    makeDb(src, { chats: 120 });
    const greenPath = path.join(dir, "green", "green.db");
    fs.mkdirSync(path.dirname(greenPath));
    makeDb(greenPath, { chats: 3 });
    fs.writeFileSync(`${greenPath}-wal`, "stale");
    const blue = new SqliteDatabase({ path: src });
    const green = new SqliteDatabase({ path: greenPath });
    const lines: string[] = [];
    await blue.cloneTo(green, (x) => lines.push(x.line));
    assert.deepEqual(dump(greenPath), dump(src));
    assert.equal(fs.existsSync(`${greenPath}-wal`), false);
    assert.deepEqual(fs.readdirSync(path.dirname(greenPath)), ["green.db"]);
    assert.ok(lines.some((l) => /clone: done/.test(l)));
    await rejectsWith(blue.cloneTo(blue, noProgress), "INVALID_ARGUMENT");
    await rejectsWith(blue.cloneTo({ kind: "postgresql" } as unknown as DatabaseAdapter, noProgress), "INVALID_ARGUMENT");
  });

  it("scratchCopy gives a separate copy with a sqlite://// URL; drop removes it", async () => {
    const dir = freshDir();
    const src = path.join(dir, "webui.db");
    makeDb(src, { chats: 40 });
    const db = new SqliteDatabase({ path: src });
    const scratch = await db.scratchCopy(noProgress);
    const scratchPath = (scratch.adapter as SqliteDatabase).path;
    assert.notEqual(scratchPath, src);
    assert.equal(scratch.url, `sqlite:///${scratchPath}`);
    assert.ok(scratch.url.startsWith("sqlite:////"));
    assert.deepEqual(await scratch.adapter.tableCounts(), await db.tableCounts());
    new Database(scratchPath).exec("DELETE FROM chat");
    assert.equal((await db.tableCounts()).chat, 40, "the source is untouched by changes to the copy");
    await scratch.drop();
    assert.equal(fs.existsSync(path.dirname(scratchPath)), false);
  });
  it("scratch copies and drill restores go under scratchDir (not the system temp folder); the agent empties it at start", async () => {
    const dir = freshDir();
    const src = path.join(dir, "webui.db");
    makeDb(src, { chats: 10 });
    const scratchDir = path.join(dir, "data", "scratch");
    const db = SqliteDatabase.fromUrl(`sqlite:///${src}`, { scratchDir });
    const scratch = await db.scratchCopy(noProgress);
    const scratchPath = (scratch.adapter as SqliteDatabase).path;
    assert.equal(path.dirname(path.dirname(scratchPath)), scratchDir, "the copy lives in a folder of its own under scratchDir");
    assert.equal(fs.statSync(scratchDir).mode & 0o777, 0o700, "scratch holds copies of user data: owner only");
    const art = await db.backup(path.join(dir, "b.db"), noProgress);
    const drill = await db.scratchFromBackup(art, noProgress);
    assert.equal(path.dirname(path.dirname((drill.adapter as SqliteDatabase).path)), scratchDir);
    // A crash leaves both behind; the next agent start removes them.
    assert.equal(await clearScratch(scratchDir), 2);
    assert.deepEqual(fs.readdirSync(scratchDir), []);
    assert.equal(await clearScratch(path.join(dir, "no-such-folder")), 0);
  });
});

describe("SqliteDatabase under plain tsx", () => {
  it("starts its worker when run by the tsx command (not node --import tsx)", async () => {
    const dir = freshDir();
    const p = path.join(dir, "webui.db");
    makeDb(p, { chats: 20 });
    const script = path.join(dir, "run.mts");
    const adapterFile = path.join(REPO, "services/agent/adapters/sqlite-database.ts");
    fs.writeFileSync(
      script,
      `
      import { SqliteDatabase } from ${JSON.stringify(adapterFile)};
      const db = new SqliteDatabase({ path: ${JSON.stringify(p)} });
      const a = await db.backup(${JSON.stringify(path.join(dir, "b.db"))}, () => {});
      const v = await db.verifyBackup(a, () => {});
      console.log(JSON.stringify({ counts: a.tableCounts, ok: v.ok }));
    `,
    );
    const child = spawn(path.join(REPO, "node_modules/.bin/tsx"), [script], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    assert.equal(code, 0, err);
    assert.deepEqual(JSON.parse(out.trim()), { counts: { alembic_version: 1, chat: 20, message: 20, tick: 0, user: 10 }, ok: true });
  });
});
