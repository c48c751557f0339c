import { Worker } from "node:worker_threads";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import type { BackupArtifact, DatabaseAdapter, Holder, IntegrityResult, ProgressFn, VerifyResult } from "../core/ports.js";
import { FlotillaError } from "../../common/errors.js";
import type { ErrorCode } from "../../common/errors.js";
import type { ProcessRunner } from "../../common/process-runner.js";
import { redact } from "../../common/redact.js";
import { WORKER_ENVELOPE, computeSchemaHash, listTableColumns, listUserTables, readAlembicRevisions } from "./sqlite-worker.js";
import type {
  BackupOutcome,
  CopyFacts,
  ExpectedArtifact,
  IntegrityOutcome,
  VerifyOutcome,
  WorkerEnvelope,
  WorkerMessage,
  WorkerRequest,
} from "./sqlite-worker.js";

export interface SqliteDatabaseOptions {
  /** Database file; made absolute against the current directory. */
  readonly path: string;
  /** For external tools; the SQLite adapter itself needs none today. */
  readonly runner?: ProcessRunner;
  /**
   * Where scratch copies (rehearsals) and drill restores go: the agent's
   * dataDir/scratch, a disk the operator sized for Flotilla. Default: the
   * system temp folder, which is often a small RAM-backed tmpfs that a
   * database-sized copy would fill.
   */
  readonly scratchDir?: string;
}

/** How long a read waits for a writer's lock before giving up. */
const BUSY_TIMEOUT_MS = 10_000;
/** How often a backup reports the size of its growing temp file. */
const PROGRESS_POLL_MS = 200;
const INTEGRITY_MAX_LINES = 10;

/** Failure reported by the worker, before it is given a Flotilla code. */
class WorkerFailure extends Error {
  constructor(
    message: string,
    readonly errno: string | undefined,
    readonly sqliteCode: string | undefined,
    readonly cancelled: boolean,
    readonly verifyDetail: string | undefined,
  ) {
    super(message);
    this.name = "WorkerFailure";
  }
}

/** A thrown error on this thread in the worker's failure shape, so one mapping serves both. */
function asFailure(err: unknown): WorkerFailure {
  const code = (err as { code?: unknown } | null)?.code;
  const c = typeof code === "string" ? code : undefined;
  const message = err instanceof Error ? err.message : String(err);
  return c?.startsWith("SQLITE_") === true
    ? new WorkerFailure(message, undefined, c, false, undefined)
    : new WorkerFailure(message, c, undefined, false, undefined);
}

function randomSuffix(): string {
  return randomBytes(6).toString("hex");
}

function safeProgress(onProgress: ProgressFn, p: Parameters<ProgressFn>[0]): void {
  try {
    onProgress(p);
  } catch {
    // a broken progress sink must not break the operation
  }
}

/** A worker's progress message passed on as a backup progress line (bytes when it has them). */
function workerProgress(onProgress: ProgressFn, m: { line: string; bytesDone?: number; bytesTotal?: number }): void {
  safeProgress(onProgress, {
    line: m.line,
    source: "backup",
    ...(m.bytesDone !== undefined ? { bytesDone: m.bytesDone } : {}),
    ...(m.bytesTotal !== undefined ? { bytesTotal: m.bytesTotal } : {}),
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function removeQuiet(p: string): Promise<void> {
  await fsp.rm(p, { force: true }).catch(() => undefined);
}

async function fileSize(p: string): Promise<number> {
  try {
    return (await fsp.stat(p)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw err;
  }
}

/**
 * sha256 of a file on this thread, in 1 MiB reads: each hash update is well under
 * a millisecond, so the event loop keeps serving while a worker does the SQLite
 * checks of the same file on the other core.
 */
async function sha256File(file: string, signal?: AbortSignal): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20, ...(signal !== undefined ? { signal } : {}) })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest("hex"), size };
}

/** Puts tmpPath at destPath without ever replacing an existing file. */
async function placeNoReplace(tmpPath: string, destPath: string): Promise<void> {
  try {
    await fsp.link(tmpPath, destPath);
    await fsp.unlink(tmpPath);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") throw new FlotillaError("PRECONDITION_FAILED", `backup refused: ${destPath} appeared while backing up`);
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw err;
    // Filesystems without hard links: check, then rename (not atomic against a racing creator).
    if (
      await fsp.lstat(destPath).then(
        () => true,
        () => false,
      )
    )
      throw new FlotillaError("PRECONDITION_FAILED", `backup refused: ${destPath} appeared while backing up`);
    await fsp.rename(tmpPath, destPath);
  }
}

async function fsyncFile(file: string): Promise<void> {
  const fh = await fsp.open(file, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function cancelledError(what: string): FlotillaError {
  return new FlotillaError("CANCELLED", `${what} cancelled`);
}

/** Maps a worker failure to the one Flotilla code that fits, with the operation's default. */
function mapFailure(err: unknown, fallback: ErrorCode, what: string): FlotillaError {
  if (err instanceof FlotillaError) return err;
  if (err instanceof WorkerFailure) {
    if (err.cancelled) return cancelledError(what);
    if (err.verifyDetail !== undefined) return new FlotillaError("VERIFY_FAILED", `${what} refused: backup failed verification: ${err.verifyDetail}`);
    if (err.errno === "ENOSPC") return new FlotillaError(fallback, `${what} failed: disk full (${err.message})`, { cause: err });
    if (err.errno === "EEXIST") return new FlotillaError("PRECONDITION_FAILED", `${what} refused: ${err.message}`, { cause: err });
    if (err.errno === "ENOENT") return new FlotillaError("NOT_FOUND", `${what} failed: ${err.message}`, { cause: err });
    if (err.sqliteCode === "SQLITE_BUSY" || err.sqliteCode === "SQLITE_LOCKED") {
      return new FlotillaError("TARGET_BUSY", `${what} failed: database is locked (${err.message})`, { cause: err });
    }
    if (err.sqliteCode === "SQLITE_CANTOPEN") return new FlotillaError("NOT_FOUND", `${what} failed: ${err.message}`, { cause: err });
    return new FlotillaError(fallback, `${what} failed: ${redact(err.message)}`, { cause: err });
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new FlotillaError(fallback, `${what} failed: ${redact(msg)}`, { cause: err });
}

/** The parent's Node flags minus tsx's loader hooks (`--import tsx`, `--require=tsx/cjs`, …). */
export function withoutTsxLoader(argv: readonly string[]): string[] {
  const out: string[] = [];
  const loader = /^--(?:import|require|loader|experimental-loader)$/;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const eq = /^(--(?:import|require|loader|experimental-loader))=(.*)$/.exec(arg);
    if (eq !== null && /(^|[/\\])tsx([/\\]|$)/.test(eq[2] ?? "")) continue;
    if (loader.test(arg) && /(^|[/\\])tsx([/\\]|$)/.test(argv[i + 1] ?? "")) {
      i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}

/** How the worker module is loaded: a .ts source needs tsx's in-thread CommonJS hook. */
function startWorker(envelope: WorkerEnvelope): Worker {
  const here = import.meta.url;
  if (!here.endsWith(".ts")) {
    // Compiled JavaScript needs no loader: a parent started with `--import tsx` (benchmarks, tests
    // of dist/) would otherwise make every worker start tsx's hooks first (~0.2 s instead of ~0.05 s).
    return new Worker(new URL("./sqlite-worker.js", here), { workerData: envelope, execArgv: withoutTsxLoader(process.execArgv) });
  }
  // On Node 20, `execArgv: ['--import', 'tsx']` does not apply tsx's hooks to a worker's entry
  // module ("Unknown file extension .ts"), and tsx's ESM register() inside a worker starts its
  // own hooks thread (about 1 s per worker). tsx's CommonJS register() hooks in-thread (~0.2 s).
  const workerFile = fileURLToPath(new URL("./sqlite-worker.ts", here));
  const tsxCjsApi = fileURLToPath(import.meta.resolve("tsx/cjs/api"));
  const boot = `require(${JSON.stringify(tsxCjsApi)}).register();\nrequire(${JSON.stringify(workerFile)});\n`;
  return new Worker(boot, { eval: true, execArgv: [], workerData: envelope });
}

/**
 * Runs one request in a fresh worker thread and settles only after the worker
 * has exited, so callers may clean up files the worker was writing. An abort
 * sets a shared flag the worker checks between steps (a running VACUUM INTO
 * cannot be interrupted; the worker stops right after it).
 */
function runInWorker<T>(
  request: WorkerRequest,
  onMessage?: (m: Extract<WorkerMessage, { type: "progress" | "copied" }>) => void,
  signal?: AbortSignal,
  gate?: Promise<boolean>,
): Promise<T> {
  if (signal?.aborted) return Promise.reject(new WorkerFailure("aborted before start", undefined, undefined, true, undefined));
  const cancel = new SharedArrayBuffer(4);
  const flag = new Int32Array(cancel);
  const worker = startWorker({
    kind: WORKER_ENVELOPE,
    request,
    cancel,
    requestedAt: performance.timeOrigin + performance.now(),
    ...(gate ? { gated: true } : {}),
  });
  gate?.then(
    (go) => worker.postMessage(go ? "go" : "stop"),
    () => worker.postMessage("stop"),
  );
  return new Promise<T>((resolve, reject) => {
    let outcome: { ok: true; value: T } | { ok: false; err: Error } | undefined;
    const onAbort = (): void => {
      Atomics.store(flag, 0, 1);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    worker.on("message", (m: WorkerMessage) => {
      if (m.type === "progress" || m.type === "copied") onMessage?.(m);
      else if (m.type === "done") outcome ??= { ok: true, value: m.value as T };
      else outcome ??= { ok: false, err: new WorkerFailure(m.message, m.errno, m.sqliteCode, m.cancelled === true, m.verifyDetail) };
    });
    worker.on("error", (err) => {
      outcome ??= { ok: false, err };
    });
    worker.on("exit", (code) => {
      signal?.removeEventListener("abort", onAbort);
      if (outcome === undefined) outcome = { ok: false, err: new Error(`sqlite worker exited with code ${code} without a result`) };
      if (outcome.ok) resolve(outcome.value);
      else reject(outcome.err);
    });
  });
}

function assertUsablePath(p: string, what: string): void {
  if (p.length === 0 || p.includes("\0")) throw new FlotillaError("INVALID_ARGUMENT", `${what} must be a non-empty path without NUL bytes`);
  if (!path.isAbsolute(p)) throw new FlotillaError("INVALID_ARGUMENT", `${what} must be an absolute path, got ${JSON.stringify(p)}`);
}

function expectedOf(a: BackupArtifact): ExpectedArtifact {
  return { sizeBytes: a.sizeBytes, sha256: a.sha256, tableCounts: a.tableCounts, schemaHash: a.schemaHash, revisions: a.revisions };
}

/**
 * The SQLite target: one database file (plus its -wal/-shm). Reads open their
 * own read-only connection and close it; every slow step (VACUUM INTO,
 * integrity_check, row counts, sha256, copies) runs in a worker thread started
 * for that operation, never on the caller's event loop. Cheap metadata reads
 * (revisions, tables, columns, schema hash) run here without a blocking busy
 * handler: a locked database is retried asynchronously for up to 10 s.
 *
 * Backups are VACUUM INTO copies (consistent while the app writes; never the
 * stepwise backup API, which restarts forever on a busy database). Never
 * overwrites a backup; never changes the database's contents except in
 * restore() (read-only opens may still create the -shm of a WAL database).
 * The constructor does no I/O.
 */
export class SqliteDatabase implements DatabaseAdapter {
  readonly kind = "sqlite" as const;
  /** Absolute path of the database file. */
  readonly path: string;
  readonly displayName: string;
  private readonly runner: ProcessRunner | undefined;
  private readonly scratchDir: string | undefined;

  constructor(options: SqliteDatabaseOptions) {
    if (options.path.length === 0) throw new FlotillaError("INVALID_ARGUMENT", "database path must not be empty");
    assertUsablePath(path.resolve(options.path), "database path");
    this.path = path.resolve(options.path);
    this.displayName = this.path;
    this.runner = options.runner;
    this.scratchDir = options.scratchDir;
  }

  /** A fresh folder for one scratch copy, under scratchDir (created when missing) or the system temp folder. */
  private async scratchFolder(prefix: string): Promise<string> {
    const base = this.scratchDir ?? os.tmpdir();
    await fsp.mkdir(base, { recursive: true, mode: 0o700 });
    return fsp.mkdtemp(path.join(base, prefix));
  }

  /** Options for an adapter of a scratch copy: the same runner, no scratch folder of its own. */
  private scratchOptions(file: string): SqliteDatabaseOptions {
    return { path: file, ...(this.runner !== undefined ? { runner: this.runner } : {}) };
  }

  /**
   * Parses an SQLAlchemy SQLite URL: `sqlite:////abs/path` (absolute) or
   * `sqlite:///rel/path` (relative to the current directory); a driver suffix
   * (`sqlite+pysqlite:`) and a query string are accepted and ignored. In-memory
   * URLs are refused with INVALID_ARGUMENT.
   */
  static fromUrl(url: string, options: { runner?: ProcessRunner; scratchDir?: string } = {}): SqliteDatabase {
    const m = /^sqlite(?:\+[a-z0-9_]+)?:\/\/\/([^?#]*)(?:[?#].*)?$/i.exec(url);
    const rest = m?.[1];
    if (rest === undefined) {
      throw new FlotillaError("INVALID_ARGUMENT", `not a SQLite file URL (want sqlite:////abs/path or sqlite:///rel/path): ${redact(url)}`);
    }
    if (rest === "" || rest === ":memory:") throw new FlotillaError("INVALID_ARGUMENT", "in-memory SQLite URLs have no file to manage");
    return new SqliteDatabase({
      path: rest,
      ...(options.runner !== undefined ? { runner: options.runner } : {}),
      ...(options.scratchDir !== undefined ? { scratchDir: options.scratchDir } : {}),
    });
  }

  /** The process runner this adapter was given, if any. */
  get processRunner(): ProcessRunner | undefined {
    return this.runner;
  }

  async exists(): Promise<boolean> {
    try {
      return (await fsp.stat(this.path)).isFile();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw err;
    }
  }

  /**
   * Opens read-only (file must exist) and runs fn; SQLITE_BUSY is retried
   * asynchronously so a writer's lock never blocks the event loop.
   */
  private async readOnly<T>(what: string, fn: (db: Database.Database) => T): Promise<T> {
    const deadline = performance.now() + BUSY_TIMEOUT_MS;
    for (;;) {
      let db: Database.Database | undefined;
      try {
        db = new Database(this.path, { readonly: true, fileMustExist: true, timeout: 0 });
        return fn(db);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if ((code === "SQLITE_BUSY" || code === "SQLITE_LOCKED") && performance.now() < deadline) {
          await sleep(25);
          continue;
        }
        if (db === undefined && !(await this.exists())) {
          throw new FlotillaError("NOT_FOUND", `${what}: database file ${this.path} does not exist`, { cause: err });
        }
        throw mapFailure(asFailure(err), "INTERNAL", what);
      } finally {
        db?.close();
      }
    }
  }

  /** Sorted alembic_version rows; null when the table does not exist. */
  readRevisions(): Promise<string[] | null> {
    return this.readOnly("read revisions", (db) => readAlembicRevisions(db));
  }

  listTables(): Promise<string[]> {
    return this.readOnly("list tables", (db) => listUserTables(db));
  }

  /** Columns in declaration order; empty for a table that does not exist. */
  listColumns(table: string): Promise<string[]> {
    return this.readOnly("list columns", (db) => listTableColumns(db, table));
  }

  listIndexes(): Promise<string[]> {
    return this.readOnly("list indexes", (db) =>
      (db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map(
        (r) => r.name,
      ),
    );
  }

  /** sha256 over sqlite_master (type, name, tbl_name, sql), sorted, sqlite_* objects excluded. */
  schemaHash(): Promise<string> {
    return this.readOnly("schema hash", (db) => computeSchemaHash(db));
  }

  /** count(*) of every user table, in a worker. */
  async tableCounts(): Promise<Record<string, number>> {
    try {
      return await runInWorker<Record<string, number>>({ op: "table-counts", path: this.path, busyTimeoutMs: BUSY_TIMEOUT_MS });
    } catch (err) {
      throw mapFailure(err, "INTERNAL", "row counts");
    }
  }

  /** PRAGMA integrity_check in a worker; detail is "ok" or the first ≤10 problems. */
  async integrityCheck(): Promise<IntegrityResult> {
    try {
      const r = await runInWorker<IntegrityOutcome>({ op: "integrity", path: this.path, maxLines: INTEGRITY_MAX_LINES, busyTimeoutMs: BUSY_TIMEOUT_MS });
      return { ok: r.ok, detail: r.detail };
    } catch (err) {
      throw mapFailure(err, "INTERNAL", "integrity check");
    }
  }

  /**
   * Starts the check's worker thread now; it runs when `when` resolves true
   * (null when false). This is the post-migration check: `PRAGMA quick_check`
   * (page structure and records, without cross-checking every index against
   * its table: the verified backup taken just before had the full
   * integrity_check, and a migration's own DDL rebuilds the indexes it touches).
   */
  async integrityCheckAfter(when: Promise<boolean>): Promise<IntegrityResult | null> {
    let go = false;
    const gate = when.then(
      (v) => (go = v),
      () => false,
    );
    try {
      const r = await runInWorker<IntegrityOutcome>(
        { op: "integrity", path: this.path, maxLines: INTEGRITY_MAX_LINES, busyTimeoutMs: BUSY_TIMEOUT_MS, quick: true },
        undefined,
        undefined,
        gate,
      );
      return { ok: r.ok, detail: r.detail };
    } catch (err) {
      if (!go) return null;
      throw mapFailure(err, "INTERNAL", "integrity check");
    }
  }

  /** Database file plus WAL file, in bytes. */
  async sizeBytes(): Promise<number> {
    if (!(await this.exists())) throw new FlotillaError("NOT_FOUND", `database file ${this.path} does not exist`);
    return (await fileSize(this.path)) + (await fileSize(`${this.path}-wal`));
  }

  /** Bytes available to an unprivileged writer in dir's filesystem. */
  async freeBytes(dir: string): Promise<number> {
    const s = await fsp.statfs(dir);
    return Number(s.bavail) * Number(s.bsize);
  }

  /** `sqlite:///` + the absolute path, i.e. `sqlite:////abs/path`. */
  alembicUrl(): string {
    return `sqlite:///${this.path}`;
  }

  /**
   * Processes other than this one with the database, its -wal, -shm or
   * -journal open, found by reading /proc/<pid>/fd links (processes we may not
   * inspect are skipped). description is the redacted command line.
   */
  async holders(): Promise<Holder[]> {
    const targets = new Set<string>();
    const bases = new Set([this.path]);
    try {
      bases.add(path.join(await fsp.realpath(path.dirname(this.path)), path.basename(this.path)));
    } catch {
      // directory gone: nobody can hold the file through it
    }
    for (const b of bases) for (const s of ["", "-wal", "-shm", "-journal"]) targets.add(b + s);
    let entries: string[];
    try {
      entries = await fsp.readdir("/proc");
    } catch {
      return [];
    }
    const out: Holder[] = [];
    for (const name of entries) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (pid === process.pid) continue;
      let fds: string[];
      try {
        fds = await fsp.readdir(`/proc/${pid}/fd`);
      } catch {
        continue;
      }
      const links = await Promise.all(fds.map((fd) => fsp.readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")));
      if (!links.some((l) => targets.has(l))) continue;
      out.push({ pid, description: await describeProcess(pid) });
    }
    return out;
  }

  /**
   * A consistent copy into `destPath.tmp-<hex>` (created fresh, 0600), taken in
   * a worker: the file bytes under one held read transaction (rollback journal;
   * WAL: the database file plus the snapshot's WAL frames, applied to the copy),
   * or VACUUM INTO when that is not possible. Row counts, schema hash and
   * revisions are read from the source inside the same snapshot. Then, on two
   * cores at once, this thread hashes the finished file (the sha256 recorded)
   * and fsyncs it while the worker checks it: PRAGMA integrity_check,
   * schema, row counts and revisions against the snapshot's. The outcome is the
   * artifact's `proof`. Then the file is linked into place (refused if
   * destPath exists, before and at the end) and the directory fsynced.
   * Progress: the temp file's size every 200 ms, the worker's steps, a final
   * line. On failure or abort the temp files are removed.
   */
  async backup(destPath: string, onProgress: ProgressFn, signal?: AbortSignal): Promise<BackupArtifact> {
    assertUsablePath(destPath, "backup destination");
    if (
      await fsp.lstat(destPath).then(
        () => true,
        () => false,
      )
    ) {
      throw new FlotillaError("PRECONDITION_FAILED", `backup refused: ${destPath} already exists`);
    }
    if (!(await this.exists())) throw new FlotillaError("NOT_FOUND", `backup failed: database file ${this.path} does not exist`);
    const tmpPath = `${destPath}.tmp-${randomSuffix()}`;
    const total = await this.sizeBytes();
    safeProgress(onProgress, { line: `backup: snapshot copy to ${path.basename(destPath)} started`, source: "backup", bytesDone: 0, bytesTotal: total });
    let hashing: Promise<{ sha256: string; size: number }> | undefined;
    try {
      const outcome = await this.copyInWorker<BackupOutcome>(
        { op: "backup", source: this.path, tmpPath, destPath, busyTimeoutMs: BUSY_TIMEOUT_MS },
        tmpPath,
        total,
        onProgress,
        signal,
        () => {
          // While the worker checks the copy: hash it here and flush it to disk (libuv's threads).
          hashing = Promise.all([sha256File(tmpPath, signal), fsyncFile(tmpPath)]).then(([h]) => h);
          hashing.catch(() => undefined);
        },
      );
      if (hashing === undefined) throw new Error("the backup worker finished without reporting its copy");
      const t0 = performance.now();
      const { sha256, size } = await hashing;
      const waitMs = Math.round(performance.now() - t0);
      if (signal?.aborted) throw cancelledError("backup");
      await placeNoReplace(tmpPath, destPath);
      await fsyncDir(path.dirname(destPath));
      const { passed, failed } = outcome.check;
      const hashed = `sha256 of the finished file recorded${outcome.method === "snapshot copy" ? "; counts, schema and revisions from the source at the snapshot" : ""}`;
      const proof =
        failed.length === 0
          ? { ok: true, detail: [hashed, ...passed].join("; ") }
          : { ok: false, detail: `FAILED: ${failed.join("; ")}; passed: ${[hashed, ...passed].join("; ")}` };
      const how = outcome.method === "snapshot copy" && outcome.walFrames > 0 ? `snapshot copy + ${outcome.walFrames} WAL frames` : outcome.method;
      safeProgress(onProgress, {
        line: `backup: done, ${size} bytes, sha256 ${sha256.slice(0, 12)}, ${Object.keys(outcome.tableCounts).length} tables, by ${how}, check ${proof.ok ? "passed" : "FAILED"} (${describeTimings({ ...outcome.timingsMs, "sha256 and fsync wait": waitMs })})`,
        source: "backup",
        bytesDone: size,
        bytesTotal: size,
      });
      return {
        path: destPath,
        sizeBytes: size,
        sha256,
        tableCounts: outcome.tableCounts,
        schemaHash: outcome.schemaHash,
        revisions: outcome.revisions,
        tool: `sqlite ${outcome.method} ${outcome.sqliteVersion}`,
        proof,
      };
    } catch (err) {
      await hashing?.catch(() => undefined);
      throw mapFailure(err, "BACKUP_FAILED", "backup");
    } finally {
      await removeQuiet(tmpPath);
    }
  }

  /** Runs a copy request in a worker while reporting the temp file's growth; `onCopied` when the copy is complete and fsynced. */
  private async copyInWorker<T>(
    request: Extract<WorkerRequest, { op: "backup" | "copy-into" }>,
    tmpPath: string,
    total: number,
    onProgress: ProgressFn,
    signal: AbortSignal | undefined,
    onCopied?: () => void,
  ): Promise<T> {
    let lastSize = -1;
    let polling = false;
    const poll = setInterval(() => {
      if (polling) return;
      polling = true;
      void fileSize(tmpPath)
        .then(
          (size) => {
            if (size > 0 && size !== lastSize) {
              lastSize = size;
              safeProgress(onProgress, { line: `backup: ${size} bytes written`, source: "backup", bytesDone: size, bytesTotal: total });
            }
          },
          () => undefined,
        )
        .finally(() => {
          polling = false;
        });
    }, PROGRESS_POLL_MS);
    try {
      return await runInWorker<T>(
        request,
        (m) => {
          if (m.type === "copied") {
            clearInterval(poll);
            onCopied?.();
            return;
          }
          workerProgress(onProgress, m);
        },
        signal,
      );
    } finally {
      clearInterval(poll);
    }
  }

  /**
   * Re-reads the artifact in a worker: size and sha256 against the manifest,
   * a read-only open with PRAGMA integrity_check, schema hash, row counts and
   * alembic_version against the artifact. detail names every check that failed
   * (and those that passed). Never throws for a bad artifact.
   */
  async verifyBackup(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal): Promise<VerifyResult> {
    assertUsablePath(artifact.path, "backup path");
    // Two cores: this thread hashes the file while the worker runs the SQLite checks on it.
    const hashing = sha256File(artifact.path, signal).then(
      (h) => h.sha256,
      (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
    );
    let checked: VerifyOutcome;
    try {
      checked = await runInWorker<VerifyOutcome>(
        { op: "verify", path: artifact.path, expected: expectedOf(artifact), hashed: "by-caller" },
        (m) => {
          if (m.type === "progress") workerProgress(onProgress, m);
        },
        signal,
      );
    } catch (err) {
      await hashing;
      throw mapFailure(err, "VERIFY_FAILED", "verify backup");
    }
    const sha = await hashing;
    if (signal?.aborted) throw cancelledError("verify backup");
    const r = mergeSha(checked, sha, artifact.sha256);
    safeProgress(onProgress, { line: `verify: ${r.ok ? "passed" : "failed"}: ${r.detail}`, source: "backup" });
    return r;
  }

  /**
   * Verifies the artifact (VERIFY_FAILED and nothing touched if it fails),
   * copies it to `<db>.restore-<hex>`, fsyncs and sha256-checks the copy,
   * removes `<db>-wal`, `-shm` and `-journal`, renames the copy over the
   * database and fsyncs the directory. The caller guarantees the app is
   * stopped. The restored file is byte-identical to the artifact.
   */
  async restore(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal): Promise<void> {
    assertUsablePath(artifact.path, "backup path");
    const stagingPath = `${this.path}.restore-${randomSuffix()}`;
    safeProgress(onProgress, { line: `restore: verifying ${path.basename(artifact.path)}`, source: "backup" });
    try {
      await runInWorker<{ sha256: string }>(
        { op: "restore", backupPath: artifact.path, expected: expectedOf(artifact), dbPath: this.path, stagingPath },
        (m) => {
          if (m.type === "progress") workerProgress(onProgress, m);
        },
        signal,
      );
      safeProgress(onProgress, {
        line: `restore: done, database replaced by ${path.basename(artifact.path)} (sha256 ${artifact.sha256.slice(0, 12)})`,
        source: "backup",
      });
    } catch (err) {
      throw mapFailure(err, "RESTORE_FAILED", "restore");
    } finally {
      await removeQuiet(stagingPath);
    }
  }

  /**
   * Consistent copy to another SqliteDatabase's path: VACUUM INTO a temp file
   * beside it, fsync, its stale -wal/-shm/-journal removed, renamed over it
   * (green copies are replaced on every rollout; the caller guarantees nothing
   * uses the target). Refuses to copy onto this database itself.
   */
  async cloneTo(target: DatabaseAdapter, onProgress: ProgressFn, signal?: AbortSignal): Promise<void> {
    if (!(target instanceof SqliteDatabase)) throw new FlotillaError("INVALID_ARGUMENT", `clone target must be a SQLite database, got ${target.kind}`);
    if (target.path === this.path) throw new FlotillaError("INVALID_ARGUMENT", "clone target is the source database itself");
    await this.copyTo(target.path, onProgress, signal, "clone");
  }

  /** VACUUM INTO a file in a fresh temp directory; drop() removes the directory. */
  async scratchCopy(onProgress: ProgressFn, signal?: AbortSignal): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }> {
    const dir = await this.scratchFolder("flotilla-scratch-");
    const drop = async (): Promise<void> => {
      await fsp.rm(dir, { recursive: true, force: true });
    };
    try {
      const adapter = new SqliteDatabase(this.scratchOptions(path.join(dir, path.basename(this.path))));
      await this.copyTo(adapter.path, onProgress, signal, "scratch copy");
      return { adapter, url: adapter.alembicUrl(), drop };
    } catch (err) {
      await drop();
      throw err;
    }
  }

  /** The backup file copied into a fresh temp folder (restore drills); drop() removes the folder. */
  async scratchFromBackup(artifact: BackupArtifact, onProgress: ProgressFn): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }> {
    assertUsablePath(artifact.path, "backup path");
    const dir = await this.scratchFolder("flotilla-drill-");
    const drop = async (): Promise<void> => {
      await fsp.rm(dir, { recursive: true, force: true });
    };
    try {
      const adapter = new SqliteDatabase(this.scratchOptions(path.join(dir, path.basename(this.path))));
      await fsp.copyFile(artifact.path, adapter.path, fsp.constants.COPYFILE_EXCL);
      safeProgress(onProgress, { line: `scratch: ${path.basename(artifact.path)} copied to a temporary file`, source: "backup" });
      return { adapter, url: adapter.alembicUrl(), drop };
    } catch (err) {
      await drop();
      throw mapFailure(err, "RESTORE_FAILED", "scratch restore");
    }
  }

  /** SQLite version and `PRAGMA table_info` (plus index list) of every table: schema only, never rows. */
  describe(): Promise<{ serverVersion: string; tables: Record<string, string> }> {
    return this.readOnly("describe schema", (db) => {
      const version = String(db.prepare("SELECT sqlite_version()").pluck().get());
      const out: Record<string, string> = {};
      for (const table of listUserTables(db)) {
        const quoted = `"${table.replace(/"/g, '""')}"`;
        const cols = db.prepare(`PRAGMA table_info(${quoted})`).all() as {
          cid: number;
          name: string;
          type: string;
          notnull: number;
          dflt_value: unknown;
          pk: number;
        }[];
        const idx = db.prepare(`PRAGMA index_list(${quoted})`).all() as { name: string; unique: number; origin: string }[];
        out[table] = [
          "cid | name | type | notnull | dflt_value | pk",
          ...cols.map((c) => `${c.cid} | ${c.name} | ${c.type} | ${c.notnull} | ${c.dflt_value === null ? "" : String(c.dflt_value)} | ${c.pk}`),
          ...(idx.length ? ["indexes:", ...idx.map((i) => `  ${i.name}${i.unique ? " (unique)" : ""} [${i.origin}]`)] : []),
        ].join("\n");
      }
      return { serverVersion: `SQLite ${version}`, tables: out };
    });
  }

  /** One configured query on a read-only connection: its row count, and the first value when it is a number (never row data). */
  smokeQuery(sql: string): Promise<{ rows: number; value: string }> {
    return this.readOnly("smoke query", (db) => {
      const rows = db.prepare(sql).raw().all() as unknown[][];
      const first = rows[0]?.[0];
      return { rows: rows.length, value: typeof first === "number" || typeof first === "bigint" ? String(first) : "" };
    });
  }

  private async copyTo(destPath: string, onProgress: ProgressFn, signal: AbortSignal | undefined, what: string): Promise<void> {
    if (!(await this.exists())) throw new FlotillaError("NOT_FOUND", `${what} failed: database file ${this.path} does not exist`);
    await fsp.mkdir(path.dirname(destPath), { recursive: true });
    const tmpPath = `${destPath}.tmp-${randomSuffix()}`;
    const total = await this.sizeBytes();
    safeProgress(onProgress, { line: `${what}: VACUUM INTO ${destPath} started`, source: "backup", bytesDone: 0, bytesTotal: total });
    try {
      const facts = await this.copyInWorker<CopyFacts>(
        { op: "copy-into", source: this.path, tmpPath, destPath, busyTimeoutMs: BUSY_TIMEOUT_MS },
        tmpPath,
        total,
        onProgress,
        signal,
      );
      safeProgress(onProgress, {
        line: `${what}: done, ${facts.sizeBytes} bytes (${describeTimings(facts.timingsMs)})`,
        source: "backup",
        bytesDone: facts.sizeBytes,
        bytesTotal: facts.sizeBytes,
      });
    } catch (err) {
      throw mapFailure(err, "INTERNAL", what);
    } finally {
      await removeQuiet(tmpPath);
    }
  }
}

/** The worker's checks plus this thread's sha256 (or the error that stopped it), in the worker's detail format. */
function mergeSha(checked: VerifyOutcome, sha: string | Error, want: string): VerifyResult {
  if (checked.detail.startsWith("FAILED: backup file unreadable")) return checked;
  const shaPhrase =
    typeof sha !== "string"
      ? `backup file unreadable (${sha.message})`
      : sha === want
        ? "sha256 ok"
        : `sha256 mismatch (manifest ${want.slice(0, 16)}…, file ${sha.slice(0, 16)}…)`;
  const shaOk = shaPhrase === "sha256 ok";
  if (checked.ok)
    return shaOk ? { ok: true, detail: `sha256 ok; ${checked.detail}` } : { ok: false, detail: `FAILED: ${shaPhrase}; passed: ${checked.detail}` };
  // checked.detail: "FAILED: <failed…>[; passed: <passed…>]"
  const body = checked.detail.slice("FAILED: ".length);
  const at = body.indexOf("; passed: ");
  const failedPart = at >= 0 ? body.slice(0, at) : body;
  const passedPart = at >= 0 ? body.slice(at + "; passed: ".length) : "";
  // A size mismatch is reported first, as the worker does.
  const sizeFirst = /^size \d+ bytes, manifest says \d+/.exec(failedPart);
  const failedList = shaOk ? failedPart : sizeFirst ? `${sizeFirst[0]}; ${shaPhrase}${failedPart.slice(sizeFirst[0].length)}` : `${shaPhrase}; ${failedPart}`;
  const passedList = shaOk ? [shaPhrase, passedPart].filter((x) => x !== "").join("; ") : passedPart;
  return { ok: false, detail: `FAILED: ${failedList}${passedList !== "" ? `; passed: ${passedList}` : ""}` };
}

function describeTimings(t: Readonly<Record<string, number>>): string {
  return Object.entries(t)
    .map(([k, v]) => `${k} ${v} ms`)
    .join(", ");
}

async function describeProcess(pid: number): Promise<string> {
  try {
    const raw = await fsp.readFile(`/proc/${pid}/cmdline`, "utf8");
    const cmd = raw
      .split("\0")
      .filter((s) => s.length > 0)
      .join(" ");
    if (cmd.length > 0) return redact(cmd);
    return redact(`[${(await fsp.readFile(`/proc/${pid}/comm`, "utf8")).trim()}]`);
  } catch {
    return `[pid ${pid}]`;
  }
}
