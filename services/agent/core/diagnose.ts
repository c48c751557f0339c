/**
 * The agent's diagnostic checklist as a pure function over facts that the
 * agent collected beforehand (files, `alembic heads`, the database, the
 * journal, the disk). No I/O here: the same facts always give the same
 * findings, in the same order.
 */

export type Severity = "ok" | "info" | "warning" | "error";

/** One checklist result: what is wrong, why it matters for a migration, and the concrete fix. */
export interface Finding {
  code: string;
  severity: Severity;
  what: string;
  why: string;
  fix: string;
}

/** Everything the checklist looks at. Facts never carry secrets (only whether one is configured). */
export interface DiagnoseFacts {
  targetId: string;
  kind: "sqlite" | "postgresql";
  /** alembic.ini exists in the configured dir. */
  alembicIniFound: boolean;
  alembicDir: string;
  /** Classified failure of running `alembic heads` (kind 'env' for a missing WEBUI_SECRET_KEY, 'missing-config', …). */
  alembicEnvError?: { kind: string; message: string };
  /** WEBUI_SECRET_KEY present in the target's alembic env config. */
  secretConfigured: boolean;
  databaseExists: boolean;
  /** From the revision graph ([] if the graph is unavailable). */
  heads: string[];
  branchpoints: string[];
  /** Every id in the graph. */
  knownRevisions: string[];
  /** alembic_version rows; null = table absent. */
  current: string[] | null;
  pending: { id: string; message: string }[];
  /** User tables. */
  tables: string[];
  /** `_alembic_tmp_*` tables. */
  alembicTmpTables: string[];
  /** peewee `migratehistory` table present. */
  hasMigrateHistory: boolean;
  /** Objects a PENDING revision creates that already exist (the duplicate-column trap). */
  preexistingObjects: { revision: string; object: string; kind: "table" | "column" | "index" }[];
  integrity?: { ok: boolean; detail: string };
  /** Processes (SQLite) or other sessions (PostgreSQL) holding the database. */
  holders: { pid: number; description: string; state?: string }[];
  /** PostgreSQL sessions idle in transaction (lock risk). */
  idleInTransaction: number;
  appInstances: { id: string; state: "running" | "stopped" | "unknown" }[];
  databaseBytes: number;
  /** Free bytes in the backup dir. */
  freeBytes: number;
  /** undefined = no verified backup. */
  lastVerifiedBackupAgeMs?: number;
  /**
   * Restore drills: age of the last passing drill (undefined: none passed) and
   * of the oldest verified backup (how long the target has had something to
   * drill). Absent: drills are not checked.
   */
  drill?: { lastPassAgeMs?: number; lastFailed: boolean; oldestVerifiedBackupAgeMs?: number };
  /** Journal: operations interrupted by an agent crash. */
  interruptedOperations: string[];
  /** Journal: the most recent failed or interrupted operation on the target (see lastFailure). */
  lastFailedOperation?: FailedOperation;
  /** 'wal', 'delete', … (SQLite). */
  sqliteJournalMode?: string;
  onNetworkFilesystem?: boolean;
}

/** A failed or interrupted operation as the journal recorded it, and whether a later one replaced its outcome. */
export interface FailedOperation {
  id: string;
  kind: string;
  state: "failed" | "interrupted";
  startedAt: string;
  errorCode: string;
  message: string;
  revisionBefore: string[];
  /** [] when the operation never recorded where it left the database. */
  revisionAfter: string[];
  toRevision: string;
  /** The backup it took before changing anything ("" when it had not taken one). */
  backupId: string;
  /** A later operation that changes the database (migrate, restore, downgrade, recover…) succeeded since. */
  supersededBy?: { id: string; kind: string };
}

/** The journal rows diagnose reads (newest first, as the journal lists them). */
export interface JournalRow {
  id: string;
  kind: string;
  state: string;
  startedAt: string;
  errorCode: string;
  message: string;
  revisionBefore: string[];
  revisionAfter: string[];
  toRevision: string;
  backupId: string;
}

/** Operations whose success means the database is in a known state again. */
const SETTLING_KINDS = new Set(["migrate", "restore", "downgrade", "recover", "stamp"]);

/**
 * The most recent failed or interrupted operation of a target from its
 * journal rows (newest first), with the later successful operation that
 * settled the database since, if any. Refusals changed nothing and are skipped.
 */
export function lastFailure(rows: readonly JournalRow[]): FailedOperation | undefined {
  const i = rows.findIndex((r) => r.state === "failed" || r.state === "interrupted");
  if (i < 0) return undefined;
  const r = rows[i]!;
  const later = rows
    .slice(0, i)
    .reverse()
    .find((x) => x.state === "succeeded" && SETTLING_KINDS.has(x.kind));
  return {
    id: r.id,
    kind: r.kind,
    state: r.state as FailedOperation["state"],
    startedAt: r.startedAt,
    errorCode: r.errorCode,
    message: r.message,
    revisionBefore: [...r.revisionBefore],
    revisionAfter: [...r.revisionAfter],
    toRevision: r.toRevision,
    backupId: r.backupId,
    ...(later ? { supersededBy: { id: later.id, kind: later.kind } } : {}),
  };
}

/** Head room kept on top of one database copy before the free-space check turns into an error. */
export const DISK_MARGIN_BYTES = 64 * 1024 * 1024;

/** A verified backup older than this is reported as old (info). */
export const BACKUP_MAX_AGE_MS = 24 * 60 * 60 * 1000;

const TMP_PREFIX = "_alembic_tmp_";
const NOTHING_TO_DO = "nothing to do";

/**
 * Runs the whole checklist. Findings come in checklist order (configuration,
 * revision graph, database state, schema leftovers, locks, disk, backups,
 * journal, storage); each checked area that is fine yields one `ok` finding so
 * the user sees what was checked. `problems` is true when any finding is a
 * warning or an error. Never throws on odd facts and never suggests `stamp`
 * as a repair for a failed migration.
 */
export function diagnose(f: DiagnoseFacts): { findings: Finding[]; problems: boolean } {
  const findings: Finding[] = [
    ...checkAlembicConfig(f),
    ...checkRevisionGraph(f),
    ...checkDatabase(f),
    ...checkVersion(f),
    ...checkPeewee(f),
    ...checkBatchLeftovers(f),
    ...checkPartialApply(f),
    ...checkIntegrity(f),
    ...checkHolders(f),
    ...checkIdleInTransaction(f),
    ...checkDisk(f),
    ...checkBackup(f),
    ...checkDrill(f),
    ...checkInterrupted(f),
    ...checkLastFailure(f),
    ...checkStorage(f),
  ];
  const problems = findings.some((x) => x.severity === "error" || x.severity === "warning");
  return { findings, problems };
}

function finding(code: string, severity: Severity, what: string, why: string, fix: string): Finding {
  return { code, severity, what, why, fix };
}

function ok(code: string, what: string): Finding {
  return finding(code, "ok", what, "", NOTHING_TO_DO);
}

/** "a, b, c (+2 more)" — keeps messages short on large lists. */
function list(items: readonly string[], max = 5): string {
  const shown = items.slice(0, max).join(", ");
  return items.length > max ? `${shown} (+${items.length - max} more)` : shown;
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

function clip(text: string, max = 200): string {
  const oneLine = text.replace(/\s+/g, " ").trim();
  return oneLine.length > max ? `${oneLine.slice(0, max - 1)}…` : oneLine;
}

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

function formatAge(ms: number): string {
  const h = ms / 3_600_000;
  if (h < 1) return `${Math.max(0, Math.round(ms / 60_000))} min`;
  if (h < 48) return `${Math.round(h)} h`;
  return `${Math.round(h / 24)} days`;
}

function restoreFix(t: string): string {
  return `restore the backup taken before the failed attempt: \`flotilla backups ${t}\` to find it, then \`flotilla restore ${t} BACKUP --yes\``;
}

/** The graph is usable when `alembic heads` produced something. */
function graphAvailable(f: DiagnoseFacts): boolean {
  return f.heads.length > 0 || f.knownRevisions.length > 0;
}

/** Tables that belong to the app, not to Alembic, peewee or SQLite bookkeeping. */
function appTables(f: DiagnoseFacts): string[] {
  return f.tables.filter((t) => t !== "alembic_version" && t !== "migratehistory" && !t.startsWith(TMP_PREFIX) && !t.startsWith("sqlite_"));
}

function checkAlembicConfig(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  const dirFix =
    `set \`alembic.dir\` in the agent config to the folder that holds alembic.ini (Open WebUI: /app/backend/open_webui), ` +
    `restart the agent, then \`flotilla diagnose ${t}\``;
  const err = f.alembicEnvError;
  if (!f.alembicIniFound) {
    return [
      finding(
        "alembic-ini-missing",
        "error",
        `no alembic.ini in ${f.alembicDir}`,
        "Alembic cannot find the app's migrations, so nothing can be checked, planned or migrated",
        dirFix,
      ),
    ];
  }
  if (err === undefined) return [ok("alembic-config-ok", `alembic.ini found in ${f.alembicDir} and the app's env loads`)];
  if (err.kind === "env") {
    const what = f.secretConfigured
      ? "WEBUI_SECRET_KEY is configured but env.py still reports it missing (empty or unreadable key file?)"
      : "WEBUI_SECRET_KEY is not configured for this target, and the app's env.py requires it";
    return [
      finding(
        "secret-missing",
        "error",
        what,
        'env.py stops before Alembic connects ("Required environment variable not found"), so every alembic command fails',
        `add to the target's agent config \`alembic.env.WEBUI_SECRET_KEY: { file: /app/backend/.webui_secret_key }\` ` +
          `(the app's existing key file, non-empty), restart the agent, then \`flotilla diagnose ${t}\``,
      ),
    ];
  }
  if (err.kind === "missing-config") {
    return [
      finding(
        "alembic-ini-missing",
        "error",
        `Alembic rejects the config in ${f.alembicDir}: ${clip(err.message)}`,
        "Alembic cannot find the app's migrations, so nothing can be checked, planned or migrated",
        dirFix,
      ),
    ];
  }
  return [
    finding(
      "alembic-error",
      "error",
      `\`alembic heads\` failed (${err.kind}): ${clip(err.message)}`,
      "without the revision graph Flotilla cannot tell what is pending or whether code and database agree",
      `check \`alembic.command\` (it must run in the app's own environment, e.g. [/venv/bin/python, -m, alembic]) ` +
        `and \`alembic.env\` in the agent config, restart the agent, then \`flotilla diagnose ${t}\``,
    ),
  ];
}

function checkRevisionGraph(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  // When the config or env already failed, the empty graph is explained there.
  if (!graphAvailable(f)) {
    if (!f.alembicIniFound || f.alembicEnvError !== undefined) return [];
    return [
      finding(
        "revision-graph-empty",
        "warning",
        `\`alembic heads\` lists no revisions in ${f.alembicDir}`,
        "with no revisions there is nothing to migrate to; the configured folder is probably not the app's migrations",
        `check \`alembic.dir\` and the ini's script_location in the agent config, then \`flotilla diagnose ${t}\``,
      ),
    ];
  }
  const out: Finding[] = [];
  if (f.heads.length > 1) {
    out.push(
      finding(
        "multiple-heads",
        "error",
        `the app's code has ${f.heads.length} heads: ${list(f.heads)}`,
        "`upgrade head` is ambiguous and is refused; upgrading only one branch leaves the schema half of what the code expects",
        `ship a merge revision in the app's code (\`alembic merge -m "merge heads" ${f.heads.join(" ")}\`), ` +
          `or migrate to one explicit revision: \`flotilla plan --selector S --to REV\`, then \`flotilla rollout --selector S --to REV --strategy maintenance\``,
      ),
    );
  } else {
    out.push(ok("single-head", `one head: ${f.heads[0] ?? "?"}`));
  }
  if (f.branchpoints.length > 0) {
    const merged = f.heads.length <= 1;
    out.push(
      finding(
        "branchpoints",
        merged ? "info" : "warning",
        `the history branches at ${list(f.branchpoints)}${merged ? " and is merged again" : ""}`,
        merged ? "a merged branch is normal; upgrades walk both sides" : "the branches starting there are the unmerged heads above",
        merged ? `nothing to do; \`flotilla plan --selector S\` shows the order` : "merge the heads in the app's code (see multiple-heads)",
      ),
    );
  }
  return out;
}

function checkDatabase(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  if (f.databaseExists) return [ok("database-found", `the ${f.kind === "sqlite" ? "SQLite file" : "PostgreSQL database"} exists`)];
  const fix =
    f.kind === "sqlite"
      ? `check \`database\` in the agent config (sqlite:////absolute/path needs 4 slashes), restart the agent, then \`flotilla diagnose ${t}\``
      : `check \`database\` in the agent config; if the database really is new, create it (\`CREATE DATABASE name;\`), then \`flotilla diagnose ${t}\``;
  return [
    finding(
      "database-missing",
      "error",
      `the ${f.kind === "sqlite" ? "SQLite file" : "PostgreSQL database"} does not exist`,
      "a migration would create a new empty database at the wrong place, while the app keeps its data elsewhere",
      fix,
    ),
  ];
}

function checkVersion(f: DiagnoseFacts): Finding[] {
  if (!f.databaseExists) return [];
  const t = f.targetId;
  const tables = appTables(f);
  const current = f.current ?? [];
  const head = f.heads.length === 1 ? f.heads[0] : undefined;

  if (current.length === 0) {
    const state = f.current === null ? "has no alembic_version table" : "has an empty alembic_version table";
    if (tables.length === 0) {
      return [
        finding(
          "fresh-database",
          "info",
          `the database ${state} and no tables: a fresh database`,
          `an upgrade creates everything${f.pending.length > 0 ? ` (${plural(f.pending.length, "revision", "revisions")})` : ""}`,
          `migrate it: \`flotilla rollout --selector S --strategy maintenance\``,
        ),
      ];
    }
    const fix = f.hasMigrateHistory
      ? `it is a peewee-era database: run the app's own migration path once (see peewee-legacy), then \`flotilla diagnose ${t}\`; never stamp it`
      : `compare its schema with the code's revisions first; only if it matches REV exactly: ` +
        `\`flotilla stamp ${t} ${head ?? "REV"} --reason created-with-create-all\`; otherwise restore a versioned backup: \`flotilla restore ${t} BACKUP --yes\``;
    return [
      finding(
        "unversioned-schema",
        "warning",
        `the database ${state} but holds ${plural(tables.length, "table", "tables")} (${list(tables)})`,
        'it was built by create_all or by the pre-Alembic (peewee) app; an upgrade would replay revisions over existing tables and fail with "already exists"',
        fix,
      ),
    ];
  }

  if (!graphAvailable(f)) {
    return [
      finding(
        "version-unchecked",
        "info",
        `the database is at ${list(current)}; not compared with the code (no revision graph)`,
        "pending revisions and version skew can only be checked once `alembic heads` works",
        `fix the Alembic findings above, then \`flotilla diagnose ${t}\``,
      ),
    ];
  }

  const known = new Set(f.knownRevisions);
  const unknown = current.filter((id) => !known.has(id));
  if (unknown.length > 0) {
    return [
      finding(
        "version-skew",
        "error",
        `the database is at ${list(unknown)}, a revision the app's code does not know`,
        'it was migrated by a newer or different build; Alembic fails with "Can\'t locate revision" and cannot upgrade or downgrade it',
        `run the app version whose code contains ${list(unknown)} (point \`alembic.dir\` at that build), ` +
          `or restore a backup taken before the other build touched it: \`flotilla backups ${t}\`, \`flotilla restore ${t} BACKUP --yes\`; never stamp`,
      ),
    ];
  }

  const out: Finding[] = [];
  if (tables.length === 0) {
    out.push(
      finding(
        "stamped-without-schema",
        "warning",
        `alembic_version says ${list(current)} but the database has no app tables`,
        "it was stamped without its schema; upgrades and downgrades will fail on missing tables",
        `restore a real backup (\`flotilla restore ${t} BACKUP --yes\`), or for an empty database drop alembic_version (\`DROP TABLE alembic_version;\`) and migrate from scratch`,
      ),
    );
  }
  if (f.pending.length > 0) {
    out.push(
      finding(
        "pending-revisions",
        "info",
        `${plural(f.pending.length, "revision", "revisions")} pending: ${list(f.pending.map((p) => p.id))}`,
        `the database is at ${list(current)}, the code expects ${list(f.heads)}`,
        `preview with \`flotilla plan --selector S\`, then \`flotilla rollout --selector S --strategy maintenance\``,
      ),
    );
  } else {
    out.push(ok("at-head", `the database is at ${list(current)}, nothing pending`));
  }
  return out;
}

function checkPeewee(f: DiagnoseFacts): Finding[] {
  if (!f.databaseExists || !f.hasMigrateHistory) return [];
  const versioned = (f.current ?? []).length > 0;
  if (versioned) {
    return [
      finding(
        "peewee-legacy",
        "info",
        "a peewee `migratehistory` table is left from the pre-Alembic app",
        "the database has since moved to Alembic; the table is harmless",
        "nothing to do; keep the table (the app may still read it)",
      ),
    ];
  }
  return [
    finding(
      "peewee-legacy",
      "warning",
      "a peewee `migratehistory` table and no Alembic version: a legacy pre-Alembic database",
      "a bare `alembic upgrade` skips the app's peewee step, so the schema Alembic starts from is not the one it expects",
      `start the app's own migration path once (one app instance; Open WebUI: \`python -c "import open_webui.config"\` with ENABLE_DB_MIGRATIONS=true), ` +
        `or upgrade through an app version that runs it; take \`flotilla backup ${f.targetId}\` first`,
    ),
  ];
}

function checkBatchLeftovers(f: DiagnoseFacts): Finding[] {
  if (!f.databaseExists) return [];
  const t = f.targetId;
  if (f.alembicTmpTables.length === 0) return [ok("no-batch-leftovers", "no _alembic_tmp_* tables left by a failed batch migration")];
  const tables = new Set(f.tables);
  return f.alembicTmpTables.map((tmp) => {
    const source = tmp.slice(TMP_PREFIX.length);
    const intact = source !== "" && tables.has(source);
    const fix = intact
      ? `${restoreFix(t)}; or, only after checking that table ${source} is intact (row count, schema), drop the leftover: \`DROP TABLE "${tmp}";\``
      : `table ${source || "?"} is missing, so its rows may live only in ${tmp}: do not drop it; ${restoreFix(t)}`;
    return finding(
      "batch-leftover",
      "error",
      `table ${tmp} is left over from a batch migration that failed half-way`,
      `the next attempt fails with "table ${tmp} already exists" until it is gone`,
      fix,
    );
  });
}

function checkPartialApply(f: DiagnoseFacts): Finding[] {
  if (!f.databaseExists || f.pending.length === 0) return [];
  const t = f.targetId;
  if (f.preexistingObjects.length === 0) {
    return [ok("no-partial-apply", "no object of a pending revision exists yet")];
  }
  // Group by revision in the order the revisions would run.
  const order = new Map(f.pending.map((p, i) => [p.id, i]));
  const byRevision = new Map<string, string[]>();
  for (const o of f.preexistingObjects) {
    const objs = byRevision.get(o.revision) ?? [];
    objs.push(`${o.kind} ${o.object}`);
    byRevision.set(o.revision, objs);
  }
  const revisions = [...byRevision.keys()].sort((a, b) => (order.get(a) ?? Number.MAX_SAFE_INTEGER) - (order.get(b) ?? Number.MAX_SAFE_INTEGER));
  const first = revisions[0] ?? "?";
  const others = revisions.slice(1);
  const stampHint =
    others.length === 0
      ? `; only if every object of ${first} exists and is correct: \`flotilla stamp ${t} ${first} --reason applied-by-hand\`, then migrate the rest`
      : `; objects of ${others.length + 1} revisions exist, so stamping one revision cannot repair it`;
  return [
    finding(
      "partial-apply",
      "error",
      `pending revision ${first} creates objects that already exist: ${list(byRevision.get(first) ?? [])}` +
        (others.length > 0 ? ` (also ${list(others)})` : ""),
      'an earlier attempt applied part of it (SQLite DDL is not transactional) or the schema was changed by hand; the upgrade fails with "duplicate column" / "already exists"',
      `${restoreFix(t)}${stampHint}`,
    ),
  ];
}

function checkIntegrity(f: DiagnoseFacts): Finding[] {
  if (!f.databaseExists || f.integrity === undefined) return [];
  const t = f.targetId;
  if (f.integrity.ok) return [ok("integrity-ok", "integrity check passed")];
  return [
    finding(
      "integrity-failed",
      "error",
      `integrity check failed: ${clip(f.integrity.detail)}`,
      "migrating a corrupt database can hang or spread the damage, and a backup of it is corrupt too",
      `restore the last verified backup: \`flotilla backups ${t}\`, then \`flotilla restore ${t} BACKUP --yes\`` +
        (f.kind === "sqlite" ? "; confirm with `PRAGMA integrity_check;`" : ""),
    ),
  ];
}

/**
 * A running app and the sessions it holds are what a healthy target looks
 * like; they matter (warning) only when a migration is pending, because a
 * migration is refused while they hold the database.
 */
function checkHolders(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  const out: Finding[] = [];
  const pending = f.pending.length > 0;
  const running = f.appInstances.filter((a) => a.state === "running").map((a) => a.id);
  const unknown = f.appInstances.filter((a) => a.state === "unknown").map((a) => a.id);
  if (running.length > 0) {
    out.push(
      pending
        ? finding(
            "app-running",
            "warning",
            `app ${running.length === 1 ? "instance" : "instances"} running: ${list(running)}`,
            "a migration is pending, and it is refused while the app uses the database (it would read a half-changed schema)",
            `use \`flotilla rollout --selector S --strategy maintenance\`, which stops and restarts them, or stop them with their configured stop command`,
          )
        : finding(
            "app-running",
            "info",
            `app ${running.length === 1 ? "instance" : "instances"} running: ${list(running)}`,
            "nothing is pending, so a running app is how a healthy target looks",
            "nothing to do; a later rollout with `--strategy maintenance` stops and restarts them itself",
          ),
    );
  }
  if (unknown.length > 0) {
    out.push(
      finding(
        "app-state-unknown",
        "info",
        `state of app ${unknown.length === 1 ? "instance" : "instances"} unknown: ${list(unknown)}`,
        "the agent could not tell whether they use the database",
        `check \`apps[].health\` in the agent config; the maintenance strategy stops them anyway: \`flotilla rollout --selector S --strategy maintenance\``,
      ),
    );
  }
  if (f.holders.length > 0) {
    const named = list(
      f.holders.map((h) => `pid ${h.pid} (${clip(h.description, 60)}${h.state !== undefined ? `, ${h.state}` : ""})`),
      4,
    );
    const pids = f.holders.map((h) => h.pid);
    const fix =
      f.kind === "sqlite"
        ? `stop them (the app's stop command, or \`kill ${pids.join(" ")}\` once you know what they are); then \`flotilla diagnose ${t}\``
        : `identify them with \`SELECT pid, usename, application_name, state FROM pg_stat_activity WHERE datname = current_database();\`, ` +
          `stop their clients or end them with \`SELECT pg_terminate_backend(${pids[0] ?? "PID"});\`; then \`flotilla diagnose ${t}\``;
    out.push(
      finding(
        "database-in-use",
        pending ? "warning" : "info",
        `${f.kind === "sqlite" ? "processes hold" : "other sessions use"} the database: ${named}`,
        pending
          ? "a migration is pending and is refused until they stop: their locks make it fail or wait, and they see a half-changed schema"
          : "nothing is pending; a later migration is refused until they stop (the maintenance strategy stops the configured app instances)",
        pending ? fix : `nothing to do now; before migrating: ${fix}`,
      ),
    );
  }
  if (out.length === 0) {
    out.push(ok("database-not-in-use", "no app instance running and nothing else holds the database"));
  }
  return out;
}

function checkIdleInTransaction(f: DiagnoseFacts): Finding[] {
  if (f.kind !== "postgresql" || f.idleInTransaction <= 0) return [];
  return [
    finding(
      "idle-in-transaction",
      f.pending.length > 0 ? "warning" : "info",
      `${plural(f.idleInTransaction, "session is", "sessions are")} idle in transaction`,
      "they hold locks that ALTER TABLE waits on; Flotilla sets lock_timeout, so the migration fails instead of hanging",
      "find them with `SELECT pid, usename, application_name, xact_start FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction';` " +
        "(a blocked session shows its blockers in `pg_blocking_pids(pid)`), fix the client or end them with `SELECT pg_terminate_backend(pid);`",
    ),
  ];
}

function checkDisk(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  const need = 2 * f.databaseBytes;
  const have = `${formatBytes(f.freeBytes)} free in the backup dir for a ${formatBytes(f.databaseBytes)} database`;
  const why = "a backup plus the migration's table rebuild copies each need about the database's size";
  const fix = `free space (see \`flotilla backups ${t}\`, lower \`backups.keep\`) or point \`backups.dir\` at a larger volume, then \`flotilla diagnose ${t}\``;
  if (f.freeBytes < f.databaseBytes + DISK_MARGIN_BYTES) {
    return [finding("disk-space-low", "error", `${have}: not even one copy fits`, why, fix)];
  }
  if (f.freeBytes < need) {
    return [finding("disk-space-tight", "warning", `${have}: less than twice its size`, why, fix)];
  }
  return [ok("disk-space-ok", have)];
}

function checkBackup(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  const age = f.lastVerifiedBackupAgeMs;
  if (age === undefined) {
    return [
      finding(
        "no-verified-backup",
        "info",
        "no verified backup of this target",
        "a rollout takes one itself, but a restore point before any manual work is the only undo",
        `\`flotilla backup ${t}\``,
      ),
    ];
  }
  if (age > BACKUP_MAX_AGE_MS) {
    return [
      finding(
        "backup-old",
        "info",
        `the last verified backup is ${formatAge(age)} old`,
        "restoring it would lose everything written since",
        `\`flotilla backup ${t}\``,
      ),
    ];
  }
  return [ok("backup-recent", `last verified backup ${formatAge(age)} old`)];
}

/** A target should have a passing restore drill within this long (once it has had a verified backup for that long). */
export const DRILL_MAX_AGE_MS = 30 * 24 * 60 * 60 * 1000;

function checkDrill(f: DiagnoseFacts): Finding[] {
  const d = f.drill;
  if (!d) return [];
  const t = f.targetId;
  const fix = `\`flotilla drill ${t}\`, and schedule it: \`flotilla schedule add drill-${t} --drill --cron "0 4 * * 0" --selector id=${t}\``;
  if (d.lastPassAgeMs !== undefined && d.lastPassAgeMs <= DRILL_MAX_AGE_MS && !d.lastFailed) {
    return [ok("drill-recent", `last restore drill passed ${formatAge(d.lastPassAgeMs)} ago`)];
  }
  if (d.lastFailed) {
    return [
      finding(
        "drill-failed",
        "warning",
        "the last restore drill failed",
        "the backup it drilled could not be restored and checked: it may not be usable when needed",
        `see the failure with \`flotilla targets\`, take a fresh backup, then ${fix}`,
      ),
    ];
  }
  // A young target has had no time to drill: say nothing until its first backup is older than the limit.
  if (d.oldestVerifiedBackupAgeMs === undefined || d.oldestVerifiedBackupAgeMs <= DRILL_MAX_AGE_MS) return [];
  return [
    finding(
      "drill-missing",
      "warning",
      d.lastPassAgeMs === undefined ? "no restore drill has ever passed" : `the last passing restore drill is ${formatAge(d.lastPassAgeMs)} old`,
      `a backup nobody has restored is a hope, not a backup: without a passing drill in ${DRILL_MAX_AGE_MS / 86_400_000} days nobody knows whether it restores`,
      fix,
    ),
  ];
}

function checkInterrupted(f: DiagnoseFacts): Finding[] {
  const t = f.targetId;
  if (f.interruptedOperations.length === 0) return [ok("no-interrupted-operations", "no operation was interrupted by an agent crash")];
  const op = f.lastFailedOperation;
  const latest =
    op !== undefined && op.state === "interrupted" && f.interruptedOperations.includes(op.id)
      ? `; ${op.kind} ${op.id} started ${op.startedAt}${op.toRevision ? ` towards ${op.toRevision}` : ""} from ${op.revisionBefore.join(",") || "no revision"}` +
        (op.backupId ? ` after taking backup ${op.backupId}, which holds the data from before it` : " before taking its backup, so it had changed nothing")
      : "";
  return [
    finding(
      "interrupted-operation",
      "error",
      `${plural(f.interruptedOperations.length, "operation was", "operations were")} interrupted by an agent crash: ${list(f.interruptedOperations)}`,
      `the database may be half-migrated (SQLite DDL is not transactional); new operations on the target wait until it is recovered${latest}`,
      `run \`flotilla recover ${t} ${f.interruptedOperations[0] ?? "OPERATION"} --action restore\` (puts back its pre-operation backup and verifies it), ` +
        `or \`--action accept\` when the database is verifiably at the operation's target revision; then \`flotilla diagnose ${t}\``,
    ),
  ];
}

/** "at X (it was at Y before)" — what a failed operation left the database at, from its journal row. */
function leftBehind(op: FailedOperation): string {
  const before = op.revisionBefore.join(",") || "no revision";
  if (op.revisionAfter.length === 0) return `the revision it left was not recorded (it started at ${before})`;
  const after = op.revisionAfter.join(",");
  const same = [...op.revisionAfter].sort().join(",") === [...op.revisionBefore].sort().join(",");
  return same
    ? `it left the database at its old revision ${after}`
    : `it left the database at ${after}, not at its old revision ${before}${op.toRevision ? ` nor at ${op.toRevision}` : ""}`;
}

function checkLastFailure(f: DiagnoseFacts): Finding[] {
  const op = f.lastFailedOperation;
  // Interrupted operations that still hold the target are reported (with their fix) by checkInterrupted.
  if (op === undefined || (op.state === "interrupted" && f.interruptedOperations.includes(op.id))) return [];
  const t = f.targetId;
  const backup = op.backupId ? `; its backup ${op.backupId} holds the data from before it` : "; it had taken no backup yet, so it changed nothing";
  const what = `the last failed operation was ${op.kind} ${op.id} (${op.startedAt})${op.errorCode ? ` with ${op.errorCode}` : ""}${op.message ? `: ${clip(op.message, 160)}` : ""}`;
  if (op.supersededBy !== undefined) {
    return [
      finding(
        "last-failed-operation",
        "info",
        what,
        `${op.supersededBy.kind} ${op.supersededBy.id} succeeded since, so the database is in a known state again`,
        NOTHING_TO_DO,
      ),
    ];
  }
  const same = op.revisionAfter.length > 0 && [...op.revisionAfter].sort().join(",") === [...op.revisionBefore].sort().join(",");
  const current = f.current ?? [];
  const stillThere = op.revisionAfter.length === 0 || [...op.revisionAfter].sort().join(",") === [...current].sort().join(",");
  if (same || (op.kind !== "migrate" && op.kind !== "downgrade" && op.kind !== "restore")) {
    return [
      finding(
        "last-failed-operation",
        "info",
        what,
        `${leftBehind(op)}${backup}`,
        `nothing is left to repair; see the cause above, then retry (\`flotilla plan --selector id=${t}\` shows the steps)`,
      ),
    ];
  }
  return [
    finding(
      "last-failed-operation",
      "warning",
      what,
      `${leftBehind(op)}${backup}${stillThere ? "" : `; the database is now at ${current.join(",") || "no revision"}`}`,
      op.backupId
        ? `put the data from before it back: \`flotilla restore ${t} ${op.backupId} --yes\`, then \`flotilla diagnose ${t}\`; never stamp over it`
        : `compare the schema with the revision it reports, then \`flotilla diagnose ${t}\`; never stamp over it`,
    ),
  ];
}

function checkStorage(f: DiagnoseFacts): Finding[] {
  if (f.kind !== "sqlite") return [];
  const out: Finding[] = [];
  if (f.onNetworkFilesystem === true) {
    out.push(
      finding(
        "network-filesystem",
        "warning",
        "the SQLite file is on a network filesystem",
        "SQLite locking is unreliable there and slow I/O makes long migrations look hung; concurrent writers can corrupt it",
        "move the file to local disk and update `database` in the agent config; until then migrate only with every app stopped (`--strategy maintenance`)",
      ),
    );
  }
  if (f.sqliteJournalMode?.toLowerCase() === "wal") {
    out.push(
      finding(
        "sqlite-wal",
        "info",
        "the SQLite file is in WAL mode",
        "recent commits live in the -wal file; a plain copy of the main file can miss them",
        `nothing to do for Flotilla's backups (they include the WAL); never copy the file by hand while the app runs, use \`flotilla backup ${f.targetId}\``,
      ),
    );
  }
  return out;
}
