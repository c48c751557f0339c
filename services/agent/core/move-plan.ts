/**
 * Pure decisions of `flotilla move` (a target copied between SQLite and
 * PostgreSQL at the same Alembic revision): which tables to copy in which
 * order, how each column's value is converted for the destination, how both
 * sides normalise values so one checksum means the same thing on either
 * engine, and whether the preflight facts allow the move at all. No I/O here.
 */

export type EngineKind = "sqlite" | "postgresql";

/**
 * How a column's values are converted and compared, decided by the
 * destination's declared type (SQLite) or catalog type (PostgreSQL).
 */
export type ValueKind =
  | "boolean"
  | "integer"
  | "float"
  | "numeric"
  | "text"
  | "json"
  | "jsonb"
  | "bytes"
  | "timestamp"
  | "timestamptz"
  | "date"
  | "time"
  | "uuid";

export interface ColumnFact {
  readonly name: string;
  /** Declared type (SQLite) or format_type() (PostgreSQL), as the catalog reports it. */
  readonly type: string;
  readonly notNull: boolean;
  /** Position inside the primary key (1-based), 0 when not part of it. */
  readonly pk: number;
}

export interface TableFact {
  readonly name: string;
  readonly columns: readonly ColumnFact[];
}

export interface ForeignKeyFact {
  readonly table: string;
  readonly columns: readonly string[];
  readonly parent: string;
  readonly parentColumns: readonly string[];
}

/** The value kind of a PostgreSQL column type (format_type text). */
export function kindOfPgType(type: string): ValueKind {
  const t = type.toLowerCase().trim();
  if (t === "boolean") return "boolean";
  if (t === "smallint" || t === "integer" || t === "bigint") return "integer";
  if (t === "real" || t === "double precision") return "float";
  if (t.startsWith("numeric") || t.startsWith("decimal")) return "numeric";
  if (t === "json") return "json";
  if (t === "jsonb") return "jsonb";
  if (t === "bytea") return "bytes";
  if (t.startsWith("timestamp") && t.includes("with time zone") && !t.includes("without")) return "timestamptz";
  if (t.startsWith("timestamp")) return "timestamp";
  if (t === "date") return "date";
  if (t.startsWith("time")) return "time";
  if (t === "uuid") return "uuid";
  return "text";
}

/**
 * The value kind of a SQLite declared type, as SQLAlchemy writes them
 * (BOOLEAN, BIGINT, JSON, DATETIME, BLOB, …), falling back on SQLite's own
 * affinity rules for anything else.
 */
export function kindOfSqliteType(type: string): ValueKind {
  const t = type.toUpperCase().trim();
  if (t === "BOOLEAN" || t === "BOOL") return "boolean";
  if (t === "JSON") return "json";
  if (t === "DATETIME" || t.startsWith("TIMESTAMP")) return "timestamp";
  if (t === "DATE") return "date";
  if (t === "TIME") return "time";
  if (t === "UUID") return "uuid";
  if (t.includes("INT")) return "integer";
  if (t.includes("CHAR") || t.includes("CLOB") || t.includes("TEXT") || t === "") return "text";
  if (t.includes("BLOB")) return "bytes";
  if (t.includes("REAL") || t.includes("FLOA") || t.includes("DOUB")) return "float";
  if (t.startsWith("NUMERIC") || t.startsWith("DECIMAL")) return "numeric";
  return "text";
}

export interface ColumnCopy {
  readonly name: string;
  /** How values are converted into the destination and compared. */
  readonly kind: ValueKind;
}

export interface TableCopy {
  readonly name: string;
  readonly columns: readonly ColumnCopy[];
  /** Primary-key columns (for naming a sample key on a difference), in key order. */
  readonly key: readonly string[];
  /** Integer primary key column whose PostgreSQL sequence must be moved past the highest id. */
  readonly serial?: string;
  /** Other tables of the plan this one references: copied (and committed) before it. */
  readonly parents: readonly string[];
}

export interface CopyPlan {
  readonly tables: readonly TableCopy[];
  /** Problems that make the copy impossible (schema drift between FROM and the schema Alembic built). */
  readonly problems: readonly string[];
  /** Tables that reference themselves or form a cycle: copied whole in one statement each. */
  readonly cycles: readonly string[];
}

const SKIP_TABLES = new Set(["alembic_version", "sqlite_sequence", "sqlite_stat1", "sqlite_stat4"]);

/**
 * Orders tables so every parent comes before its children; among the tables
 * whose parents are placed, the heaviest (`weights`, e.g. row counts) goes
 * first, so checking a big table overlaps copying the smaller ones. Tables
 * caught in a cycle come last, alphabetically, and are reported;
 * self-references are not cycles (one COPY statement checks them at its end).
 */
export function foreignKeyOrder(
  tables: readonly string[],
  fks: readonly ForeignKeyFact[],
  weights: Readonly<Record<string, number>> = {},
): { order: string[]; cycles: string[] } {
  const names = [...tables].sort();
  const known = new Set(names);
  const parents = new Map<string, Set<string>>(names.map((n) => [n, new Set<string>()]));
  for (const fk of fks) {
    if (fk.table === fk.parent || !known.has(fk.table) || !known.has(fk.parent)) continue;
    parents.get(fk.table)!.add(fk.parent);
  }
  const order: string[] = [];
  const placed = new Set<string>();
  for (;;) {
    const ready = names.filter((n) => !placed.has(n) && [...parents.get(n)!].every((p) => placed.has(p)));
    if (ready.length === 0) break;
    const next = ready.reduce((best, n) => ((weights[n] ?? 0) > (weights[best] ?? 0) ? n : best));
    order.push(next);
    placed.add(next);
  }
  const cycles = names.filter((n) => !placed.has(n));
  return { order: [...order, ...cycles], cycles };
}

/**
 * Matches FROM's tables with the schema Alembic built on TO and decides how
 * each column is converted: by TO's type. Every FROM column must exist on TO
 * (same revision, same schema); a TO column FROM lacks gets its default.
 */
export function planCopy(
  from: readonly TableFact[],
  to: readonly TableFact[],
  toEngine: EngineKind,
  fks: readonly ForeignKeyFact[],
  weights: Readonly<Record<string, number>> = {},
): CopyPlan {
  const problems: string[] = [];
  const toByName = new Map(to.map((t) => [t.name, t]));
  const fromNames = from.map((t) => t.name).filter((n) => !SKIP_TABLES.has(n) && !n.startsWith("sqlite_"));
  for (const n of fromNames) {
    if (!toByName.has(n)) problems.push(`table ${n} exists in FROM but not in the schema Alembic builds at this revision (created outside the migrations?)`);
  }
  const { order, cycles } = foreignKeyOrder(
    fromNames.filter((n) => toByName.has(n)),
    fks,
    weights,
  );
  const kindOf = toEngine === "postgresql" ? kindOfPgType : kindOfSqliteType;
  const tables: TableCopy[] = [];
  for (const name of order) {
    const src = from.find((t) => t.name === name)!;
    const dst = toByName.get(name)!;
    const dstCols = new Map(dst.columns.map((c) => [c.name, c]));
    const columns: ColumnCopy[] = [];
    for (const c of src.columns) {
      const d = dstCols.get(c.name);
      if (!d) {
        problems.push(`column ${name}.${c.name} exists in FROM but not in the schema Alembic builds at this revision`);
        continue;
      }
      columns.push({ name: c.name, kind: kindOf(d.type) });
    }
    for (const d of dst.columns) {
      if (d.notNull && !src.columns.some((c) => c.name === d.name))
        problems.push(`column ${name}.${d.name} is NOT NULL in the new schema but FROM has no such column`);
    }
    const key = [...dst.columns]
      .filter((c) => c.pk > 0)
      .sort((a, b) => a.pk - b.pk)
      .map((c) => c.name);
    const serialCol = key.length === 1 ? columns.find((c) => c.name === key[0] && c.kind === "integer") : undefined;
    const parents = [...new Set(fks.filter((fk) => fk.table === name && fk.parent !== name && order.includes(fk.parent)).map((fk) => fk.parent))].sort();
    tables.push({ name, columns, key: key.length > 0 ? key : columns.map((c) => c.name), ...(serialCol ? { serial: serialCol.name } : {}), parents });
  }
  return { tables, problems, cycles };
}

/**
 * The next table a copy worker may start: the first in plan order that is
 * neither started nor waiting on a parent still being copied. Tables in a
 * cycle start only when nothing else runs. Undefined when none may start now.
 */
export function nextReadyTable(plan: CopyPlan, started: ReadonlySet<string>, done: ReadonlySet<string>): TableCopy | undefined {
  const running = [...started].some((n) => !done.has(n));
  return plan.tables.find((t) => !started.has(t.name) && t.parents.every((p) => done.has(p)) && !(plan.cycles.includes(t.name) && running));
}

// ---------------------------------------------------------------- values

/** What a SQLite read returns for one value (integers and booleans are read as text to stay exact). */
export type SqliteValue = string | number | bigint | Buffer | Uint8Array | null;

const COPY_ESCAPE = /[\\\n\r\t]/;

function escapeCopy(text: string): string {
  if (!COPY_ESCAPE.test(text)) return text;
  return text.replace(/[\\\n\r\t]/g, (ch) => (ch === "\\" ? "\\\\" : ch === "\n" ? "\\n" : ch === "\r" ? "\\r" : "\\t"));
}

function hexOf(v: Buffer | Uint8Array): string {
  return Buffer.isBuffer(v) ? v.toString("hex") : Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
}

function asText(v: SqliteValue): string {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "bigint") return String(v);
  if (v === null) return "";
  return Buffer.from(v).toString("utf8");
}

/** A value of a BOOLEAN column as SQLite holds it (0/1, or text from other writers). */
function sqliteBool(v: SqliteValue): boolean {
  const s = asText(v).trim().toLowerCase();
  if (s === "1" || s === "t" || s === "true") return true;
  if (s === "0" || s === "f" || s === "false") return false;
  throw new MoveValueError(`"${s}" is not a boolean`);
}

/** A value that cannot be converted to the destination type. */
export class MoveValueError extends Error {}

/** SQLAlchemy's SQLite DATETIME text ("2024-01-02 03:04:05.123456", or with a T) → PostgreSQL timestamp input. */
function sqliteTimestamp(v: SqliteValue): string {
  const s = asText(v).trim();
  if (!/^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?([+-]\d{2}(:?\d{2})?|Z)?$/.test(s)) throw new MoveValueError(`"${s}" is not a timestamp`);
  return s.replace("T", " ");
}

/**
 * One SQLite value as a field of PostgreSQL's COPY text format, converted by
 * the destination column's kind. Throws MoveValueError when it cannot be.
 */
export function copyFieldFromSqlite(kind: ValueKind, v: SqliteValue): string {
  if (v === null) return "\\N";
  switch (kind) {
    case "boolean":
      return sqliteBool(v) ? "t" : "f";
    case "integer": {
      const s = asText(v).trim();
      if (!/^-?\d+$/.test(s)) throw new MoveValueError(`"${s}" is not an integer`);
      return s;
    }
    case "float":
    case "numeric": {
      if (typeof v === "number") return Number.isFinite(v) ? String(v) : v > 0 ? "Infinity" : v < 0 ? "-Infinity" : "NaN";
      return escapeCopy(asText(v).trim());
    }
    case "bytes":
      return typeof v === "string"
        ? `\\\\x${Buffer.from(v, "utf8").toString("hex")}`
        : typeof v === "number" || typeof v === "bigint"
          ? `\\\\x${Buffer.from(String(v)).toString("hex")}`
          : `\\\\x${hexOf(v)}`;
    case "timestamp":
    case "timestamptz":
      return sqliteTimestamp(v);
    case "json":
    case "jsonb": {
      const s = asText(v);
      return escapeCopy(s);
    }
    case "uuid":
      return asText(v).trim().toLowerCase();
    default:
      return escapeCopy(asText(v));
  }
}

/** Decodes one field of PostgreSQL's COPY text output (null → null). */
export function unescapeCopyField(field: string): string | null {
  if (field === "\\N") return null;
  if (!field.includes("\\")) return field;
  return field.replace(/\\(.)/g, (_m, ch: string) =>
    ch === "n" ? "\n" : ch === "r" ? "\r" : ch === "t" ? "\t" : ch === "b" ? "\b" : ch === "f" ? "\f" : ch === "v" ? "\v" : ch,
  );
}

/** One PostgreSQL text value (COPY output) as the SQLite value of a column of `kind`. */
export function sqliteValueFromPg(kind: ValueKind, text: string | null): string | number | bigint | Buffer | null {
  if (text === null) return null;
  switch (kind) {
    case "boolean":
      return text === "t" || text === "true" ? 1 : 0;
    case "integer": {
      const n = Number(text);
      return Number.isSafeInteger(n) ? n : BigInt(text);
    }
    case "float":
      return text === "NaN" ? Number.NaN : Number(text);
    case "numeric": {
      const n = Number(text);
      return String(n) === canonicalNumeric(text) ? n : text;
    }
    case "bytes":
      return Buffer.from(text.startsWith("\\x") ? text.slice(2) : text, "hex");
    case "timestamp":
    case "timestamptz":
      return canonicalTimestamp(text, kind === "timestamptz");
    case "uuid":
      return text.replace(/-/g, "").toLowerCase();
    default:
      return text;
  }
}

// ---------------------------------------------------------------- normalisation for checksums

function canonicalNumeric(text: string): string {
  const s = text.trim();
  if (!/^-?\d+(\.\d+)?$/.test(s)) {
    const n = Number(s);
    return Number.isNaN(n) ? s : String(n);
  }
  if (!s.includes(".")) return s.replace(/^(-?)0+(\d)/, "$1$2");
  const trimmed = s.replace(/0+$/, "").replace(/\.$/, "");
  return trimmed === "-0" ? "0" : trimmed;
}

/** "YYYY-MM-DD HH:MM:SS.ffffff", six fraction digits; with zone: shifted to UTC and suffixed "+00". */
function canonicalTimestamp(text: string, withZone: boolean): string {
  const m = /^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?$/.exec(text.trim());
  if (!m) return text;
  const frac = (m[5] ?? "").padEnd(6, "0").slice(0, 6);
  let date = m[1]!;
  let hh = m[2] ?? "00";
  let mi = m[3] ?? "00";
  const ss = m[4] ?? "00";
  const zone = m[6];
  if (withZone && zone !== undefined && zone !== "Z" && !/^[+-]00(:?00)?$/.test(zone)) {
    const sign = zone.startsWith("-") ? -1 : 1;
    const zh = Number(zone.slice(1, 3));
    const zm = Number(zone.replace(":", "").slice(3, 5) || "0");
    const t =
      Date.UTC(Number(date.slice(0, 4)), Number(date.slice(5, 7)) - 1, Number(date.slice(8, 10)), Number(hh), Number(mi)) - sign * (zh * 60 + zm) * 60_000;
    const d = new Date(t);
    date = d.toISOString().slice(0, 10);
    hh = d.toISOString().slice(11, 13);
    mi = d.toISOString().slice(14, 16);
  }
  return `${date} ${hh}:${mi}:${ss}.${frac}${withZone ? "+00" : ""}`;
}

function sortedJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortedJson);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) out[k] = sortedJson((value as Record<string, unknown>)[k]);
    return out;
  }
  return value;
}

function canonicalJson(text: string, normalise: boolean): string {
  if (!normalise) return text;
  try {
    return JSON.stringify(sortedJson(JSON.parse(text)));
  } catch {
    return text;
  }
}

/**
 * The normalised form of a value read from SQLite, for checksums: equal to
 * `canonicalFromPg` of the same value after it went through PostgreSQL.
 * `jsonNormalise` is true when either side stores JSON as jsonb (keys reordered).
 */
export function canonicalFromSqlite(kind: ValueKind, v: SqliteValue, jsonNormalise = kind === "jsonb"): string | null {
  if (v === null) return null;
  switch (kind) {
    case "boolean": {
      try {
        return sqliteBool(v) ? "t" : "f";
      } catch {
        return asText(v);
      }
    }
    case "integer":
      return asText(v).trim();
    case "float":
      return typeof v === "number" ? String(v) : String(Number(asText(v)));
    case "numeric":
      return canonicalNumeric(typeof v === "number" ? String(v) : asText(v));
    case "bytes":
      return typeof v === "string"
        ? Buffer.from(v, "utf8").toString("hex")
        : typeof v === "number" || typeof v === "bigint"
          ? Buffer.from(String(v)).toString("hex")
          : hexOf(v);
    case "timestamp":
      return canonicalTimestamp(asText(v), false);
    case "timestamptz":
      return canonicalTimestamp(asText(v), true);
    case "json":
    case "jsonb":
      return canonicalJson(asText(v), jsonNormalise);
    case "uuid":
      return asText(v).replace(/-/g, "").toLowerCase();
    default:
      return asText(v);
  }
}

/** The normalised form of a value from PostgreSQL's COPY text output (already unescaped). */
export function canonicalFromPg(kind: ValueKind, text: string | null, jsonNormalise = kind === "jsonb"): string | null {
  if (text === null) return null;
  switch (kind) {
    case "boolean":
      return text === "t" || text === "true" ? "t" : "f";
    case "float":
      return text === "NaN" ? "NaN" : String(Number(text));
    case "numeric":
      return canonicalNumeric(text);
    case "bytes":
      return text.startsWith("\\x") ? text.slice(2) : text;
    case "timestamp":
      return canonicalTimestamp(text, false);
    case "timestamptz":
      return canonicalTimestamp(text, true);
    case "json":
    case "jsonb":
      return canonicalJson(text, jsonNormalise);
    case "uuid":
      return text.replace(/-/g, "").toLowerCase();
    default:
      return text;
  }
}

/** The canonical row string a checksum is computed over (fields separated by \x1f, null as \x00). */
export function canonicalRow(fields: readonly (string | null)[]): string {
  let out = "";
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    out += (i === 0 ? "" : "\x1f") + (f === null || f === undefined ? "\x00" : f);
  }
  return out;
}

/**
 * An order-independent checksum over a table's rows: the row count and two
 * 32-bit lane sums of each row's 64-bit hash. Equal multisets of rows give
 * equal checksums whatever order each engine returns them in; a changed row
 * goes unseen with a chance of about 2^-64. Not a defence against someone
 * crafting collisions: it checks a copy, it does not authenticate one.
 */
export class RowChecksum {
  private a = 0;
  private b = 0;
  rows = 0;

  /** Adds one canonical row (see canonicalRow). */
  add(row: string): void {
    // Two multiplicative hashes over the UTF-16 code units, each finished with murmur3's fmix32.
    let h1 = 0x811c9dc5;
    let h2 = 0x9747b28c ^ row.length;
    for (let i = 0; i < row.length; i++) {
      const c = row.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 ^= h2 >>> 13;
    }
    this.a = (this.a + fmix32(h1)) >>> 0;
    this.b = (this.b + fmix32(h2 ^ h1)) >>> 0;
    this.rows++;
  }

  hex(): string {
    return `${this.rows.toString(16)}:${this.a.toString(16).padStart(8, "0")}${this.b.toString(16).padStart(8, "0")}`;
  }
}

function fmix32(h: number): number {
  let x = h ^ (h >>> 16);
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

// ---------------------------------------------------------------- preflight

export interface MovePreflightFacts {
  readonly fromId: string;
  readonly toId: string;
  readonly fromKind: EngineKind;
  readonly toKind: EngineKind;
  readonly sameAlembicProject: boolean;
  readonly fromRevisions: readonly string[] | null;
  /** FROM revisions the code's graph does not know. */
  readonly unknownRevisions: readonly string[];
  /** TO's tables, alembic_version included. */
  readonly toTables: readonly string[];
  /** Rows in TO's alembic_version (0 when absent). */
  readonly toVersionRows: number;
  readonly integrity: { readonly ok: boolean; readonly detail: string };
  /** Orphaned rows per table: rows whose foreign key points at no parent row. */
  readonly orphans: readonly { readonly table: string; readonly parent: string; readonly count: number }[];
  readonly skipOrphans: boolean;
  /** App instances of FROM still running. */
  readonly runningApps: readonly string[];
  readonly fromBackup: boolean;
  /** TO is where an earlier move came from, and this move goes back there. */
  readonly moveBack?: { readonly fromNewer: boolean; readonly why: string };
  readonly yes: boolean;
}

export type MoveDecision =
  | {
      readonly go: "refuse";
      readonly code: "INVALID_ARGUMENT" | "PRECONDITION_FAILED" | "UNKNOWN_REVISION" | "DATA_LOSS_NOT_ACCEPTED";
      readonly message: string;
    }
  | { readonly go: "copy"; readonly revision: string; readonly notes: readonly string[] }
  | { readonly go: "back"; readonly notes: readonly string[] };

/** Total orphaned rows and a per-table list like "message → chat: 2". */
export function describeOrphans(orphans: MovePreflightFacts["orphans"]): string {
  return orphans.map((o) => `${o.table} → ${o.parent}: ${o.count} row${o.count === 1 ? "" : "s"}`).join("; ");
}

/**
 * Whether the move may go on, decided from facts gathered without changing
 * anything. Every refusal says what was wrong and what to do.
 */
export function decideMove(f: MovePreflightFacts): MoveDecision {
  if (f.fromId === f.toId) return { go: "refuse", code: "INVALID_ARGUMENT", message: "FROM and TO are the same target: name two targets of this agent" };
  if (f.fromKind === f.toKind) {
    return {
      go: "refuse",
      code: "INVALID_ARGUMENT",
      message: `${f.fromId} and ${f.toId} are both ${f.fromKind}: move copies between SQLite and PostgreSQL (for a copy of the same kind use a backup and restore)`,
    };
  }
  if (!f.sameAlembicProject)
    return {
      go: "refuse",
      code: "INVALID_ARGUMENT",
      message: `${f.fromId} and ${f.toId} use different Alembic projects: a move builds TO's schema with FROM's migrations, so both targets must name the same alembic.dir`,
    };
  if (f.moveBack) {
    if (f.moveBack.fromNewer && !f.yes) {
      return {
        go: "refuse",
        code: "DATA_LOSS_NOT_ACCEPTED",
        message: `${f.toId} is the database ${f.fromId} was moved from, and ${f.fromId} is newer (${f.moveBack.why}): moving back loses those changes. Confirm with --yes`,
      };
    }
    return {
      go: "back",
      notes: [
        f.moveBack.fromNewer
          ? `${f.fromId} is newer (${f.moveBack.why}); going back to ${f.toId} as confirmed with --yes`
          : `${f.fromId} has not changed since the move; ${f.toId} is untouched`,
      ],
    };
  }
  const revs = f.fromRevisions ?? [];
  if (revs.length !== 1) {
    return {
      go: "refuse",
      code: "PRECONDITION_FAILED",
      message:
        revs.length === 0
          ? `${f.fromId} records no Alembic revision: move needs a database at one known revision (flotilla diagnose ${f.fromId})`
          : `${f.fromId} is at several revisions (${revs.join(", ")}): merge the branches first, a move needs one revision`,
    };
  }
  if (f.unknownRevisions.length > 0) {
    return {
      go: "refuse",
      code: "UNKNOWN_REVISION",
      message: `${f.fromId} is at revision ${f.unknownRevisions.join(", ")}, which the migrations do not contain: the schema cannot be rebuilt from Alembic. Use the code that matches the database`,
    };
  }
  const userTables = f.toTables.filter((t) => t !== "alembic_version");
  if (userTables.length > 0 || f.toVersionRows > 0) {
    const what =
      userTables.length > 0
        ? `table${userTables.length === 1 ? "" : "s"} ${userTables.slice(0, 5).join(", ")}${userTables.length > 5 ? ` and ${userTables.length - 5} more` : ""}`
        : "a revision in alembic_version";
    return {
      go: "refuse",
      code: "PRECONDITION_FAILED",
      message: `${f.toId} is not empty (it has ${what}): a move only fills an empty database. Point ${f.toId} at a new, empty database; nothing was changed`,
    };
  }
  if (!f.integrity.ok)
    return {
      go: "refuse",
      code: "PRECONDITION_FAILED",
      message: `${f.fromId} fails its integrity check (${f.integrity.detail}): restore a good backup first (flotilla backups ${f.fromId})`,
    };
  const notes: string[] = [];
  if (f.orphans.length > 0) {
    const total = f.orphans.reduce((a, o) => a + o.count, 0);
    if (!f.skipOrphans) {
      return {
        go: "refuse",
        code: "PRECONDITION_FAILED",
        message: `${f.fromId} has ${total} orphaned row${total === 1 ? "" : "s"} (a foreign key pointing at no row): ${describeOrphans(f.orphans)}. PostgreSQL would reject them; fix them in the app, or pass --skip-orphans to leave them out (they are written to a report file)`,
      };
    }
    notes.push(`${total} orphaned row(s) will be left out and written to the report: ${describeOrphans(f.orphans)}`);
  }
  if (f.runningApps.length > 0 && !f.fromBackup) {
    notes.push(`app instance(s) ${f.runningApps.join(", ")} will be stopped for the copy`);
  }
  return { go: "copy", revision: revs[0]!, notes };
}
