/**
 * The PostgreSQL adapter of the agent's DatabaseAdapter port.
 *
 * Queries go through `pg` (application_name "flotilla-agent", a connect
 * timeout, a statement timeout on reads). Dumps and restores go through the
 * real `pg_dump` / `pg_restore` binaries via the ProcessRunner, with the
 * connection given only as libpq environment variables and the password only
 * as a one-run PGPASSFILE: neither the URL nor the password is ever in argv, a
 * log line, an error message or a result.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { link, mkdir, open, readFile, rm, stat, statfs, unlink } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import type pg from "pg";
import { FlotillaError } from "../../common/errors.js";
import { describeRun, type ProcessRunner, type RunResult } from "../../common/process-runner.js";
import { redact, registerSecret } from "../../common/redact.js";
import type { BackupArtifact, DatabaseAdapter, Holder, IntegrityResult, ProgressFn, VerifyResult } from "../core/ports.js";
import { displayPgUrl, formatPgUrl, libpqEnv, parsePgUrl, withDatabase, withPassword, type PgUrlParts } from "./pg-url.js";
import { withPgpassFile } from "./pgpass.js";

export interface PostgresDatabaseConfig {
  /** `postgresql://user@host:port/db` or `postgres://…`; may carry a password, but `password` normally gives it. */
  readonly url: string;
  /** Overrides any password in `url`. */
  readonly password?: string;
  readonly runner: ProcessRunner;
  /** Where temporary dumps for clones and scratch copies go. */
  readonly scratchDir: string;
}

export interface PgVerifyOptions {
  /** Also restore into a scratch database and compare row counts, schema hash and revisions. */
  readonly deep?: boolean;
}

/** Facts recorded with an artifact and compared after a restore. */
interface DatabaseFacts {
  readonly tableCounts: Record<string, number>;
  readonly schemaHash: string;
  readonly revisions: string[];
}

/** What a new database copies from an existing one. */
interface DatabaseProps {
  readonly owner: string;
  readonly currentUser: string;
  readonly encoding: string;
  readonly collate: string;
  readonly ctype: string;
  readonly localeProvider: string;
  readonly locale: string | null;
}

const APP_NAME = "flotilla-agent";
const CONNECT_TIMEOUT_MS = 10_000;
/** Catalog reads: anything slower than this is a stuck server or a lock. */
const READ_TIMEOUT_MS = 30_000;
/** Full-table reads (row counts, integrity check) scale with the data. */
const SCAN_TIMEOUT_MS = 60 * 60_000;
/** pg_dump / pg_restore deadline; cancellation normally comes from the caller's signal first. */
const TOOL_TIMEOUT_MS = 12 * 60 * 60_000;
const PROGRESS_INTERVAL_MS = 500;
const DUMP_FLAGS = ["-Fc", "-Z1"] as const;
const SNAPSHOT_ID = /^[0-9A-F]+-[0-9A-F]+(?:-[0-9]+)?$/i;

/** The current schema's oid. Not `current_schema()::regnamespace`: that cast re-parses the name and folds its case. */
const CURRENT_NS = "(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())";

const requireCjs = createRequire(import.meta.url);
let pgModule: typeof pg | undefined;
/**
 * `pg`, loaded on first use: an agent whose targets are all SQLite never loads it
 * (about 3.5 MiB of its idle RSS). Synchronous, so the helpers below stay plain functions.
 */
const pgLib = (): typeof pg => (pgModule ??= requireCjs("pg") as typeof pg);

const ident = (name: string): string => pgLib().escapeIdentifier(name);
const literal = (value: string): string => pgLib().escapeLiteral(value);
const hex = (bytes: number): string => randomBytes(bytes).toString("hex");

/** `<db>_flotilla_<purpose>_<hex>`, shortened to PostgreSQL's 63-byte identifier limit. */
function tempDatabaseName(db: string, purpose: "restore" | "old" | "verify" | "scratch"): string {
  const suffix = `_flotilla_${purpose}_${hex(4)}`;
  const chars = Array.from(db);
  while (chars.length > 0 && Buffer.byteLength(chars.join("") + suffix) > 63) chars.pop();
  return chars.join("") + suffix;
}

function cancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new FlotillaError("CANCELLED", "operation cancelled");
}

function errorText(err: unknown): string {
  return redact(err instanceof Error ? err.message : String(err));
}

/** Last few lines of a tool's stderr, for an error message (already redacted by the runner). */
function stderrTail(r: RunResult, lines = 6): string {
  const tail = r.stderr.trim().split("\n").slice(-lines).join(" | ");
  return tail === "" ? "" : `: ${redact(tail)}`;
}

function toolFailure(code: "BACKUP_FAILED" | "RESTORE_FAILED" | "VERIFY_FAILED", argv0: string, r: RunResult): FlotillaError {
  if (r.cancelled) return new FlotillaError("CANCELLED", `${argv0} was cancelled`);
  if (r.timedOut) return new FlotillaError("TIMEOUT", `${describeRun(argv0, r)}${stderrTail(r)}`);
  return new FlotillaError(code, `${describeRun(argv0, r)}${stderrTail(r)}`);
}

/** Streams a file through sha256; reports bytes read. */
async function sha256File(path: string, signal: AbortSignal | undefined, onBytes?: (n: number) => void): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash("sha256");
  let bytes = 0;
  const stream = createReadStream(path, { highWaterMark: 1024 * 1024, ...(signal !== undefined ? { signal } : {}) });
  for await (const chunk of stream) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
    onBytes?.(bytes);
  }
  return { sha256: hash.digest("hex"), bytes };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The growing file `path`, chunk by chunk, until `writerDone` has settled and
 * everything written before that was read. A custom-format dump is written
 * front to back (header, the TOC with its data offsets not set yet, then the
 * data blocks); at the end pg_dump rewrites the TOC in place with the offsets,
 * same length. So the stream is a complete offset-less archive whose data
 * blocks are byte for byte the final file's.
 */
async function* follow(path: string, writerDone: Promise<unknown>, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  let finished = false;
  void writerDone.then(
    () => (finished = true),
    () => (finished = true),
  );
  const fh = await open(path, "r");
  try {
    let pos = 0;
    for (;;) {
      if (signal.aborted) return;
      const wasFinished = finished;
      const buf = Buffer.allocUnsafe(1 << 20);
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        yield buf.subarray(0, bytesRead);
        continue;
      }
      if (wasFinished) return;
      await sleep(15);
    }
  } finally {
    await fh.close();
  }
}

async function fsyncPath(path: string, flags: "r" | "r+"): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/** Differences between what an artifact recorded and what a restored database holds; empty when they match. */
function compareFacts(expected: DatabaseFacts | BackupArtifact, actual: DatabaseFacts): string[] {
  const problems: string[] = [];
  const names = new Set([...Object.keys(expected.tableCounts), ...Object.keys(actual.tableCounts)]);
  for (const name of [...names].sort()) {
    const want = expected.tableCounts[name];
    const got = actual.tableCounts[name];
    if (want === undefined) problems.push(`unexpected table ${name}`);
    else if (got === undefined) problems.push(`table ${name} missing`);
    else if (want !== got) problems.push(`table ${name} has ${got} rows, expected ${want}`);
  }
  if (expected.schemaHash !== actual.schemaHash) problems.push("schema hash differs");
  const wantRev = [...expected.revisions].sort().join(",");
  const gotRev = [...actual.revisions].sort().join(",");
  if (wantRev !== gotRev) problems.push(`alembic revisions ${gotRev || "(none)"}, expected ${wantRev || "(none)"}`);
  return problems;
}

function summarise(problems: readonly string[], max = 5): string {
  const head = problems.slice(0, max).join("; ");
  return problems.length > max ? `${head}; and ${problems.length - max} more` : head;
}

/**
 * A PostgreSQL database managed by the agent. The constructor parses the URL
 * (throwing FlotillaError("CONFIG_INVALID") on a bad one) and registers the
 * password with the redactor; it does no I/O. Every method opens and closes its
 * own connections. Temporary databases are named `<db>_flotilla_<purpose>_<hex>`.
 */
export class PostgresDatabase implements DatabaseAdapter {
  readonly kind = "postgresql" as const;
  readonly displayName: string;
  private readonly parts: PgUrlParts;
  private readonly runner: ProcessRunner;
  private readonly scratchDir: string;
  private pgDumpVersion: Promise<string> | undefined;

  constructor(config: PostgresDatabaseConfig) {
    const fromUrl = parsePgUrl(config.url);
    this.parts = config.password !== undefined && config.password !== "" ? withPassword(fromUrl, config.password) : fromUrl;
    registerSecret(this.parts.password);
    this.displayName = displayPgUrl(this.parts);
    this.runner = config.runner;
    this.scratchDir = config.scratchDir;
  }

  /** Name of the database this adapter manages. */
  get databaseName(): string {
    return this.parts.database;
  }

  // ---------------------------------------------------------------- connections

  /** Where CREATE/ALTER/DROP DATABASE run: never the database being renamed. */
  private get maintenanceDatabase(): string {
    return this.parts.database === "postgres" ? "template1" : "postgres";
  }

  private async sslConfig(): Promise<pg.ClientConfig["ssl"]> {
    const mode = this.parts.sslmode;
    // node-postgres has no "prefer"/"allow": those, like "disable", connect without TLS.
    if (mode === undefined || mode === "disable" || mode === "allow" || mode === "prefer") return false;
    if (mode === "require") return { rejectUnauthorized: false };
    const read = async (p: string | undefined): Promise<string | undefined> => (p === undefined ? undefined : readFile(p, "utf8"));
    const [ca, cert, key] = await Promise.all([read(this.parts.sslrootcert), read(this.parts.sslcert), read(this.parts.sslkey)]);
    return {
      rejectUnauthorized: true,
      ...(ca !== undefined ? { ca } : {}),
      ...(cert !== undefined ? { cert } : {}),
      ...(key !== undefined ? { key } : {}),
      // verify-ca checks the chain but not the host name.
      ...(mode === "verify-ca" ? { checkServerIdentity: () => undefined } : {}),
    };
  }

  private async connect(database: string, statementTimeoutMs: number, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
    const client = new (pgLib().Client)({
      host: this.parts.host,
      port: this.parts.port,
      user: this.parts.user,
      database,
      ...(this.parts.password !== undefined ? { password: this.parts.password } : {}),
      application_name: APP_NAME,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: statementTimeoutMs,
      ssl: await this.sslConfig(),
      ...extra,
    });
    // A connection dropped while idle is reported by the next query; without a listener it would crash the agent.
    client.on("error", () => undefined);
    await client.connect();
    return client;
  }

  private async withClient<T>(what: string, options: { database?: string; statementTimeoutMs?: number }, fn: (client: pg.Client) => Promise<T>): Promise<T> {
    let client: pg.Client | undefined;
    try {
      client = await this.connect(options.database ?? this.parts.database, options.statementTimeoutMs ?? READ_TIMEOUT_MS);
      return await fn(client);
    } catch (err) {
      throw this.dbError(what, err);
    } finally {
      await client?.end().catch(() => undefined);
    }
  }

  private dbError(what: string, err: unknown): FlotillaError {
    if (err instanceof FlotillaError) return err;
    const pgCode = (err as { code?: unknown }).code;
    const message = `${what} on ${this.displayName}: ${errorText(err)}`;
    if (pgCode === "57014" || /timeout/i.test(errorText(err))) return new FlotillaError("TIMEOUT", message, { cause: err });
    if (pgCode === "42501") return new FlotillaError("PERMISSION_DENIED", message, { cause: err });
    return new FlotillaError("INTERNAL", message, { cause: err });
  }

  /**
   * Runs pg_dump / pg_restore / psql with the connection in libpq env vars and
   * the password in a one-run PGPASSFILE. `database` null: the tool connects to
   * nothing (pg_restore -f, --version).
   */
  private async runTool(
    argv: readonly string[],
    options: {
      database: string | null;
      signal?: AbortSignal | undefined;
      onLine?: (line: string) => void;
      timeoutMs?: number;
      input?: AsyncIterable<Uint8Array>;
    },
  ): Promise<RunResult> {
    const tool = argv[0] ?? "";
    const run = (env: Readonly<Record<string, string>>): Promise<RunResult> =>
      this.runner.run({
        argv,
        env,
        timeoutMs: options.timeoutMs ?? TOOL_TIMEOUT_MS,
        maxOutputBytes: 64 * 1024,
        ...(options.signal !== undefined ? { signal: options.signal } : {}),
        ...(options.onLine !== undefined ? { onLine: (line: string) => options.onLine?.(line) } : {}),
        ...(options.input !== undefined ? { input: options.input } : {}),
      });
    if (options.database === null) return run({});
    const env: Record<string, string> = {
      PGCONNECT_TIMEOUT: String(CONNECT_TIMEOUT_MS / 1000),
      ...libpqEnv(withDatabase(this.parts, options.database)),
      // Named "flotilla…" so holders() does not count the agent's own tools as the app.
      PGAPPNAME: `${APP_NAME} ${tool}`,
    };
    return withPgpassFile(this.parts.user, this.parts.password, (pass) => run({ ...env, ...pass }));
  }

  private async toolVersion(): Promise<string> {
    this.pgDumpVersion ??= this.runTool(["pg_dump", "--version"], { database: null, timeoutMs: 30_000 }).then((r) => {
      const m = /(\d+(?:\.\d+)+)/.exec(r.stdout);
      if (r.exitCode !== 0 || m === null) {
        this.pgDumpVersion = undefined;
        throw toolFailure("BACKUP_FAILED", "pg_dump", r);
      }
      return m[1]!;
    });
    return this.pgDumpVersion;
  }

  // ---------------------------------------------------------------- reads

  async exists(): Promise<boolean> {
    let client: pg.Client | undefined;
    try {
      client = await this.connect(this.parts.database, READ_TIMEOUT_MS);
      return true;
    } catch (err) {
      // invalid_catalog_name: the server answered, the database is not there.
      if ((err as { code?: unknown }).code === "3D000") return false;
      throw this.dbError("checking that the database exists", err);
    } finally {
      await client?.end().catch(() => undefined);
    }
  }

  async readRevisions(): Promise<string[] | null> {
    return this.withClient("reading alembic_version", {}, (c) => queryRevisions(c));
  }

  /** Tables (ordinary and partitioned) of the current schema (normally `public`), sorted. */
  async listTables(): Promise<string[]> {
    return this.withClient("listing tables", {}, async (c) => (await queryTables(c)).tables);
  }

  async listIndexes(): Promise<string[]> {
    return this.withClient("listing indexes", {}, async (c) => {
      const r = await c.query<{ indexname: string }>("SELECT indexname FROM pg_catalog.pg_indexes WHERE schemaname = current_schema() ORDER BY indexname");
      return r.rows.map((row) => row.indexname);
    });
  }

  /** Columns of `table` in the current schema, in table order; [] when there is no such table. */
  async listColumns(table: string): Promise<string[]> {
    return this.withClient("listing columns", {}, async (c) => {
      const r = await c.query<{ attname: string }>(
        `SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
          WHERE c.relnamespace = ${CURRENT_NS} AND c.relname = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum`,
        [table],
      );
      return r.rows.map((row) => row.attname);
    });
  }

  /** Exact `count(*)` of every table in the current schema. */
  async tableCounts(): Promise<Record<string, number>> {
    return this.withClient("counting rows", { statementTimeoutMs: SCAN_TIMEOUT_MS }, (c) => queryCounts(c));
  }

  /**
   * sha256 over sorted lines describing columns (name, type, nullability,
   * default, identity, generated, relative position), indexes (pg_indexes) and
   * constraints of the current schema. Column positions are relative, so a
   * dump/restore (which closes the gaps left by dropped columns) hashes the same.
   */
  async schemaHash(): Promise<string> {
    return this.withClient("hashing the schema", {}, (c) => querySchemaHash(c));
  }

  async sizeBytes(): Promise<number> {
    return this.withClient("reading the database size", {}, async (c) => {
      const r = await c.query<{ size: string }>("SELECT pg_database_size(current_database())::text AS size");
      return Number(r.rows[0]?.size ?? 0);
    });
  }

  async freeBytes(dir: string): Promise<number> {
    const s = await statfs(dir);
    return Number(s.bavail) * Number(s.bsize);
  }

  /**
   * Other client sessions on this database, except the agent's own (any
   * application_name starting with "flotilla"). Description:
   * "application_name @ client_addr (usename)".
   */
  async holders(): Promise<Holder[]> {
    return this.withClient("listing sessions", {}, (c) => querySessions(c, this.parts.database));
  }

  /**
   * A full read of every table of the current schema (every row rendered as
   * text, so TOASTed values are fetched too), and `bt_index_check` on every
   * btree index when the amcheck extension is already installed. Never creates
   * an extension. A table that cannot be read makes the result not ok.
   */
  async integrityCheck(): Promise<IntegrityResult> {
    return this.withClient("checking integrity", { statementTimeoutMs: SCAN_TIMEOUT_MS }, async (c) => {
      const { schema, tables } = await queryTables(c);
      const problems: string[] = [];
      let rows = 0;
      let bytes = 0;
      for (const table of tables) {
        try {
          const r = await c.query<{ n: string; b: string }>(
            `SELECT count(*)::text AS n, coalesce(sum(length(t::text)), 0)::text AS b FROM ${ident(schema)}.${ident(table)} AS t`,
          );
          rows += Number(r.rows[0]?.n ?? 0);
          bytes += Number(r.rows[0]?.b ?? 0);
        } catch (err) {
          problems.push(`reading table ${table} failed: ${errorText(err)}`);
        }
      }
      let amcheck: string;
      const ext = await c.query<{ nspname: string }>(
        "SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'",
      );
      const extSchema = ext.rows[0]?.nspname;
      if (extSchema === undefined) {
        amcheck = "amcheck not installed, index check skipped";
      } else {
        const idx = await c.query<{ name: string; oid: string }>(
          `SELECT c.relname AS name, c.oid::text AS oid FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid JOIN pg_catalog.pg_am am ON am.oid = c.relam
            WHERE c.relnamespace = ${CURRENT_NS} AND am.amname = 'btree' AND i.indisvalid AND i.indisready
            ORDER BY c.relname`,
        );
        let checked = 0;
        let denied: string | undefined;
        for (const row of idx.rows) {
          try {
            await c.query(`SELECT ${ident(extSchema)}.bt_index_check($1::oid::regclass)`, [row.oid]);
            checked += 1;
          } catch (err) {
            if ((err as { code?: unknown }).code === "42501") {
              denied = errorText(err);
              break;
            }
            problems.push(`amcheck on index ${row.name}: ${errorText(err)}`);
          }
        }
        amcheck =
          denied !== undefined
            ? `amcheck not permitted for this user, index check skipped (${denied})`
            : `amcheck checked ${checked} btree index${checked === 1 ? "" : "es"}`;
      }
      const read = `read ${tables.length} table${tables.length === 1 ? "" : "s"}, ${rows} rows, ${bytes} bytes as text`;
      if (problems.length > 0) return { ok: false, detail: `${summarise(problems)} (${read}; ${amcheck})` };
      return { ok: true, detail: `ok: ${read}; ${amcheck}` };
    });
  }

  alembicUrl(): string {
    return formatPgUrl(this.parts, { withPassword: true });
  }

  /**
   * A connected client on this database for a bulk copy (`flotilla move`):
   * no statement timeout, TimeZone UTC, 256 MB for index builds after the load. The caller ends it. Errors never carry the password.
   */
  async openClient(): Promise<pg.Client> {
    try {
      const client = await this.connect(this.parts.database, 0, { options: "-c TimeZone=UTC -c maintenance_work_mem=256MB" });
      return client;
    } catch (err) {
      throw this.dbError("connecting for a copy", err);
    }
  }

  // ---------------------------------------------------------------- backup

  /**
   * `pg_dump -Fc -Z1` into `destPath.tmp-<hex>` (created 0600), fsynced, then
   * linked into place (never overwriting) and the directory fsynced. The row
   * counts, schema hash and revisions are read inside a REPEATABLE READ
   * transaction whose exported snapshot pg_dump uses (`--snapshot`), so they
   * describe exactly the dumped data even while the app writes. Throws
   * FlotillaError BACKUP_FAILED / CANCELLED / TIMEOUT / INVALID_ARGUMENT (the
   * destination exists); leaves no temporary file behind.
   */
  async backup(destPath: string, onProgress: ProgressFn, signal?: AbortSignal): Promise<BackupArtifact> {
    return this.dump(destPath, onProgress, signal, true);
  }

  /**
   * The whole backup; `prove`: while pg_dump writes, a `pg_restore -f /dev/null`
   * reads the archive as it grows (on its stdin), so the full read that
   * verification needs is done when the dump is; then `pg_restore --list` reads
   * the final TOC. Both passing, with the sha256 of the finished file, is the
   * artifact's proof. A stream that fails is never trusted: the finished file
   * is read again in full before the backup is called bad.
   */
  private async dump(destPath: string, onProgress: ProgressFn, signal: AbortSignal | undefined, prove: boolean): Promise<BackupArtifact> {
    const dest = resolve(destPath);
    if (await pathExists(dest)) throw new FlotillaError("INVALID_ARGUMENT", `backup destination already exists: ${dest}`);
    cancelled(signal);
    // Asking the version costs a process start (a Perl wrapper on Debian): overlap it with the dump.
    const version = this.toolVersion();
    version.catch(() => undefined);
    const tmp = `${dest}.tmp-${hex(6)}`;
    // Our own O_EXCL create fixes the mode; pg_dump reopens it with O_TRUNC, which keeps the mode.
    try {
      await (await open(tmp, "wx", 0o600)).close();
    } catch (err) {
      throw new FlotillaError("BACKUP_FAILED", `cannot create the backup file next to ${dest}: ${errorText(err)}`, { cause: err });
    }
    let snapshot: pg.Client | undefined;
    let poll: NodeJS.Timeout | undefined;
    try {
      try {
        snapshot = await this.connect(this.parts.database, SCAN_TIMEOUT_MS, { idle_in_transaction_session_timeout: 0 });
        await snapshot.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        const id = (await snapshot.query<{ id: string }>("SELECT pg_export_snapshot() AS id")).rows[0]?.id ?? "";
        if (!SNAPSHOT_ID.test(id)) throw new Error("pg_export_snapshot returned an unexpected id");
        onProgress({ line: `backup: pg_dump ${DUMP_FLAGS.join(" ")} of ${this.displayName} started (snapshot ${id})`, source: "backup" });

        const snap = snapshot;
        let readingDone = false;
        let readFailedFirst = false;
        // Ending the connection is the only way to unblock a count that waits on a lock.
        const release = (): void => {
          if (!readingDone) void snap.end().catch(() => undefined);
        };
        const stop = new AbortController();
        stop.signal.addEventListener("abort", release, { once: true });
        const onAbort = (): void => stop.abort();
        signal?.addEventListener("abort", onAbort, { once: true });
        poll = setInterval(() => {
          stat(tmp).then(
            (s) => onProgress({ line: `backup: ${(s.size / 1048576).toFixed(1)} MiB written`, source: "backup", bytesDone: s.size }),
            () => undefined,
          );
        }, PROGRESS_INTERVAL_MS);
        // Counts and dump read the same snapshot concurrently: the dump is compression-bound, the counts are not.
        const dumping = this.runTool(["pg_dump", "--no-password", ...DUMP_FLAGS, `--snapshot=${id}`, `--file=${tmp}`], {
          database: this.parts.database,
          signal: stop.signal,
        }).then((r) => {
          if (r.exitCode !== 0) release();
          return r;
        });
        const reading = queryFacts(snap).then(
          (facts) => {
            readingDone = true;
            return facts;
          },
          (err: unknown) => {
            if (!stop.signal.aborted) readFailedFirst = true;
            readingDone = true;
            stop.abort();
            throw err;
          },
        );
        const streamed = prove ? this.readWhileWritten(tmp, dumping, stop.signal) : Promise.resolve(null);
        const [dump, facts] = await Promise.allSettled([dumping, reading]);
        signal?.removeEventListener("abort", onAbort);
        clearInterval(poll);
        if (dump.status === "rejected" || dump.value.exitCode !== 0) stop.abort();
        const streamRead = await streamed;
        cancelled(signal);
        if (dump.status === "rejected") throw dump.reason;
        if (facts.status === "rejected" && readFailedFirst) throw facts.reason;
        if (dump.value.exitCode !== 0) throw toolFailure("BACKUP_FAILED", "pg_dump", dump.value);
        if (facts.status === "rejected") throw facts.reason;
        await snap.query("COMMIT");
        await snap.end();
        snapshot = undefined;

        const tool = `pg_dump ${await version} ${DUMP_FLAGS.join(" ")}`;
        cancelled(signal);
        // All only read the finished file: flushing, hashing and (proving) the TOC read overlap.
        const [{ sha256, bytes }, , toc] = await Promise.all([
          sha256File(tmp, signal),
          fsyncPath(tmp, "r+"),
          prove ? this.runTool(["pg_restore", "--list", "--file=/dev/null", tmp], { database: null, ...(signal !== undefined ? { signal } : {}) }) : null,
        ]);
        let proof: VerifyResult | undefined;
        if (prove) {
          let read = streamRead;
          if (read === null || read.exitCode !== 0) {
            onProgress({ line: "backup: the streamed read did not pass; reading the finished archive in full", source: "backup" });
            read = await this.runTool(["pg_restore", "--file=/dev/null", tmp], { database: null, ...(signal !== undefined ? { signal } : {}) });
          }
          if (read.cancelled || toc?.cancelled) throw new FlotillaError("CANCELLED", "backup cancelled");
          const passed = ["sha256 of the finished file recorded"];
          const failed: string[] = [];
          if (read.exitCode === 0) passed.push(`full read ok (pg_restore -f /dev/null${read === streamRead ? ", while it was written" : ""})`);
          else failed.push(`full read failed (${describeRun("pg_restore", read)}${stderrTail(read, 3)})`);
          if (toc !== null && toc.exitCode === 0) passed.push("table of contents ok (pg_restore --list)");
          else if (toc !== null) failed.push(`table of contents unreadable (${describeRun("pg_restore", toc)}${stderrTail(toc, 3)})`);
          proof =
            failed.length === 0 ? { ok: true, detail: passed.join("; ") } : { ok: false, detail: `FAILED: ${failed.join("; ")}; passed: ${passed.join("; ")}` };
        }
        try {
          await link(tmp, dest);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "EEXIST") {
            throw new FlotillaError("INVALID_ARGUMENT", `backup destination appeared while backing up: ${dest}`);
          }
          throw err;
        }
        await unlink(tmp);
        await fsyncPath(dirname(dest), "r");
        onProgress({ line: `backup: done, ${bytes} bytes, sha256 ${sha256.slice(0, 12)}…`, source: "backup", bytesDone: bytes, bytesTotal: bytes });
        return {
          path: dest,
          sizeBytes: bytes,
          sha256,
          tableCounts: facts.value.tableCounts,
          schemaHash: facts.value.schemaHash,
          revisions: facts.value.revisions,
          tool,
          ...(proof !== undefined ? { proof } : {}),
        };
      } catch (err) {
        if (err instanceof FlotillaError) throw err;
        if ((err as Error).name === "AbortError" || signal?.aborted) throw new FlotillaError("CANCELLED", "backup cancelled", { cause: err });
        throw new FlotillaError("BACKUP_FAILED", `backup of ${this.displayName} failed: ${errorText(err)}`, { cause: err });
      }
    } finally {
      if (poll !== undefined) clearInterval(poll);
      if (snapshot !== undefined) await snapshot.end().catch(() => undefined);
      await rm(tmp, { force: true });
    }
  }

  /**
   * `pg_restore -f /dev/null` reading, on its stdin, the archive pg_dump is
   * writing to `file`. Settles after pg_dump and the reader end.
   */
  private readWhileWritten(file: string, dumping: Promise<RunResult>, stop: AbortSignal): Promise<RunResult> {
    return this.runTool(["pg_restore", "--file=/dev/null"], { database: null, signal: stop, input: follow(file, dumping, stop) });
  }

  /**
   * sha256 and size against the artifact, then a full decode with
   * `pg_restore -f /dev/null` (`--list` only reads the table of contents and
   * passes corrupted and truncated archives). With `{ deep: true }` the archive
   * is also restored into a scratch database (dropped afterwards) and its row
   * counts, schema hash and revisions compared with the artifact's. A failed
   * check is a value (`ok: false`); only cancellation throws.
   */
  async verifyBackup(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal, options: PgVerifyOptions = {}): Promise<VerifyResult> {
    const path = resolve(artifact.path);
    const done: string[] = [];
    const fail = (why: string): VerifyResult => ({ ok: false, detail: [...done, why].join("; ") });
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch (err) {
      return fail(`artifact unreadable: ${errorText(err)}`);
    }
    if (size !== artifact.sizeBytes) return fail(`size ${size} bytes, manifest says ${artifact.sizeBytes}`);
    let last = 0;
    onProgress({ line: "verify: hashing and reading the whole archive with pg_restore", source: "backup" });
    // Two cores: the hash and pg_restore's full read run side by side.
    const reading = this.runTool(["pg_restore", "--file=/dev/null", path], { database: null, signal });
    let sha: string;
    try {
      sha = (
        await sha256File(path, signal, (n) => {
          if (n - last >= 64 * 1048576) {
            last = n;
            onProgress({ line: "verify: hashing", source: "backup", bytesDone: n, bytesTotal: size });
          }
        })
      ).sha256;
    } catch (err) {
      await reading;
      cancelled(signal);
      return fail(`artifact unreadable: ${errorText(err)}`);
    }
    const read = await reading;
    if (sha !== artifact.sha256) return fail("sha256 does not match the manifest");
    done.push("sha256 ok");
    if (read.cancelled) throw new FlotillaError("CANCELLED", "verification cancelled");
    if (read.exitCode !== 0) return fail(`full read failed (${describeRun("pg_restore", read)}${stderrTail(read, 3)})`);
    done.push("full read ok (pg_restore -f /dev/null)");
    if (options.deep === true) {
      const scratch = tempDatabaseName(this.parts.database, "verify");
      try {
        const props = await this.databaseProps(this.parts.database);
        await this.createDatabase(scratch, props, false);
        await this.restoreInto(scratch, path, onProgress, signal);
        const problems = compareFacts(artifact, await this.factsOf(scratch));
        if (problems.length > 0) return fail(`scratch restore differs: ${summarise(problems)}`);
        done.push(`scratch restore matches (${Object.keys(artifact.tableCounts).length} tables' row counts, schema hash, revisions)`);
      } catch (err) {
        cancelled(signal);
        return fail(`scratch restore failed: ${errorText(err)}`);
      } finally {
        await this.dropDatabase(scratch).catch(() => undefined);
      }
    }
    return { ok: true, detail: done.join("; ") };
  }

  /**
   * Verifies the artifact, refuses with APP_STILL_RUNNING when other sessions
   * use the database (the caller stops the apps; this never terminates them),
   * restores into a fresh `<db>_flotilla_restore_<hex>`, checks its row counts,
   * schema hash and revisions against the artifact, then swaps it in with two
   * renames in one transaction and drops the old database. Until the swap
   * commits the original database is untouched; on any failure the fresh copy
   * is dropped. Objects end up owned by the restoring user (`--no-owner`).
   */
  async restore(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal): Promise<void> {
    const v = await this.verifyBackup(artifact, onProgress, signal);
    if (!v.ok) throw new FlotillaError("VERIFY_FAILED", `refusing to restore ${this.displayName}: the backup did not verify: ${v.detail}`);
    await this.installArchive(resolve(artifact.path), artifact, onProgress, signal, null);
  }

  /**
   * Replaces (or creates) this database with the archive's contents: fresh
   * database, pg_restore, compare, rename swap. `like` gives encoding and locale
   * when this database does not exist yet.
   */
  private async installArchive(
    archive: string,
    expected: DatabaseFacts | BackupArtifact,
    onProgress: ProgressFn,
    signal: AbortSignal | undefined,
    like: DatabaseProps | null,
  ): Promise<void> {
    const db = this.parts.database;
    const current = await this.databaseProps(db);
    if (current !== null) await this.refuseIfHeld("restore");
    cancelled(signal);
    const fresh = tempDatabaseName(db, "restore");
    let swapped = false;
    try {
      await this.createDatabase(fresh, current ?? like, current !== null);
      onProgress({ line: `restore: restoring into new database ${fresh}`, source: "backup" });
      await this.restoreInto(fresh, archive, onProgress, signal);
      const problems = compareFacts(expected, await this.factsOf(fresh));
      if (problems.length > 0) throw new FlotillaError("RESTORE_FAILED", `restored copy does not match the backup: ${summarise(problems)}`);
      cancelled(signal);
      const old = tempDatabaseName(db, "old");
      await this.withClient("swapping in the restored database", { database: this.maintenanceDatabase }, async (c) => {
        if (current !== null) {
          const held = await querySessions(c, db);
          if (held.length > 0) throw this.stillRunning("restore", held);
          await c.query("BEGIN");
          try {
            await c.query(`ALTER DATABASE ${ident(db)} RENAME TO ${ident(old)}`);
            await c.query(`ALTER DATABASE ${ident(fresh)} RENAME TO ${ident(db)}`);
            await c.query("COMMIT");
          } catch (err) {
            await c.query("ROLLBACK").catch(() => undefined);
            throw err;
          }
        } else {
          await c.query(`ALTER DATABASE ${ident(fresh)} RENAME TO ${ident(db)}`);
        }
        swapped = true;
      });
      onProgress({ line: `restore: ${db} replaced by the restored copy`, source: "backup" });
      if (current !== null) {
        try {
          await this.dropDatabase(old);
        } catch (err) {
          onProgress({ line: `restore: the previous database was kept as ${old}; dropping it failed: ${errorText(err)}`, source: "backup" });
        }
      }
    } catch (err) {
      if (!swapped) await this.dropDatabase(fresh).catch(() => undefined);
      if (err instanceof FlotillaError) throw err;
      throw new FlotillaError("RESTORE_FAILED", `restore of ${this.displayName} failed: ${errorText(err)}`, { cause: err });
    }
  }

  /** pg_restore --no-owner --exit-on-error into `database` (which must exist and be empty). */
  private async restoreInto(database: string, archive: string, onProgress: ProgressFn, signal: AbortSignal | undefined): Promise<void> {
    // An empty --dbname selects "restore into a database" and libpq then takes the name from PGDATABASE,
    // so no connection detail appears in argv.
    const r = await this.runTool(["pg_restore", "--no-password", "--no-owner", "--exit-on-error", "--dbname=", archive], {
      database,
      signal,
    });
    if (r.exitCode !== 0) throw toolFailure("RESTORE_FAILED", "pg_restore", r);
    onProgress({ line: `restore: pg_restore into ${database} done`, source: "backup" });
  }

  /** Revisions, counts and schema hash of another database on this server, in one snapshot. */
  private async factsOf(database: string): Promise<DatabaseFacts> {
    return this.withClient("reading the restored database", { database, statementTimeoutMs: SCAN_TIMEOUT_MS }, async (c) => {
      await c.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      const facts = await queryFacts(c);
      await c.query("COMMIT");
      return facts;
    });
  }

  private async databaseProps(database: string): Promise<DatabaseProps | null> {
    return this.withClient("reading database properties", { database: this.maintenanceDatabase }, async (c) => {
      const r = await c.query<{ d: Record<string, unknown>; owner: string; encoding: string; me: string }>(
        `SELECT to_jsonb(d) AS d, pg_get_userbyid(d.datdba) AS owner, pg_encoding_to_char(d.encoding) AS encoding, current_user AS me
           FROM pg_catalog.pg_database d WHERE d.datname = $1`,
        [database],
      );
      const row = r.rows[0];
      if (row === undefined) return null;
      const str = (k: string): string | null => (typeof row.d[k] === "string" ? (row.d[k] as string) : null);
      return {
        owner: row.owner,
        currentUser: row.me,
        encoding: row.encoding,
        collate: str("datcollate") ?? "C",
        ctype: str("datctype") ?? "C",
        localeProvider: str("datlocprovider") ?? "c",
        // PostgreSQL 15–16 call it daticulocale, 17 datlocale.
        locale: str("datlocale") ?? str("daticulocale"),
      };
    });
  }

  /** CREATE DATABASE from template0 with the same encoding and locale as `like` (and its owner when asked). */
  private async createDatabase(name: string, like: DatabaseProps | null, sameOwner: boolean): Promise<void> {
    let sql = `CREATE DATABASE ${ident(name)} TEMPLATE template0`;
    if (like !== null) {
      if (sameOwner && like.owner !== like.currentUser) sql += ` OWNER ${ident(like.owner)}`;
      sql += ` ENCODING ${literal(like.encoding)} LC_COLLATE ${literal(like.collate)} LC_CTYPE ${literal(like.ctype)}`;
      if (like.localeProvider === "i" && like.locale !== null) sql += ` LOCALE_PROVIDER icu ICU_LOCALE ${literal(like.locale)}`;
      if (like.localeProvider === "b" && like.locale !== null) sql += ` LOCALE_PROVIDER builtin BUILTIN_LOCALE ${literal(like.locale)}`;
    }
    await this.withClient(`creating database ${name}`, { database: this.maintenanceDatabase }, (c) => c.query(sql));
  }

  /** Ends remaining sessions on one of the agent's own temporary databases and drops it. Idempotent. */
  private async dropDatabase(name: string): Promise<void> {
    await this.withClient(`dropping database ${name}`, { database: this.maintenanceDatabase }, async (c) => {
      await c.query("SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [name]);
      await c.query(`DROP DATABASE IF EXISTS ${ident(name)}`);
    });
  }

  private stillRunning(what: string, held: readonly Holder[]): FlotillaError {
    const list = held
      .slice(0, 5)
      .map((h) => `pid ${h.pid} ${h.description}${h.state ? ` [${h.state}]` : ""}`)
      .join("; ");
    return new FlotillaError(
      "APP_STILL_RUNNING",
      `cannot ${what} ${this.displayName}: ${held.length} other session${held.length === 1 ? "" : "s"} still connected (${list}); stop the app first`,
    );
  }

  private async refuseIfHeld(what: string): Promise<void> {
    const held = await this.holders();
    if (held.length > 0) throw this.stillRunning(what, held);
  }

  // ---------------------------------------------------------------- copies

  /**
   * Copies this database into `target` (another PostgresDatabase, same or
   * other server): a snapshot-consistent dump into the scratch dir, then the
   * target's restore path (fresh database, compare, rename swap), so an
   * existing target is replaced only by a verified copy and only when no
   * session uses it (APP_STILL_RUNNING otherwise). The dump file is removed.
   */
  async cloneTo(target: DatabaseAdapter, onProgress: ProgressFn, signal?: AbortSignal): Promise<void> {
    if (!(target instanceof PostgresDatabase)) {
      throw new FlotillaError("INVALID_ARGUMENT", `cannot clone PostgreSQL into a ${target.kind} database`);
    }
    const t = target.parts;
    if (t.host === this.parts.host && t.port === this.parts.port && t.database === this.parts.database) {
      throw new FlotillaError("INVALID_ARGUMENT", "clone target is the source database itself");
    }
    await mkdir(this.scratchDir, { recursive: true });
    const dump = join(this.scratchDir, `clone-${hex(8)}.dump`);
    try {
      const artifact = await this.dump(dump, onProgress, signal, false);
      const like = await this.databaseProps(this.parts.database);
      await target.installArchive(artifact.path, artifact, onProgress, signal, like);
    } finally {
      await rm(dump, { force: true });
    }
  }

  /**
   * A throwaway `<db>_flotilla_scratch_<hex>`: `CREATE DATABASE … TEMPLATE` when
   * nobody is connected (a file-level copy), otherwise restored from a fresh
   * snapshot dump and checked against it. `url` is the copy's `alembicUrl()`
   * (it carries the password: for a child's DATABASE_URL only, never to be
   * logged); `drop()` ends its sessions and drops it, and may be called twice.
   */
  async scratchCopy(onProgress: ProgressFn, signal?: AbortSignal): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }> {
    const name = tempDatabaseName(this.parts.database, "scratch");
    let copied = false;
    if ((await this.holders()).length === 0) {
      try {
        await this.withClient(`creating database ${name}`, { database: this.maintenanceDatabase }, (c) =>
          c.query(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(this.parts.database)}`),
        );
        copied = true;
        onProgress({ line: `scratch: ${name} created as a template copy`, source: "backup" });
      } catch (err) {
        onProgress({ line: `scratch: template copy not possible (${errorText(err)}), using pg_dump`, source: "backup" });
      }
    }
    if (!copied) {
      cancelled(signal);
      await mkdir(this.scratchDir, { recursive: true });
      const dump = join(this.scratchDir, `scratch-${hex(8)}.dump`);
      try {
        const artifact = await this.dump(dump, onProgress, signal, false);
        await this.createDatabase(name, await this.databaseProps(this.parts.database), false);
        await this.restoreInto(name, artifact.path, onProgress, signal);
        const problems = compareFacts(artifact, await this.factsOf(name));
        if (problems.length > 0) throw new FlotillaError("RESTORE_FAILED", `scratch copy does not match the dump: ${summarise(problems)}`);
        onProgress({ line: `scratch: ${name} restored from a pg_dump snapshot`, source: "backup" });
      } catch (err) {
        await this.dropDatabase(name).catch(() => undefined);
        throw err;
      } finally {
        await rm(dump, { force: true });
      }
    }
    const parts = withDatabase(this.parts, name);
    const adapter = new PostgresDatabase({
      url: displayPgUrl(parts),
      ...(this.parts.password !== undefined ? { password: this.parts.password } : {}),
      runner: this.runner,
      scratchDir: this.scratchDir,
    });
    return { adapter, url: adapter.alembicUrl(), drop: () => this.dropDatabase(name) };
  }

  /**
   * Restores a backup archive into a fresh `<db>_flotilla_scratch_<hex>` (restore
   * drills); the live database is untouched; drop() removes the copy.
   */
  async scratchFromBackup(
    artifact: BackupArtifact,
    onProgress: ProgressFn,
    signal?: AbortSignal,
  ): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }> {
    const name = tempDatabaseName(this.parts.database, "scratch");
    await this.createDatabase(name, await this.databaseProps(this.parts.database).catch(() => null), false);
    try {
      await this.restoreInto(name, resolve(artifact.path), onProgress, signal);
    } catch (err) {
      await this.dropDatabase(name).catch(() => undefined);
      throw err;
    }
    const adapter = new PostgresDatabase({
      url: displayPgUrl(withDatabase(this.parts, name)),
      ...(this.parts.password !== undefined ? { password: this.parts.password } : {}),
      runner: this.runner,
      scratchDir: this.scratchDir,
    });
    return { adapter, url: adapter.alembicUrl(), drop: () => this.dropDatabase(name) };
  }

  /** Server version and a psql-\d-like description of every table (columns, types, defaults, indexes): schema only, never rows. */
  async describe(): Promise<{ serverVersion: string; tables: Record<string, string> }> {
    return this.withClient("describing the schema", {}, async (c) => {
      const version = (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]?.v ?? "";
      const { schema, tables } = await queryTables(c);
      const out: Record<string, string> = {};
      for (const table of tables) {
        const cols = await c.query<{ column_name: string; data_type: string; is_nullable: string; column_default: string | null }>(
          "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
          [schema, table],
        );
        const idx = await c.query<{ indexdef: string }>("SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname", [
          schema,
          table,
        ]);
        out[table] = [
          `Table "${schema}.${table}"`,
          "column | type | nullable | default",
          ...cols.rows.map((r) => `${r.column_name} | ${r.data_type} | ${r.is_nullable === "YES" ? "" : "not null"} | ${r.column_default ?? ""}`),
          ...(idx.rows.length ? ["Indexes:", ...idx.rows.map((r) => `  ${r.indexdef}`)] : []),
        ].join("\n");
      }
      return { serverVersion: version, tables: out };
    });
  }

  /** One configured query in a READ ONLY transaction: its row count, and the first value when it is a number (never row data). */
  async smokeQuery(sql: string): Promise<{ rows: number; value: string }> {
    return this.withClient("running a smoke query", { statementTimeoutMs: 60_000 }, async (c) => {
      await c.query("BEGIN READ ONLY");
      try {
        const r = await c.query({ text: sql, rowMode: "array" });
        const first = (r.rows[0] as unknown[] | undefined)?.[0];
        return {
          rows: r.rows.length,
          value: typeof first === "number" || (typeof first === "string" && /^-?\d+(\.\d+)?$/.test(first)) || typeof first === "bigint" ? String(first) : "",
        };
      } finally {
        await c.query("ROLLBACK").catch(() => undefined);
      }
    });
  }
}

// ------------------------------------------------------------------ queries (take an open client)

async function queryTables(c: pg.ClientBase): Promise<{ schema: string; tables: string[] }> {
  const s = await c.query<{ schema: string | null }>("SELECT current_schema() AS schema");
  const schema = s.rows[0]?.schema ?? null;
  if (schema === null) return { schema: "public", tables: [] };
  const r = await c.query<{ relname: string }>(
    `SELECT c.relname FROM pg_catalog.pg_class c
      WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) AND c.relkind IN ('r', 'p')
      ORDER BY c.relname COLLATE "C"`,
    [schema],
  );
  return { schema, tables: r.rows.map((row) => row.relname) };
}

async function queryRevisions(c: pg.ClientBase): Promise<string[] | null> {
  const r = await c.query<{ reg: string | null }>("SELECT to_regclass('alembic_version')::text AS reg");
  if (r.rows[0]?.reg == null) return null;
  const v = await c.query<{ version_num: string }>('SELECT version_num FROM alembic_version ORDER BY version_num COLLATE "C"');
  return v.rows.map((row) => row.version_num);
}

async function queryCounts(c: pg.ClientBase): Promise<Record<string, number>> {
  const { schema, tables } = await queryTables(c);
  const counts: Record<string, number> = {};
  if (tables.length === 0) return counts;
  // One statement, so a REPEATABLE READ caller and a plain caller see the same thing and round trips stay at one.
  const sql = tables.map((t, i) => `SELECT ${i} AS i, count(*)::text AS n FROM ${ident(schema)}.${ident(t)}`).join(" UNION ALL ");
  const r = await c.query<{ i: number; n: string }>(sql);
  for (const row of r.rows) counts[tables[row.i]!] = Number(row.n);
  return counts;
}

async function querySchemaHash(c: pg.ClientBase): Promise<string> {
  const lines: string[] = [];
  const cols = await c.query<{ t: string; k: string; pos: string; col: string; type: string; nn: boolean; def: string | null; idn: string; gen: string }>(
    `SELECT c.relname AS t, c.relkind::text AS k,
            row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)::text AS pos,
            a.attname AS col, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS nn,
            pg_get_expr(d.adbin, d.adrelid) AS def, a.attidentity::text AS idn, a.attgenerated::text AS gen
       FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
       LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE c.relnamespace = ${CURRENT_NS} AND c.relkind IN ('r', 'p', 'v', 'm')
        AND a.attnum > 0 AND NOT a.attisdropped`,
  );
  for (const r of cols.rows) lines.push(["column", r.t, r.k, r.pos, r.col, r.type, r.nn ? "not null" : "null", r.def ?? "", r.idn, r.gen].join("\t"));
  const idx = await c.query<{ tablename: string; indexname: string; indexdef: string }>(
    "SELECT tablename, indexname, indexdef FROM pg_catalog.pg_indexes WHERE schemaname = current_schema()",
  );
  for (const r of idx.rows) lines.push(["index", r.tablename, r.indexname, r.indexdef].join("\t"));
  const cons = await c.query<{ t: string; name: string; def: string }>(
    `SELECT c.relname AS t, k.conname AS name, pg_get_constraintdef(k.oid) AS def
       FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
      WHERE c.relnamespace = ${CURRENT_NS}`,
  );
  for (const r of cons.rows) lines.push(["constraint", r.t, r.name, r.def].join("\t"));
  lines.sort();
  return createHash("sha256").update(lines.join("\n")).digest("hex");
}

async function queryFacts(c: pg.ClientBase): Promise<DatabaseFacts> {
  const revisions = (await queryRevisions(c)) ?? [];
  const tableCounts = await queryCounts(c);
  const schemaHash = await querySchemaHash(c);
  return { revisions, tableCounts, schemaHash };
}

/**
 * Client sessions on `database` other than this connection and the agent's own
 * (application_name "flotilla…"). The agent's sessions are left out also
 * because one it has just closed may linger for a moment; ALTER/DROP DATABASE
 * waits a few seconds for such backends to exit.
 */
async function querySessions(c: pg.ClientBase, database: string): Promise<Holder[]> {
  const r = await c.query<{ pid: number; app: string; addr: string | null; usename: string | null; state: string | null }>(
    `SELECT pid, coalesce(application_name, '') AS app, host(client_addr) AS addr, usename::text AS usename, state
       FROM pg_catalog.pg_stat_activity
      WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
        AND coalesce(application_name, '') NOT LIKE 'flotilla%'
      ORDER BY pid`,
    [database],
  );
  return r.rows.map((row) => ({
    pid: row.pid,
    description: `${row.app === "" ? "(no application_name)" : row.app} @ ${row.addr ?? "local socket"} (${row.usename ?? "?"})`,
    ...(row.state !== null ? { state: row.state } : {}),
  }));
}
