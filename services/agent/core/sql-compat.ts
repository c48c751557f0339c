/**
 * Classifies the offline SQL of one revision by whether app code written for
 * the old schema keeps working after it ran (the compatibility gate of the
 * job and blue-green strategies). Pure text analysis; it errs towards
 * "breaking": a statement it cannot read makes the revision "unknown".
 */

export type Compatibility = "additive" | "breaking" | "unknown";

export interface CompatibilityVerdict {
  readonly compatibility: Compatibility;
  /** One phrase per finding, the first few statements that decided it. */
  readonly reason: string;
}

/** Statements of a SQL text, comments and the transaction wrapper removed. */
function statements(sql: string): string[] {
  const text = sql.replace(/^\s*--.*$/gm, "");
  const out: string[] = [];
  let current = "";
  let quoted = false;
  for (const ch of text) {
    if (ch === "'") quoted = !quoted;
    if (ch === ";" && !quoted) {
      if (current.trim()) out.push(current.trim().replace(/\s+/g, " "));
      current = "";
    } else {
      current += ch;
    }
  }
  if (current.trim()) out.push(current.trim().replace(/\s+/g, " "));
  return out;
}

const IDENT = `(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$.]*)`;
const unquote = (name: string): string => name.replace(/"/g, "").toLowerCase();

/** Verdict of one statement; `createdHere` holds the tables this revision itself creates. */
function classifyStatement(stmt: string, createdHere: Set<string>): { kind: Compatibility | "ignore"; why: string } {
  const s = stmt.toUpperCase();
  if (/^(BEGIN|COMMIT|START TRANSACTION)\b/.test(s)) return { kind: "ignore", why: "" };
  if (/ALEMBIC_VERSION/.test(s) && /^(UPDATE|INSERT|CREATE TABLE|DELETE)\b/.test(s)) return { kind: "ignore", why: "" };
  let m = new RegExp(`^CREATE TABLE (?:IF NOT EXISTS )?(${IDENT})`, "i").exec(stmt);
  if (m) {
    const table = unquote(m[1]!);
    createdHere.add(table);
    if (table.startsWith("_alembic_tmp_")) return { kind: "breaking", why: `rebuilds a table (SQLite batch operation via ${table})` };
    return { kind: "additive", why: `creates table ${table}` };
  }
  if (/^CREATE UNIQUE INDEX\b/.test(s)) {
    m = new RegExp(`ON (${IDENT})`, "i").exec(stmt);
    const table = m ? unquote(m[1]!) : "";
    if (createdHere.has(table)) return { kind: "additive", why: `unique index on new table ${table}` };
    return { kind: "breaking", why: `adds a unique index${table ? ` on ${table}` : ""} (old code may write rows it rejects)` };
  }
  if (/^CREATE INDEX\b/.test(s)) return { kind: "additive", why: "creates an index" };
  if (/^CREATE (SEQUENCE|TYPE|EXTENSION|VIEW|OR REPLACE VIEW|SCHEMA)\b/.test(s))
    return { kind: "additive", why: `creates a ${s.split(" ")[1]!.toLowerCase()}` };
  if (/^COMMENT ON\b/.test(s)) return { kind: "additive", why: "comment" };
  if (/^DROP\b/.test(s)) return { kind: "breaking", why: `drops ${s.split(" ")[1]!.toLowerCase()} (${stmt.split(" ").slice(2, 3).join("")})` };
  if (/^(UPDATE|DELETE)\b/.test(s))
    return {
      kind: "breaking",
      why: `changes existing rows (${s.split(" ")[0]!.toLowerCase()} ${unquote(stmt.split(" ")[s.startsWith("DELETE") ? 2 : 1] ?? "")})`,
    };
  if (/^INSERT INTO\b/.test(s)) {
    m = new RegExp(`^INSERT INTO (${IDENT})`, "i").exec(stmt);
    const table = m ? unquote(m[1]!) : "";
    if (createdHere.has(table)) return { kind: "additive", why: `fills new table ${table}` };
    return { kind: "breaking", why: `writes rows into existing table ${table}` };
  }
  m = new RegExp(`^ALTER TABLE (?:ONLY )?(${IDENT}) (.*)$`, "i").exec(stmt);
  if (m) {
    const table = unquote(m[1]!);
    const action = m[2]!;
    const A = action.toUpperCase();
    if (/^RENAME\b/.test(A)) return { kind: "breaking", why: `renames ${table}${/COLUMN/.test(A) ? " column" : ""}` };
    if (/^ADD (COLUMN )?(?!CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK)/.test(A)) {
      const col = /^ADD (?:COLUMN )?(?:IF NOT EXISTS )?("[^"]+"|\S+)/i.exec(action)?.[1] ?? "";
      const notNull = /\bNOT NULL\b/.test(A);
      const hasDefault = /\bDEFAULT\b/.test(A) || /\bSERIAL\b|\bGENERATED\b/.test(A);
      if (/\bUNIQUE\b|\bREFERENCES\b/.test(A)) return { kind: "breaking", why: `adds ${table}.${unquote(col)} with a constraint` };
      if (notNull && !hasDefault) return { kind: "breaking", why: `adds NOT NULL column ${table}.${unquote(col)} without a default (old code inserts fail)` };
      return { kind: "additive", why: `adds column ${table}.${unquote(col)}` };
    }
    if (/^ADD CONSTRAINT\b/.test(A) || /^ADD (PRIMARY|UNIQUE|FOREIGN|CHECK)\b/.test(A)) {
      return { kind: "breaking", why: `adds a constraint to ${table}${/UNIQUE/.test(A) ? " (unique)" : ""}` };
    }
    if (/^ALTER (COLUMN )?\S+ SET DEFAULT\b/.test(A)) return { kind: "additive", why: `sets a default on ${table}` };
    if (/^ALTER (COLUMN )?\S+ (SET NOT NULL)/.test(A)) return { kind: "breaking", why: `makes a column of ${table} NOT NULL` };
    if (/^ALTER (COLUMN )?\S+ (SET DATA )?TYPE\b/.test(A)) return { kind: "breaking", why: `changes a column type of ${table}` };
    if (/^DROP\b/.test(A)) return { kind: "breaking", why: `drops from ${table} (${action.split(" ").slice(1, 3).join(" ")})` };
    if (createdHere.has(table)) return { kind: "additive", why: `alters new table ${table}` };
    return { kind: "breaking", why: `alters ${table} (${action.split(" ").slice(0, 3).join(" ")})` };
  }
  if (/^ALTER TYPE\b/.test(s)) return { kind: "breaking", why: "alters a type" };
  if (/^(PRAGMA|SET|SELECT)\b/.test(s)) return { kind: "ignore", why: "" };
  return { kind: "unknown", why: `cannot classify: ${stmt.slice(0, 60)}` };
}

/**
 * additive: only new tables, nullable or defaulted columns, plain indexes;
 * breaking: drops, renames, type changes, NOT NULL without default, unique
 * constraints, data changes of existing rows; unknown: a statement this
 * cannot read. Empty SQL (nothing but the version bump) is additive.
 */
export function classifySql(sql: string): CompatibilityVerdict {
  const createdHere = new Set<string>();
  const verdicts = statements(sql)
    .map((stmt) => classifyStatement(stmt, createdHere))
    .filter((v) => v.kind !== "ignore");
  const breaking = verdicts.filter((v) => v.kind === "breaking");
  if (breaking.length > 0) return { compatibility: "breaking", reason: [...new Set(breaking.map((v) => v.why))].slice(0, 3).join("; ") };
  const unknown = verdicts.filter((v) => v.kind === "unknown");
  if (unknown.length > 0) return { compatibility: "unknown", reason: [...new Set(unknown.map((v) => v.why))].slice(0, 2).join("; ") };
  if (verdicts.length === 0) return { compatibility: "additive", reason: "no schema change" };
  return { compatibility: "additive", reason: [...new Set(verdicts.map((v) => v.why))].slice(0, 3).join("; ") };
}

/** Tables, columns and indexes a revision's offline SQL creates (what `stamp --reason applied-by-hand` must find). */
export interface CreatedObjects {
  readonly tables: readonly string[];
  readonly columns: readonly { readonly table: string; readonly column: string }[];
  readonly indexes: readonly string[];
}

/** Reads CREATE TABLE, ALTER TABLE … ADD [COLUMN] and CREATE [UNIQUE] INDEX from offline SQL. Tables a later statement drops are left out. */
export function objectsCreatedBy(sql: string): CreatedObjects {
  const tables: string[] = [];
  const columns: { table: string; column: string }[] = [];
  const indexes: string[] = [];
  const dropped = new Set<string>();
  for (const stmt of statements(sql)) {
    let m = new RegExp(`^CREATE TABLE (?:IF NOT EXISTS )?(${IDENT})`, "i").exec(stmt);
    if (m) {
      const table = unquote(m[1]!);
      if (table !== "alembic_version") tables.push(table);
      continue;
    }
    m = new RegExp(`^ALTER TABLE (?:ONLY )?(${IDENT}) ADD (?:COLUMN )?(?:IF NOT EXISTS )?(${IDENT})`, "i").exec(stmt);
    if (m && !/^(CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK)$/i.test(m[2]!)) {
      columns.push({ table: unquote(m[1]!), column: unquote(m[2]!) });
      continue;
    }
    m = new RegExp(`^CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?(${IDENT})`, "i").exec(stmt);
    if (m) {
      indexes.push(unquote(m[1]!));
      continue;
    }
    m = new RegExp(`^DROP TABLE (?:IF EXISTS )?(${IDENT})`, "i").exec(stmt);
    if (m) dropped.add(unquote(m[1]!));
  }
  return { tables: tables.filter((t) => !dropped.has(t)), columns: columns.filter((c) => !dropped.has(c.table)), indexes };
}

/** What of `created` the database lacks, one phrase each (`columnsOf` gives a table's columns; absent tables have none). */
export function missingObjects(
  created: CreatedObjects,
  present: { readonly tables: readonly string[]; readonly indexes: readonly string[]; readonly columnsOf: (table: string) => readonly string[] },
): string[] {
  const tables = new Set(present.tables.map((t) => t.toLowerCase()));
  const indexes = new Set(present.indexes.map((i) => i.toLowerCase()));
  const missing: string[] = [];
  for (const t of created.tables) if (!tables.has(t)) missing.push(`table ${t}`);
  for (const c of created.columns) {
    if (
      !present
        .columnsOf(c.table)
        .map((x) => x.toLowerCase())
        .includes(c.column)
    )
      missing.push(`column ${c.table}.${c.column}`);
  }
  for (const i of created.indexes) if (!indexes.has(i)) missing.push(`index ${i}`);
  return missing;
}
