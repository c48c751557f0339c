import { once } from "node:events";
import { createRequire } from "node:module";
import Database from "better-sqlite3";
import type pg from "pg";
import type copyStreamsModule from "pg-copy-streams";
import { FlotillaError } from "../../common/errors.js";
import {
  MoveValueError,
  RowChecksum,
  canonicalFromPg,
  canonicalFromSqlite,
  canonicalRow,
  copyFieldFromSqlite,
  sqliteValueFromPg,
  unescapeCopyField,
  type ColumnFact,
  type ForeignKeyFact,
  type SqliteValue,
  type TableCopy,
  type TableFact,
  type ValueKind,
} from "../core/move-plan.js";

/**
 * The data side of `flotilla move`: schema facts, orphan rows, the bulk copy
 * (SQLite → PostgreSQL with COPY FROM STDIN; PostgreSQL → SQLite with COPY TO
 * STDOUT into prepared inserts) and the per-table content checksums, computed
 * the same way on both engines. Conversions and normalisation are the pure
 * functions of core/move-plan.ts; this file only moves bytes.
 */

const requireCjs = createRequire(import.meta.url);
let copyStreamsCache: typeof copyStreamsModule | undefined;
/** `pg-copy-streams`, loaded by the first move: an agent that never moves a database never loads it. */
const copyStreams = (): typeof copyStreamsModule => (copyStreamsCache ??= requireCjs("pg-copy-streams") as typeof copyStreamsModule);

const qi = (name: string): string => `"${name.replace(/"/g, '""')}"`;
/** COPY text is flushed to the server in chunks of about this many characters. */
const CHUNK = 1 << 20;

export interface CopyProgress {
  readonly table: string;
  readonly tableIndex: number;
  readonly tableCount: number;
  readonly rowsDone: number;
  readonly rowsTotal: number;
  readonly bytesDone: number;
}

export interface TableResult {
  readonly table: string;
  readonly rows: number;
  readonly skipped: number;
  readonly checksum: string;
  readonly bytes: number;
}

/** One orphaned row: its table, the parent it misses, and its key. */
export interface OrphanRow {
  readonly table: string;
  readonly parent: string;
  readonly rowid: number;
  readonly key: string;
}

// ---------------------------------------------------------------- SQLite facts

export function openSqlite(path: string, readonly: boolean): Database.Database {
  const db = new Database(path, { readonly, fileMustExist: readonly });
  db.pragma("busy_timeout = 10000");
  return db;
}

export function sqliteTables(db: Database.Database): TableFact[] {
  const names = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map(
    (r) => r.name,
  );
  return names.map((name) => ({
    name,
    columns: (db.prepare(`PRAGMA table_info(${qi(name)})`).all() as { name: string; type: string; notnull: number; pk: number }[]).map(
      (c): ColumnFact => ({ name: c.name, type: c.type, notNull: c.notnull === 1, pk: c.pk }),
    ),
  }));
}

export function sqliteForeignKeys(db: Database.Database, tables: readonly string[]): ForeignKeyFact[] {
  const out: ForeignKeyFact[] = [];
  for (const table of tables) {
    const rows = db.prepare(`PRAGMA foreign_key_list(${qi(table)})`).all() as { id: number; table: string; from: string; to: string | null }[];
    const byId = new Map<number, { parent: string; cols: string[]; pcols: string[] }>();
    for (const r of rows) {
      const e = byId.get(r.id) ?? { parent: r.table, cols: [], pcols: [] };
      e.cols.push(r.from);
      e.pcols.push(r.to ?? "");
      byId.set(r.id, e);
    }
    for (const e of byId.values()) out.push({ table, columns: e.cols, parent: e.parent, parentColumns: e.pcols });
  }
  return out;
}

/** Rows whose foreign key points at no parent row (SQLite does not enforce foreign keys unless asked). */
export function sqliteOrphans(db: Database.Database, tables: TableFact[]): OrphanRow[] {
  const rows = db.prepare("PRAGMA foreign_key_check").all() as { table: string; rowid: number | null; parent: string }[];
  return rows.map((r) => {
    const t = tables.find((x) => x.name === r.table);
    const key =
      t?.columns
        .filter((c) => c.pk > 0)
        .sort((a, b) => a.pk - b.pk)
        .map((c) => c.name) ?? [];
    let keyText = `rowid ${r.rowid ?? "?"}`;
    if (key.length > 0 && r.rowid !== null) {
      const k = db
        .prepare(`SELECT ${key.map(qi).join(", ")} FROM ${qi(r.table)} WHERE rowid = ?`)
        .raw(true)
        .get(r.rowid) as unknown[] | undefined;
      if (k) keyText = key.map((c, i) => `${c}=${String(k[i])}`).join(",");
    }
    return { table: r.table, parent: r.parent, rowid: r.rowid ?? -1, key: keyText };
  });
}

// ---------------------------------------------------------------- PostgreSQL facts

export async function pgTables(client: pg.Client): Promise<TableFact[]> {
  const r = await client.query<{ table: string; column: string; type: string; notnull: boolean; pk: number }>(
    `SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull,
            COALESCE((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) WHERE k.att = a.attnum), 0)::int AS pk
       FROM pg_catalog.pg_class c
       JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
      WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) AND c.relkind IN ('r', 'p')
      ORDER BY c.relname, a.attnum`,
  );
  const out = new Map<string, ColumnFact[]>();
  for (const row of r.rows) {
    const cols = out.get(row.table) ?? [];
    cols.push({ name: row.column, type: row.type, notNull: row.notnull, pk: row.pk });
    out.set(row.table, cols);
  }
  return [...out].map(([name, columns]) => ({ name, columns }));
}

export async function pgForeignKeys(client: pg.Client): Promise<ForeignKeyFact[]> {
  const r = await client.query<{ table: string; parent: string; cols: string[]; pcols: string[] }>(
    `SELECT c.relname AS table, p.relname AS parent,
            ARRAY(SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = k.conrelid AND attnum = ANY(k.conkey))::text[] AS cols,
            ARRAY(SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = k.confrelid AND attnum = ANY(k.confkey))::text[] AS pcols
       FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_class p ON p.oid = k.confrelid
      WHERE k.contype = 'f' AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())`,
  );
  return r.rows.map((x) => ({ table: x.table, columns: x.cols, parent: x.parent, parentColumns: x.pcols }));
}

/** Every object Alembic created, dropped again after a failed move so TO is empty as it was. */
export async function pgDropAll(client: pg.Client): Promise<void> {
  const tables = await client.query<{ name: string }>(
    "SELECT c.relname AS name FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) AND c.relkind IN ('r','p','v','m','S')",
  );
  for (const t of tables.rows)
    await client
      .query(`DROP TABLE IF EXISTS ${qi(t.name)} CASCADE`)
      .catch(() => client.query(`DROP SEQUENCE IF EXISTS ${qi(t.name)} CASCADE`).catch(() => undefined))
      .catch(() => undefined);
  for (const t of tables.rows) await client.query(`DROP VIEW IF EXISTS ${qi(t.name)} CASCADE`).catch(() => undefined);
  const types = await client.query<{ name: string }>(
    "SELECT t.typname AS name FROM pg_catalog.pg_type t WHERE t.typnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema()) AND t.typtype = 'e'",
  );
  for (const t of types.rows) await client.query(`DROP TYPE IF EXISTS ${qi(t.name)} CASCADE`).catch(() => undefined);
}

// ---------------------------------------------------------------- SQLite → PostgreSQL

function sqliteSelect(t: TableCopy, withRowid: boolean): string {
  const cols = t.columns.map((c) => (c.kind === "integer" || c.kind === "boolean" ? `CAST(${qi(c.name)} AS TEXT)` : qi(c.name)));
  return `SELECT ${withRowid ? "_rowid_, " : ""}${cols.join(", ")} FROM ${qi(t.name)}`;
}

async function writeChunk(stream: NodeJS.WritableStream, chunk: string, failed: () => Error | undefined): Promise<void> {
  if (stream.write(chunk)) return;
  await Promise.race([once(stream, "drain"), once(stream, "error")]);
  const err = failed();
  if (err) throw err;
}

/** An index that is not a constraint's, dropped for a bulk load and built again after it (same definition). */
export interface SecondaryIndex {
  readonly name: string;
  readonly definition: string;
}

/** Drops the table's indexes that back no constraint; returns their definitions for `pgCreateIndexes`. */
export async function pgDropSecondaryIndexes(client: pg.Client, table: string): Promise<SecondaryIndex[]> {
  const r = await client.query<{ name: string; definition: string }>(
    `SELECT ic.relname AS name, pg_get_indexdef(i.indexrelid) AS definition
       FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
      WHERE c.relname = $1 AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid)
      ORDER BY ic.relname`,
    [table],
  );
  for (const idx of r.rows) await client.query(`DROP INDEX ${qi(idx.name)}`);
  return r.rows;
}

/**
 * Drops the table's primary-key and unique constraints that no foreign key
 * references (those must stay: the references need their index); returns
 * them to be added again after the load.
 */
async function pgDropUnreferencedKeys(client: pg.Client, table: string): Promise<SecondaryIndex[]> {
  const r = await client.query<{ name: string; definition: string }>(
    `SELECT k.conname AS name, pg_get_constraintdef(k.oid) AS definition
       FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
      WHERE c.relname = $1 AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = current_schema())
        AND k.contype IN ('p', 'u')
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.contype = 'f' AND f.conindid = k.conindid)
      ORDER BY k.contype, k.conname`,
    [table],
  );
  for (const k of r.rows) await client.query(`ALTER TABLE ${qi(table)} DROP CONSTRAINT ${qi(k.name)}`);
  return r.rows;
}

export async function pgCreateIndexes(client: pg.Client, indexes: readonly SecondaryIndex[]): Promise<void> {
  for (const idx of indexes) await client.query(idx.definition);
}

/**
 * Copies one table from the SQLite file into PostgreSQL in its own
 * transaction: TRUNCATE (rows a migration may have inserted give way to
 * FROM's), secondary indexes dropped, one COPY … FREEZE (no re-write of
 * every page for hint bits when it is read next), commit. Computes the
 * source checksum of what it sends; rows whose rowid is in `skip` are left
 * out. Returns the result and the indexes still to build.
 */
export async function copySqliteTable(
  db: Database.Database,
  client: pg.Client,
  t: TableCopy,
  position: { index: number; count: number; inCycle: boolean },
  skipIds: ReadonlySet<number> | undefined,
  onProgress: (p: CopyProgress) => void,
  signal?: AbortSignal,
): Promise<{ result: TableResult; indexes: SecondaryIndex[] }> {
  const total = (db.prepare(`SELECT count(*) AS n FROM ${qi(t.name)}`).get() as { n: number }).n;
  const withRowid = skipIds !== undefined && skipIds.size > 0;
  const off = withRowid ? 1 : 0;
  const kinds = t.columns.map((c) => c.kind);
  const width = kinds.length;
  const sum = new RowChecksum();
  let bytes = 0;
  let skipped = 0;
  let lastReport = performance.now();
  const report = (): void =>
    onProgress({ table: t.name, tableIndex: position.index, tableCount: position.count, rowsDone: sum.rows + skipped, rowsTotal: total, bytesDone: bytes });
  report();
  await client.query("BEGIN");
  let indexes: SecondaryIndex[] = [];
  try {
    // Tables copied later in foreign-key order reference this one: CASCADE empties them too (they are
    // still to be copied). A table in a reference cycle could empty one already copied: it gets no
    // TRUNCATE, so no FREEZE either.
    if (!position.inCycle) await client.query(`TRUNCATE ${qi(t.name)} CASCADE`);
    if (total > 0) indexes = await pgDropSecondaryIndexes(client, t.name);
    const keys = total > 0 ? await pgDropUnreferencedKeys(client, t.name) : [];
    const stream = client.query(
      copyStreams().from(`COPY ${qi(t.name)} (${t.columns.map((c) => qi(c.name)).join(", ")}) FROM STDIN${position.inCycle ? "" : " WITH (FREEZE)"}`),
    );
    let streamError: Error | undefined;
    stream.on("error", (e: Error) => {
      streamError = e;
    });
    const stmt = db.prepare(sqliteSelect(t, withRowid)).raw(true);
    const canon: (string | null)[] = new Array<string | null>(width);
    let buf = "";
    try {
      for (const raw of stmt.iterate() as IterableIterator<SqliteValue[]>) {
        if (withRowid && skipIds.has(Number(raw[0]))) {
          skipped++;
          continue;
        }
        let line = "";
        for (let i = 0; i < width; i++) {
          const v = raw[i + off]!;
          const kind = kinds[i]!;
          try {
            line += (i === 0 ? "" : "\t") + copyFieldFromSqlite(kind, v);
          } catch (err) {
            if (err instanceof MoveValueError)
              throw new FlotillaError(
                "PRECONDITION_FAILED",
                `${t.name}.${t.columns[i]!.name}: ${err.message} (column type ${kind} on the destination); fix the value in FROM, nothing was moved`,
              );
            throw err;
          }
          canon[i] = canonicalFromSqlite(kind, v);
        }
        buf += line + "\n";
        sum.add(canonicalRow(canon));
        if (buf.length >= CHUNK) {
          bytes += Buffer.byteLength(buf);
          await writeChunk(stream, buf, () => streamError);
          buf = "";
          if (signal?.aborted) throw new FlotillaError("CANCELLED", "move cancelled");
          const now = performance.now();
          if (now - lastReport > 500) {
            lastReport = now;
            report();
          }
        }
      }
      bytes += Buffer.byteLength(buf);
      stream.end(buf);
      await Promise.race([once(stream, "finish"), once(stream, "error")]);
      if (streamError) throw streamError;
    } catch (err) {
      if (!stream.destroyed) stream.destroy();
      throw err;
    }
    // The primary key and unique constraints come back as one sorted index build each, same names and definitions.
    for (const k of keys) await client.query(`ALTER TABLE ${qi(t.name)} ADD CONSTRAINT ${qi(k.name)} ${k.definition}`);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => undefined);
    if (err instanceof FlotillaError) throw err;
    throw new FlotillaError("MIGRATION_FAILED", `copying ${t.name} into PostgreSQL failed: ${(err as Error).message}`, { cause: err });
  }
  report();
  return { result: { table: t.name, rows: sum.rows, skipped, checksum: sum.hex(), bytes }, indexes };
}

/** Moves each integer primary key's sequence past the highest id copied (identity and serial columns alike). */
export async function pgResetSequences(client: pg.Client, tables: readonly TableCopy[]): Promise<string[]> {
  const moved: string[] = [];
  for (const t of tables) {
    if (!t.serial) continue;
    const seq = await client.query<{ seq: string | null }>("SELECT pg_get_serial_sequence($1, $2) AS seq", [qi(t.name), t.serial]);
    const name = seq.rows[0]?.seq;
    if (!name) continue;
    await client.query(`SELECT setval($1, COALESCE((SELECT max(${qi(t.serial)}) FROM ${qi(t.name)}), 0) + 1, false)`, [name]);
    moved.push(`${t.name}.${t.serial}`);
  }
  return moved;
}

// ---------------------------------------------------------------- checksums read back

/** Reads COPY TO STDOUT text and calls `onRow` with the decoded fields of each line. */
async function pgRows(client: pg.Client, sql: string, onRow: (fields: (string | null)[]) => void): Promise<void> {
  const stream = client.query(copyStreams().to(`COPY (${sql}) TO STDOUT`));
  let rest = "";
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    const text = rest + chunk.toString("utf8");
    let start = 0;
    for (;;) {
      const nl = text.indexOf("\n", start);
      if (nl < 0) break;
      const line = text.slice(start, nl);
      start = nl + 1;
      onRow(line.split("\t").map(unescapeCopyField));
    }
    rest = text.slice(start);
  }
  if (rest.length > 0) onRow(rest.split("\t").map(unescapeCopyField));
}

function keyText(t: TableCopy, fields: readonly (string | null)[]): string {
  return t.key
    .map((k) => {
      const i = t.columns.findIndex((c) => c.name === k);
      return `${k}=${i >= 0 ? String(fields[i] ?? "NULL") : "?"}`;
    })
    .join(",");
}

/** The checksum of a PostgreSQL table over the columns of `t`, normalised like the SQLite side. */
export async function pgChecksum(client: pg.Client, t: TableCopy): Promise<{ rows: number; checksum: string }> {
  const sum = new RowChecksum();
  const kinds = t.columns.map((c) => c.kind);
  await pgRows(client, `SELECT ${t.columns.map((c) => qi(c.name)).join(", ")} FROM ${qi(t.name)}`, (f) => {
    sum.add(canonicalRow(f.map((v, i) => canonicalFromPg(kinds[i]!, v))));
  });
  return { rows: sum.rows, checksum: sum.hex() };
}

/** The checksum of a SQLite table over the columns of `t` (rows in `skip` left out, as in the copy). */
export function sqliteChecksum(db: Database.Database, t: TableCopy, skip?: ReadonlySet<number>): { rows: number; checksum: string } {
  const sum = new RowChecksum();
  const kinds = t.columns.map((c) => c.kind);
  const withRowid = skip !== undefined && skip.size > 0;
  const off = withRowid ? 1 : 0;
  for (const raw of db.prepare(sqliteSelect(t, withRowid)).raw(true).iterate() as IterableIterator<SqliteValue[]>) {
    if (withRowid && skip.has(Number(raw[0]))) continue;
    const f: (string | null)[] = [];
    for (let i = 0; i < kinds.length; i++) f.push(canonicalFromSqlite(kinds[i]!, raw[i + off]!));
    sum.add(canonicalRow(f));
  }
  return { rows: sum.rows, checksum: sum.hex() };
}

/**
 * After a checksum mismatch: the first key whose row differs or is missing on
 * one side. Holds one digest per row of the table in memory.
 */
export async function firstDifference(db: Database.Database, client: pg.Client, t: TableCopy, skip?: ReadonlySet<number>): Promise<string> {
  const kinds = t.columns.map((c) => c.kind);
  const sqliteRows = new Map<string, string>();
  const withRowid = skip !== undefined && skip.size > 0;
  const off = withRowid ? 1 : 0;
  for (const raw of db.prepare(sqliteSelect(t, withRowid)).raw(true).iterate() as IterableIterator<SqliteValue[]>) {
    if (withRowid && skip.has(Number(raw[0]))) continue;
    const f = kinds.map((k, i) => canonicalFromSqlite(k, raw[i + off]!));
    sqliteRows.set(keyText(t, f), canonicalRow(f));
  }
  let found = "";
  await pgRows(client, `SELECT ${t.columns.map((c) => qi(c.name)).join(", ")} FROM ${qi(t.name)}`, (fields) => {
    if (found) return;
    const f = fields.map((v, i) => canonicalFromPg(kinds[i]!, v));
    const key = keyText(t, f);
    const s = sqliteRows.get(key);
    if (s === undefined) found = `${key} (only in PostgreSQL)`;
    else if (s !== canonicalRow(f)) found = `${key} (values differ)`;
    sqliteRows.delete(key);
  });
  if (found) return found;
  const missing = sqliteRows.keys().next();
  return missing.done ? "no single row differs (duplicate rows?)" : `${missing.value} (only in SQLite)`;
}

// ---------------------------------------------------------------- PostgreSQL → SQLite

/**
 * Copies every table of `plan` from PostgreSQL into the SQLite file (one
 * transaction), computing the source checksum of what it reads.
 */
export async function copyPgToSqlite(
  client: pg.Client,
  db: Database.Database,
  tables: readonly TableCopy[],
  onProgress: (p: CopyProgress) => void,
  signal?: AbortSignal,
): Promise<TableResult[]> {
  const results: TableResult[] = [];
  db.pragma("foreign_keys = OFF");
  db.exec("BEGIN");
  try {
    for (const [index, t] of tables.entries()) {
      const total = Number((await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${qi(t.name)}`)).rows[0]?.n ?? 0);
      const kinds: ValueKind[] = t.columns.map((c) => c.kind);
      const insert = db.prepare(`INSERT INTO ${qi(t.name)} (${t.columns.map((c) => qi(c.name)).join(", ")}) VALUES (${t.columns.map(() => "?").join(", ")})`);
      const sum = new RowChecksum();
      let bytes = 0;
      let lastReport = performance.now();
      onProgress({ table: t.name, tableIndex: index + 1, tableCount: tables.length, rowsDone: 0, rowsTotal: total, bytesDone: 0 });
      await pgRows(client, `SELECT ${t.columns.map((c) => qi(c.name)).join(", ")} FROM ${qi(t.name)}`, (fields) => {
        sum.add(canonicalRow(fields.map((v, i) => canonicalFromPg(kinds[i]!, v))));
        insert.run(fields.map((v, i) => sqliteValueFromPg(kinds[i]!, v)));
        for (const v of fields) bytes += v === null ? 2 : v.length + 1;
        const now = performance.now();
        if (now - lastReport > 500) {
          lastReport = now;
          onProgress({ table: t.name, tableIndex: index + 1, tableCount: tables.length, rowsDone: sum.rows, rowsTotal: total, bytesDone: bytes });
        }
      });
      if (signal?.aborted) throw new FlotillaError("CANCELLED", "move cancelled");
      results.push({ table: t.name, rows: sum.rows, skipped: 0, checksum: sum.hex(), bytes });
      onProgress({ table: t.name, tableIndex: index + 1, tableCount: tables.length, rowsDone: sum.rows, rowsTotal: total, bytesDone: bytes });
    }
    db.exec("COMMIT");
  } catch (err) {
    if (db.inTransaction) db.exec("ROLLBACK");
    if (err instanceof FlotillaError) throw err;
    throw new FlotillaError("MIGRATION_FAILED", `copying into SQLite failed: ${(err as Error).message}`, { cause: err });
  }
  return results;
}
