/**
 * The SQLite adapter's worker thread: every slow SQLite or file operation
 * (VACUUM INTO, integrity_check, row counts, sha256 of a whole file, copies)
 * runs here so the agent's event loop never stalls on it. One worker is
 * started per operation by `SqliteDatabase`; it reads its request from
 * `workerData`, posts progress and exactly one `done` or `failed` message,
 * and exits.
 *
 * The pure schema helpers are exported so the adapter can run the cheap
 * metadata reads on the main thread with the same normalisation.
 *
 * Importing this module does nothing; the request runs only when the module
 * is the entry of a worker started with a `FLOTILLA_SQLITE_WORKER` envelope.
 */
import { parentPort, workerData } from "node:worker_threads";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import Database from "better-sqlite3";

/** Marker in `workerData` that makes this module run a request. */
export const WORKER_ENVELOPE = "FLOTILLA_SQLITE_WORKER";

/** What a backup artifact promises; compared by verification. */
export interface ExpectedArtifact {
  readonly sizeBytes: number;
  readonly sha256: string;
  readonly tableCounts: Readonly<Record<string, number>>;
  readonly schemaHash: string;
  readonly revisions: readonly string[];
}

export type WorkerRequest =
  | { readonly op: "backup"; readonly source: string; readonly tmpPath: string; readonly destPath: string; readonly busyTimeoutMs: number }
  | { readonly op: "copy-into"; readonly source: string; readonly tmpPath: string; readonly destPath: string; readonly busyTimeoutMs: number }
  | { readonly op: "verify"; readonly path: string; readonly expected: ExpectedArtifact; readonly hashed?: "by-caller" }
  | { readonly op: "restore"; readonly backupPath: string; readonly expected: ExpectedArtifact; readonly dbPath: string; readonly stagingPath: string }
  | { readonly op: "integrity"; readonly path: string; readonly maxLines: number; readonly busyTimeoutMs: number; readonly quick?: boolean }
  | { readonly op: "table-counts"; readonly path: string; readonly busyTimeoutMs: number };

export interface WorkerEnvelope {
  readonly kind: typeof WORKER_ENVELOPE;
  readonly request: WorkerRequest;
  /** Int32Array view: element 0 becomes 1 when the caller aborts. */
  readonly cancel: SharedArrayBuffer;
  /** performance.timeOrigin + performance.now() when the caller started the worker. */
  readonly requestedAt: number;
  /**
   * Started ahead of time: wait for a "go" message before running (a "stop"
   * message ends the worker without a result). Hides the thread's start-up
   * behind work the caller does meanwhile.
   */
  readonly gated?: boolean;
}

/** Facts about a finished copy, read from the copy itself. */
export interface CopyFacts {
  readonly sizeBytes: number;
  readonly sha256: string;
  readonly tableCounts: Record<string, number>;
  readonly schemaHash: string;
  readonly revisions: string[];
  readonly sqliteVersion: string;
  readonly timingsMs: Readonly<Record<string, number>>;
}

export interface VerifyOutcome {
  readonly ok: boolean;
  readonly detail: string;
}

/** The checks of a SQLite file, each a phrase: what passed and what failed. */
export interface CheckOutcome {
  readonly passed: readonly string[];
  readonly failed: readonly string[];
}

/** A backup's copy facts plus the check of the finished copy against them. */
export interface BackupOutcome extends Omit<CopyFacts, "sha256" | "sizeBytes"> {
  /** How the copy was taken: "snapshot copy" (file bytes under a held read transaction) or "VACUUM INTO". */
  readonly method: "snapshot copy" | "VACUUM INTO";
  /** WAL frames of the snapshot applied to the copied file (snapshot copy of a WAL database). */
  readonly walFrames: number;
  readonly check: CheckOutcome;
}

export interface IntegrityOutcome {
  readonly ok: boolean;
  readonly detail: string;
}

export type WorkerMessage =
  | { readonly type: "progress"; readonly line: string; readonly bytesDone?: number; readonly bytesTotal?: number }
  | { readonly type: "copied"; readonly sizeBytes: number }
  | { readonly type: "done"; readonly value: unknown }
  | {
      readonly type: "failed";
      readonly message: string;
      readonly errno?: string;
      readonly sqliteCode?: string;
      readonly cancelled?: boolean;
      readonly verifyDetail?: string;
    };

// ---------------------------------------------------------------------------------------------
// Pure helpers over an open connection (used on both threads).

type Db = Database.Database;

interface MasterRow {
  type: string;
  name: string;
  tbl_name: string;
  sql: string | null;
}

function isInternal(name: string): boolean {
  return name.startsWith("sqlite_");
}

/** SQL identifier quoting: the name is data, never SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** User tables (no sqlite_* tables, no virtual tables), sorted. */
export function listUserTables(db: Db): string[] {
  const rows = db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all() as Array<{ name: string; sql: string | null }>;
  return rows
    .filter((r) => !isInternal(r.name) && !/^\s*CREATE\s+VIRTUAL\s/i.test(r.sql ?? ""))
    .map((r) => r.name)
    .sort();
}

/** Column names of a table in declaration order; empty when the table does not exist. */
export function listTableColumns(db: Db, table: string): string[] {
  const rows = db.prepare("SELECT name FROM pragma_table_info(?)").all(table) as Array<{ name: string }>;
  return rows.map((r) => r.name);
}

/**
 * sha256 of the normalised schema: every sqlite_master row except sqlite_*
 * objects, as (type, name, tbl_name, sql with whitespace runs collapsed),
 * sorted by type then name.
 */
export function computeSchemaHash(db: Db): string {
  const rows = db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master").all() as MasterRow[];
  const norm = rows
    .filter((r) => !isInternal(r.name))
    .map((r) => [r.type, r.name, r.tbl_name, (r.sql ?? "").replace(/\s+/g, " ").trim()] as const)
    .sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0) : a[0] < b[0] ? -1 : 1));
  return createHash("sha256").update(JSON.stringify(norm)).digest("hex");
}

/** Sorted rows of alembic_version, or null when the table does not exist. */
export function readAlembicRevisions(db: Db): string[] | null {
  const t = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").get();
  if (t === undefined) return null;
  const rows = db.prepare("SELECT version_num FROM alembic_version").all() as Array<{ version_num: unknown }>;
  return rows.map((r) => String(r.version_num)).sort();
}

/** Row count of every user table. */
export function countAllRows(db: Db): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of listUserTables(db)) {
    const row = db.prepare(`SELECT count(*) AS n FROM ${quoteIdent(t)}`).get() as { n: number };
    out[t] = row.n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Worker side.

class Cancelled extends Error {
  constructor() {
    super("operation cancelled");
    this.name = "Cancelled";
  }
}

/** A verification failure inside an operation that needs a verified artifact. */
class Unverified extends Error {
  constructor(readonly detail: string) {
    super(`backup failed verification: ${detail}`);
    this.name = "Unverified";
  }
}

interface Ctx {
  readonly post: (m: WorkerMessage) => void;
  readonly cancelled: () => boolean;
  /** How long the worker took to start, in ms. */
  readonly startupMs: number;
}

function checkCancel(ctx: Ctx): void {
  if (ctx.cancelled()) throw new Cancelled();
}

function progress(ctx: Ctx, line: string, bytesDone?: number, bytesTotal?: number): void {
  ctx.post({
    type: "progress",
    line,
    ...(bytesDone !== undefined ? { bytesDone } : {}),
    ...(bytesTotal !== undefined ? { bytesTotal } : {}),
  });
}

function fsyncPath(p: string, flags: string): void {
  const fd = fs.openSync(p, flags);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function fsyncDir(dir: string): void {
  fsyncPath(dir, "r");
}

function unlinkQuiet(p: string): void {
  try {
    fs.unlinkSync(p);
  } catch {
    // already gone
  }
}

const HASH_CHUNK = 1 << 20;
const PROGRESS_EVERY_MS = 200;

/** Streams the file through sha256 in 1 MiB reads, reporting progress and honouring cancel. */
function sha256File(ctx: Ctx, file: string, label: string): { sha256: string; size: number } {
  const fd = fs.openSync(file, "r");
  try {
    const size = fs.fstatSync(fd).size;
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    let done = 0;
    let last = performance.now();
    for (;;) {
      const n = fs.readSync(fd, buf, 0, HASH_CHUNK, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
      done += n;
      const now = performance.now();
      if (now - last >= PROGRESS_EVERY_MS) {
        last = now;
        checkCancel(ctx);
        progress(ctx, `${label}: sha256 ${done} of ${size} bytes`, done, size);
      }
    }
    return { sha256: hash.digest("hex"), size: done };
  } finally {
    fs.closeSync(fd);
  }
}

function openReadOnly(file: string, busyTimeoutMs: number): Db {
  return new Database(file, { readonly: true, fileMustExist: true, timeout: busyTimeoutMs });
}

/**
 * VACUUM INTO a fresh (O_EXCL, mode 0600) temp file, fsync it, and read its facts from the copy.
 * `forBackup`: the (empty) temp file exists already, and the caller fsyncs and hashes the finished file itself.
 */
function vacuumToTemp(ctx: Ctx, label: string, source: string, tmpPath: string, busyTimeoutMs: number, forBackup = false): CopyFacts {
  const timings: Record<string, number> = { "worker start": Math.round(ctx.startupMs) };
  let t = performance.now();
  const lap = (name: string): void => {
    const now = performance.now();
    timings[name] = Math.round(now - t);
    t = now;
  };
  if (!forBackup) fs.closeSync(fs.openSync(tmpPath, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600));
  const src = openReadOnly(source, busyTimeoutMs);
  let sqliteVersion: string;
  try {
    sqliteVersion = (src.prepare("SELECT sqlite_version() AS v").get() as { v: string }).v;
    checkCancel(ctx);
    progress(ctx, `${label}: VACUUM INTO running (sqlite ${sqliteVersion})`);
    src.prepare("VACUUM INTO ?").run(tmpPath);
  } finally {
    src.close();
  }
  lap("vacuum");
  checkCancel(ctx);
  if (!forBackup) {
    fsyncPath(tmpPath, "r+");
    lap("fsync");
  }
  progress(ctx, `${label}: written and fsynced; reading row counts, schema and revisions from the copy`);
  // Metadata first, hash last: whatever the read-only open did, the hash describes the final bytes.
  const copy = openReadOnly(tmpPath, busyTimeoutMs);
  let tableCounts: Record<string, number>;
  let schemaHash: string;
  let revisions: string[];
  try {
    tableCounts = countAllRows(copy);
    schemaHash = computeSchemaHash(copy);
    revisions = readAlembicRevisions(copy) ?? [];
  } finally {
    copy.close();
  }
  lap("metadata");
  checkCancel(ctx);
  if (forBackup) return { sizeBytes: fs.statSync(tmpPath).size, sha256: "", tableCounts, schemaHash, revisions, sqliteVersion, timingsMs: timings };
  const { sha256, size } = sha256File(ctx, tmpPath, label);
  lap("sha256");
  return { sizeBytes: size, sha256, tableCounts, schemaHash, revisions, sqliteVersion, timingsMs: timings };
}

function removeSidecars(dbPath: string): void {
  for (const suffix of ["-wal", "-shm", "-journal"]) unlinkQuiet(dbPath + suffix);
}

/** What the backup records, read from the source inside the snapshot's read transaction. */
interface SnapshotFacts {
  readonly tableCounts: Record<string, number>;
  readonly schemaHash: string;
  readonly revisions: string[];
  readonly pageSize: number;
  readonly pageCount: number;
}

function readSnapshotFacts(db: Db): SnapshotFacts {
  const pageCount = Number(db.pragma("page_count", { simple: true }));
  return {
    pageCount,
    pageSize: Number(db.pragma("page_size", { simple: true })),
    tableCounts: countAllRows(db),
    schemaHash: computeSchemaHash(db),
    revisions: readAlembicRevisions(db) ?? [],
  };
}

/** The wal-index header: the first 48 bytes of `-shm`, stored twice (SQLite's WalIndexHdr, native byte order). */
export interface WalIndexHeader {
  /** Both 48-byte copies as read; equal bytes mean no commit, restart or recovery happened in between. */
  readonly raw: Buffer;
  /** Index of the last committed frame: the snapshot a reader starting now sees. */
  readonly mxFrame: number;
  readonly pageSize: number;
  /** The WAL header's salt-1 and salt-2, byte for byte as in the WAL file (offsets 16..24). */
  readonly salts: Buffer;
}

const WAL_INDEX_VERSION = 3007000;
const WAL_HEADER_BYTES = 32;
const WAL_FRAME_HEADER_BYTES = 24;

/** Reads the wal-index header; null when it is missing, uninitialised or caught mid-update. */
export function readWalIndexHeader(shmPath: string): WalIndexHeader | null {
  const raw = Buffer.alloc(96);
  let n: number;
  try {
    const fd = fs.openSync(shmPath, "r");
    try {
      n = fs.readSync(fd, raw, 0, 96, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
  const first = raw.subarray(0, 48);
  if (n < 96 || !first.equals(raw.subarray(48, 96))) return null;
  const le = os.endianness() === "LE";
  const u32 = (o: number): number => (le ? first.readUInt32LE(o) : first.readUInt32BE(o));
  const u16 = (o: number): number => (le ? first.readUInt16LE(o) : first.readUInt16BE(o));
  if (u32(0) !== WAL_INDEX_VERSION || first[12] !== 1) return null;
  const sz = u16(14);
  return { raw, mxFrame: u32(16), pageSize: sz === 1 ? 65536 : sz, salts: Buffer.from(first.subarray(32, 40)) };
}

const COPY_CHUNK = 4 << 20;
/** SQLite's own cap on mmap_size in this build (SQLITE_MAX_MMAP_SIZE). */
const MAX_MMAP_BYTES = 0x7fff0000;

/** Copies the first `limit` bytes (all when undefined) of `from` into the open descriptor; returns the bytes copied. */
function copyBytes(ctx: Ctx, from: string, toFd: number, limit: number | undefined, label: string, total: number): number {
  const fd = fs.openSync(from, "r");
  try {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    let done = 0;
    let last = performance.now();
    for (;;) {
      const want = limit === undefined ? COPY_CHUNK : Math.min(COPY_CHUNK, limit - done);
      if (want <= 0) break;
      const n = fs.readSync(fd, buf, 0, want, done);
      if (n === 0) break;
      let off = 0;
      while (off < n) off += fs.writeSync(toFd, buf, off, n - off, done + off);
      done += n;
      const now = performance.now();
      if (now - last >= PROGRESS_EVERY_MS) {
        last = now;
        checkCancel(ctx);
        progress(ctx, `${label}: ${done} of ${total} bytes copied`, done, total);
      }
    }
    return done;
  } finally {
    fs.closeSync(fd);
  }
}

function readHead(file: string, bytes: number): Buffer | null {
  try {
    const fd = fs.openSync(file, "r");
    try {
      const b = Buffer.alloc(bytes);
      return fs.readSync(fd, b, 0, bytes, 0) === bytes ? b : null;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return null;
  }
}

/**
 * A consistent copy of `source` into the (empty, 0600) file `tmpPath` from
 * the file bytes, under one read transaction held for the whole copy:
 *
 * - rollback journal: the transaction's SHARED lock keeps every writer out of
 *   the database file, so its bytes are the snapshot;
 * - WAL: the snapshot is the database file plus WAL frames 1..mxFrame. While
 *   the read mark is held no checkpoint copies a frame past it into the file
 *   and no writer restarts the WAL, so copied frames 1..mxFrame replayed over
 *   the copied file give the snapshot whatever a checkpoint rewrote meanwhile.
 *   The snapshot's mxFrame is the wal-index header read just before and just
 *   after the transaction's first read (equal bytes: no commit in between);
 *   the copied WAL header must carry that header's salts, and the live WAL's
 *   header must be unchanged after the copy (no restart overwrote a frame).
 *   The frames are applied by SQLite itself (recovery, then a FULL
 *   checkpoint of the copy, which must report exactly mxFrame frames), and the copy must end with the snapshot's page
 *   count.
 *
 * The facts (row counts, schema, revisions, page count) are read from the
 * source inside the same transaction. Returns why not, having changed nothing but
 * the temp files, whenever a condition does not hold (other journal modes, a
 * commit racing the snapshot three times, an unexpected size): the caller
 * falls back to VACUUM INTO.
 */
function snapshotCopy(ctx: Ctx, label: string, source: string, tmpPath: string, busyTimeoutMs: number): { facts: SnapshotFacts; walFrames: number } | string {
  const src = openReadOnly(source, busyTimeoutMs);
  let inTxn = false;
  let facts: SnapshotFacts | undefined;
  let walFrames = 0;
  const tmpWal = `${tmpPath}-wal`;
  try {
    const mode = String(src.pragma("journal_mode", { simple: true })).toLowerCase();
    const wal = mode === "wal";
    if (!wal && mode !== "delete" && mode !== "truncate" && mode !== "persist") return `journal_mode ${mode}`;
    let header: WalIndexHeader | null = null;
    for (let attempt = 0; attempt < 3 && facts === undefined; attempt++) {
      const before = wal ? readWalIndexHeader(`${source}-shm`) : null;
      if (wal && before === null) continue;
      src.exec("BEGIN");
      inTxn = true;
      // The transaction's first read takes the snapshot (a SHARED lock, or a WAL read mark).
      src.prepare("SELECT count(*) FROM sqlite_master").get();
      const afterRead = wal ? readWalIndexHeader(`${source}-shm`) : null;
      if (wal && (before === null || afterRead === null || !before.raw.equals(afterRead.raw))) {
        src.exec("COMMIT");
        inTxn = false;
        continue;
      }
      facts = readSnapshotFacts(src);
      header = before;
    }
    if (facts === undefined) return "commits kept racing the snapshot (3 tries)";
    checkCancel(ctx);
    const mainBytes = facts.pageCount * facts.pageSize;
    const out = fs.openSync(tmpPath, "r+");
    let copied: number;
    try {
      progress(ctx, `${label}: copying the database file under a read transaction`, 0, mainBytes);
      copied = copyBytes(ctx, source, out, undefined, label, mainBytes);
    } finally {
      fs.closeSync(out);
    }
    if (header !== null && header.mxFrame > 0) {
      if (header.pageSize !== facts.pageSize) return "WAL page size differs";
      walFrames = header.mxFrame;
      const walBytes = WAL_HEADER_BYTES + walFrames * (WAL_FRAME_HEADER_BYTES + facts.pageSize);
      const walOut = fs.openSync(tmpWal, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_RDWR, 0o600);
      let walCopied: number;
      try {
        walCopied = copyBytes(ctx, `${source}-wal`, walOut, walBytes, label, walBytes);
      } finally {
        fs.closeSync(walOut);
      }
      const copiedHead = readHead(tmpWal, WAL_HEADER_BYTES);
      const liveHead = readHead(`${source}-wal`, WAL_HEADER_BYTES);
      if (walCopied !== walBytes) return `WAL shorter than the snapshot (${walCopied} of ${walBytes} bytes)`;
      if (copiedHead === null || liveHead === null || !copiedHead.equals(liveHead) || !copiedHead.subarray(16, 24).equals(header.salts))
        return "the WAL was restarted during the copy";
    } else if (copied !== mainBytes) {
      return `database file is ${copied} bytes, the snapshot ${mainBytes}`;
    }
  } finally {
    if (inTxn) src.exec("COMMIT");
    src.close();
  }
  checkCancel(ctx);
  // Header bytes 18-19 are 2 in a WAL database. Like VACUUM INTO's output, the backup is made a
  // rollback-journal database (journal_mode=DELETE on the copy), so opening it read-only later
  // (verify, drills) never leaves a -wal and -shm beside it; a restored database is what
  // VACUUM INTO backups gave, and the app turns WAL on again as it always did.
  if (walFrames > 0 || readHead(tmpPath, 20)?.[18] === 2) {
    if (walFrames > 0) progress(ctx, `${label}: applying ${walFrames} WAL frame(s) of the snapshot to the copy`);
    const copy = new Database(tmpPath, { fileMustExist: true, timeout: 0 });
    try {
      // The first read opens the copied WAL and recovers its frames; the checkpoint writes them into the file.
      if (Number(copy.pragma("page_count", { simple: true })) !== facts.pageCount) return "the copy's page count differs from the snapshot's";
      if (walFrames > 0) {
        // FULL reports the frames it found and wrote (TRUNCATE would report the emptied WAL's 0/0).
        const r = copy.pragma("wal_checkpoint(FULL)") as Array<{ busy: number; log: number; checkpointed: number }>;
        const c = r[0];
        if (c === undefined || c.busy !== 0 || c.log !== walFrames || c.checkpointed !== walFrames)
          return `the copy recovered ${c?.log ?? 0} of ${walFrames} WAL frames`;
      }
      const mode = String(copy.pragma("journal_mode = DELETE", { simple: true })).toLowerCase();
      if (mode !== "delete") return `the copy stayed in journal_mode ${mode}`;
    } finally {
      copy.close();
    }
    for (const suffix of ["-wal", "-shm", "-journal"]) unlinkQuiet(tmpPath + suffix);
    if (fs.statSync(tmpPath).size !== facts.pageCount * facts.pageSize) return "the copy's size differs from the snapshot's";
  }
  return { facts, walFrames };
}

/**
 * The checks of a finished SQLite file against what the backup recorded:
 * PRAGMA integrity_check, schema hash, row counts, alembic_version. Never
 * throws for a bad file, only on cancel. Any -wal/-shm the read-only open
 * creates beside the file is removed afterwards.
 */
function checkFile(ctx: Ctx, file: string, expected: Omit<ExpectedArtifact, "sha256" | "sizeBytes">, label: string, privateFile = false): CheckOutcome {
  const passed: string[] = [];
  const failed: string[] = [];
  let db: Db | undefined;
  try {
    db = openReadOnly(file, 5000);
    // Reads through a memory map instead of one pread per page: integrity_check runs 1.5–2× faster.
    // Only on our own fresh temp file: a mapped file truncated by someone else kills the process (SIGBUS).
    if (privateFile) db.pragma(`mmap_size = ${MAX_MMAP_BYTES}`);
  } catch (err) {
    failed.push(`cannot open as SQLite (${errText(err)})`);
  }
  if (db !== undefined) {
    try {
      progress(ctx, `${label}: integrity_check`);
      try {
        const rows = db.prepare("PRAGMA integrity_check(10)").pluck().all() as string[];
        if (rows.length === 1 && rows[0] === "ok") passed.push("integrity_check ok");
        else failed.push(`integrity_check: ${rows.slice(0, 10).join(" | ")}`);
      } catch (err) {
        failed.push(`integrity_check error (${errText(err)})`);
      }
      checkCancel(ctx);
      try {
        const h = computeSchemaHash(db);
        if (h === expected.schemaHash) passed.push("schema ok");
        else failed.push(`schema hash mismatch (manifest ${expected.schemaHash.slice(0, 16)}…, backup ${h.slice(0, 16)}…)`);
      } catch (err) {
        failed.push(`schema unreadable (${errText(err)})`);
      }
      progress(ctx, `${label}: row counts`);
      try {
        const diffs = sameCounts(expected.tableCounts, countAllRows(db));
        if (diffs.length === 0) passed.push(`row counts ok (${Object.keys(expected.tableCounts).length} tables)`);
        else failed.push(`row counts differ: ${diffs.slice(0, 10).join(", ")}`);
      } catch (err) {
        failed.push(`row counts unreadable (${errText(err)})`);
      }
      try {
        const revs = readAlembicRevisions(db) ?? [];
        const want = [...expected.revisions].sort();
        if (revs.length === want.length && revs.every((v, i) => v === want[i])) passed.push(`revisions ok (${want.join(",") || "none"})`);
        else failed.push(`alembic_version is [${revs.join(",")}], manifest says [${want.join(",")}]`);
      } catch (err) {
        failed.push(`alembic_version unreadable (${errText(err)})`);
      }
    } finally {
      db.close();
    }
  }
  return { passed, failed };
}

/**
 * Takes the copy (a snapshot copy of the file bytes, or VACUUM INTO when that
 * is not possible), posts `copied` (the caller hashes and fsyncs the finished
 * file meanwhile, on its own thread), then checks the copy against the facts
 * of the snapshot. The caller puts the file in place once all three are done.
 */
function runBackup(ctx: Ctx, r: Extract<WorkerRequest, { op: "backup" }>): BackupOutcome {
  if (fs.existsSync(r.destPath)) throw Object.assign(new Error(`backup destination ${r.destPath} already exists`), { code: "EEXIST" });
  try {
    const timings: Record<string, number> = { "worker start": Math.round(ctx.startupMs) };
    let t = performance.now();
    const lap = (name: string): void => {
      const now = performance.now();
      timings[name] = Math.round(now - t);
      t = now;
    };
    fs.closeSync(fs.openSync(r.tmpPath, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600));
    const sqliteVersion = openVersion(r.source, r.busyTimeoutMs);
    let snap: { facts: SnapshotFacts; walFrames: number } | null = null;
    try {
      const got = snapshotCopy(ctx, "backup", r.source, r.tmpPath, r.busyTimeoutMs);
      if (typeof got === "string") progress(ctx, `backup: snapshot copy not possible (${got}); using VACUUM INTO`);
      else snap = got;
    } catch (err) {
      // A full disk or an I/O error would fail VACUUM INTO just the same.
      const code = (err as { code?: unknown }).code;
      if (err instanceof Cancelled || code === "ENOSPC" || code === "EDQUOT" || code === "EIO") throw err;
      progress(ctx, `backup: snapshot copy not possible (${errText(err)}); using VACUUM INTO`);
    }
    let facts: SnapshotFacts | Omit<CopyFacts, "sizeBytes" | "sha256" | "sqliteVersion" | "timingsMs">;
    if (snap !== null) {
      facts = snap.facts;
      lap("copy");
    } else {
      // Start again from an empty file: whatever the attempt wrote is discarded.
      for (const suffix of ["-wal", "-shm"]) unlinkQuiet(r.tmpPath + suffix);
      fs.truncateSync(r.tmpPath, 0);
      const v = vacuumToTemp(ctx, "backup", r.source, r.tmpPath, r.busyTimeoutMs, true);
      facts = v;
      lap("vacuum");
    }
    checkCancel(ctx);
    // The caller hashes and fsyncs the finished file on its side meanwhile.
    ctx.post({ type: "copied", sizeBytes: fs.statSync(r.tmpPath).size });
    const check = checkFile(ctx, r.tmpPath, facts, "backup check", true);
    for (const suffix of ["-wal", "-shm"]) unlinkQuiet(r.tmpPath + suffix);
    lap("check");
    return {
      tableCounts: facts.tableCounts,
      schemaHash: facts.schemaHash,
      revisions: facts.revisions,
      sqliteVersion,
      timingsMs: timings,
      method: snap !== null ? "snapshot copy" : "VACUUM INTO",
      walFrames: snap?.walFrames ?? 0,
      check,
    };
  } catch (err) {
    for (const suffix of ["", "-wal", "-shm"]) unlinkQuiet(r.tmpPath + suffix);
    throw err;
  }
}

function openVersion(source: string, busyTimeoutMs: number): string {
  const db = openReadOnly(source, busyTimeoutMs);
  try {
    return (db.prepare("SELECT sqlite_version() AS v").get() as { v: string }).v;
  } finally {
    db.close();
  }
}

/** Consistent copy over destPath (replacing it): for blue-green clones and scratch copies. */
function runCopyInto(ctx: Ctx, r: Extract<WorkerRequest, { op: "copy-into" }>): CopyFacts {
  try {
    const facts = vacuumToTemp(ctx, "copy", r.source, r.tmpPath, r.busyTimeoutMs);
    checkCancel(ctx);
    // A stale WAL or journal next to the new file would be replayed into it.
    removeSidecars(r.destPath);
    fs.renameSync(r.tmpPath, r.destPath);
    fsyncDir(path.dirname(r.destPath));
    return facts;
  } catch (err) {
    unlinkQuiet(r.tmpPath);
    throw err;
  }
}

function sameCounts(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): string[] {
  const diffs: string[] = [];
  const names = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  for (const n of names) {
    const x = a[n];
    const y = b[n];
    if (x === y) continue;
    if (x === undefined) diffs.push(`${n}: not in manifest, ${y} rows in backup`);
    else if (y === undefined) diffs.push(`${n}: ${x} rows in manifest, table missing from backup`);
    else diffs.push(`${n}: ${x} rows in manifest, ${y} in backup`);
  }
  return diffs;
}

function errText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === "string" ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

/**
 * Every check of an artifact; never throws for a bad artifact, only on cancel.
 * `hash: false` when the caller hashes the file on its own thread meanwhile.
 */
function verifyArtifact(ctx: Ctx, file: string, expected: ExpectedArtifact, hash = true): VerifyOutcome {
  const passed: string[] = [];
  const failed: string[] = [];
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch (err) {
    return { ok: false, detail: `FAILED: backup file unreadable (${errText(err)})` };
  }
  if (size !== expected.sizeBytes) failed.push(`size ${size} bytes, manifest says ${expected.sizeBytes}`);
  if (hash) {
    const { sha256 } = sha256File(ctx, file, "verify");
    if (sha256 === expected.sha256) passed.push("sha256 ok");
    else failed.push(`sha256 mismatch (manifest ${expected.sha256.slice(0, 16)}…, file ${sha256.slice(0, 16)}…)`);
    checkCancel(ctx);
  }
  const checked = checkFile(ctx, file, expected, "verify");
  passed.push(...checked.passed);
  failed.push(...checked.failed);
  if (failed.length === 0) return { ok: true, detail: passed.join("; ") };
  return { ok: false, detail: `FAILED: ${failed.join("; ")}${passed.length > 0 ? `; passed: ${passed.join("; ")}` : ""}` };
}

function runRestore(ctx: Ctx, r: Extract<WorkerRequest, { op: "restore" }>): { sha256: string } {
  const v = verifyArtifact(ctx, r.backupPath, r.expected);
  if (!v.ok) throw new Unverified(v.detail);
  progress(ctx, "restore: backup verified; copying beside the database");
  try {
    fs.copyFileSync(r.backupPath, r.stagingPath, fs.constants.COPYFILE_EXCL);
    fsyncPath(r.stagingPath, "r+");
    // The copy is the inode that becomes the database: check its bytes before it goes live.
    const { sha256 } = sha256File(ctx, r.stagingPath, "restore");
    if (sha256 !== r.expected.sha256) {
      throw new Error(`restored copy sha256 ${sha256.slice(0, 16)}… differs from the manifest ${r.expected.sha256.slice(0, 16)}…`);
    }
    checkCancel(ctx);
    // Keep the live file's owner and mode: the app may run as another user than the agent.
    try {
      const original = fs.statSync(r.dbPath);
      fs.chmodSync(r.stagingPath, original.mode & 0o7777);
      try {
        fs.chownSync(r.stagingPath, original.uid, original.gid);
      } catch {
        /* not permitted: keep the agent's ownership */
      }
    } catch {
      /* no live file to copy from: keep the defaults */
    }
    const staged = fs.statSync(r.stagingPath);
    removeSidecars(r.dbPath);
    fs.renameSync(r.stagingPath, r.dbPath);
    fsyncDir(path.dirname(r.dbPath));
    const live = fs.statSync(r.dbPath);
    if (live.ino !== staged.ino || live.size !== r.expected.sizeBytes) {
      throw new Error("restored database changed during the swap (is the app really stopped?)");
    }
    return { sha256 };
  } catch (err) {
    unlinkQuiet(r.stagingPath);
    throw err;
  }
}

function runIntegrity(r: Extract<WorkerRequest, { op: "integrity" }>): IntegrityOutcome {
  const db = openReadOnly(r.path, r.busyTimeoutMs);
  try {
    const rows = db
      .prepare(`PRAGMA ${r.quick === true ? "quick_check" : "integrity_check"}(${Math.max(1, Math.floor(r.maxLines))})`)
      .pluck()
      .all() as string[];
    if (rows.length === 1 && rows[0] === "ok") return { ok: true, detail: "ok" };
    return { ok: false, detail: rows.slice(0, r.maxLines).join("\n") };
  } catch (err) {
    return { ok: false, detail: errText(err) };
  } finally {
    db.close();
  }
}

function runTableCounts(r: Extract<WorkerRequest, { op: "table-counts" }>): Record<string, number> {
  const db = openReadOnly(r.path, r.busyTimeoutMs);
  try {
    return countAllRows(db);
  } finally {
    db.close();
  }
}

function dispatch(ctx: Ctx, r: WorkerRequest): unknown {
  switch (r.op) {
    case "backup":
      return runBackup(ctx, r);
    case "copy-into":
      return runCopyInto(ctx, r);
    case "verify":
      return verifyArtifact(ctx, r.path, r.expected, r.hashed !== "by-caller");
    case "restore":
      return runRestore(ctx, r);
    case "integrity":
      return runIntegrity(r);
    case "table-counts":
      return runTableCounts(r);
  }
}

function isEnvelope(v: unknown): v is WorkerEnvelope {
  return typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === WORKER_ENVELOPE;
}

function main(port: NonNullable<typeof parentPort>, env: WorkerEnvelope): void {
  const flag = new Int32Array(env.cancel);
  const ctx: Ctx = {
    post: (m) => port.postMessage(m),
    cancelled: () => Atomics.load(flag, 0) === 1,
    startupMs: performance.timeOrigin + performance.now() - env.requestedAt,
  };
  try {
    ctx.post({ type: "done", value: dispatch(ctx, env.request) });
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e.code === "string" ? e.code : undefined;
    ctx.post({
      type: "failed",
      message: err instanceof Error ? err.message : String(err),
      ...(code?.startsWith("SQLITE_") ? { sqliteCode: code } : code !== undefined ? { errno: code } : {}),
      ...(err instanceof Cancelled ? { cancelled: true } : {}),
      ...(err instanceof Unverified ? { verifyDetail: err.detail } : {}),
    });
  }
}

if (parentPort !== null && isEnvelope(workerData)) {
  const port = parentPort;
  const env = workerData;
  if (env.gated === true) {
    port.once("message", (m: unknown) => {
      if (m === "go") main(port, { ...env, requestedAt: performance.timeOrigin + performance.now() });
      else port.close();
    });
  } else {
    main(port, env);
  }
}
