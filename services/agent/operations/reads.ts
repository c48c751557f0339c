import { join } from "node:path";
import { toFlotillaError } from "../../common/errors.js";
import type { AppState, BackupManifest } from "../core/ports.js";
import { resolveTarget } from "../core/revisions.js";
import { diagnose as diagnoseFacts, lastFailure, type DiagnoseFacts, type Finding } from "../core/diagnose.js";
import { refuse, type OperationContext, type TargetRuntime } from "./context.js";

/** Read-only verbs: status, diagnose, plan. They take no lock and change nothing. */

/** Cheap status: revisions from the database, heads and pending from the cached graph. */
export async function status(ctx: OperationContext, targetId: string): Promise<{
  current: string[]; currentKnown: boolean; heads: string[]; pending: { id: string; down: string[]; message: string }[];
  apps: { id: string; color: string; state: AppState; detail: string }[]; lastVerified?: BackupManifest; busy: string; interrupted: string[]; error: string;
}> {
  const t = ctx.target(targetId);
  const errors: string[] = [];
  const [revs, graph, apps, lastVerified] = await Promise.all([
    t.db.readRevisions().catch((e: unknown) => { errors.push(`database: ${toFlotillaError(e).message}`); return null; }),
    t.alembic.graph().catch((e: unknown) => { errors.push(`alembic: ${toFlotillaError(e).message}`); return undefined; }),
    ctx.appStates(t),
    t.catalog.lastVerified().catch(() => undefined),
  ]);
  const current = revs ?? [];
  let pending: { id: string; down: string[]; message: string }[] = [];
  let currentKnown = true;
  if (graph) {
    currentKnown = graph.unknown(current).length === 0;
    if (currentKnown && graph.heads.length >= 1) {
      const ids = graph.heads.flatMap((h) => graph.pending(current, h));
      pending = [...new Set(ids)].map((id) => {
        const n = graph.revisions.get(id)!;
        return { id, down: [...n.down], message: n.message };
      });
    }
  }
  return {
    current, currentKnown, heads: graph ? [...graph.heads] : [], pending,
    apps: apps.map((a) => ({ id: a.app.id, color: a.app.color, state: a.state, detail: a.detail })),
    ...(lastVerified ? { lastVerified } : {}),
    busy: ctx.deps.journal.lockHolder(targetId) ?? "",
    interrupted: ctx.deps.journal.interrupted(targetId),
    error: errors.join("; "),
  };
}

export async function diagnose(ctx: OperationContext, targetId: string): Promise<{ findings: Finding[]; problems: boolean }> {
  const t = ctx.target(targetId);
  const c = t.config;
  const iniFound = ctx.deps.fileExists(join(c.alembic.dir, "alembic.ini"));
  const exists = await t.db.exists().catch(() => false);
  const envRun = iniFound ? await t.alembic.checkEnv().catch(() => undefined) : undefined;
  const graph = envRun?.ok ? await t.alembic.graph().catch(() => undefined) : undefined;
  const current = exists ? await t.db.readRevisions().catch(() => null) : null;
  const tables = exists ? await t.db.listTables().catch(() => [] as string[]) : [];
  const known = graph ? [...graph.revisions.keys()] : [];
  const pendingIds = graph && current && graph.unknown(current).length === 0 && graph.heads.length === 1
    ? graph.pending(current, graph.heads[0]!) : graph && current === null && graph.heads.length === 1 ? graph.pending([], graph.heads[0]!) : [];
  const preexisting = exists && graph ? await preexistingObjects(ctx, t, current ?? [], pendingIds, tables).catch(() => []) : [];
  const holders = exists ? await t.db.holders().catch(() => []) : [];
  const apps = await ctx.appStates(t);
  const lastVerified = await t.catalog.lastVerified().catch(() => undefined);
  const lastFailed = lastFailure(ctx.deps.journal.list(targetId, 50));
  const integrity = exists ? await t.db.integrityCheck().catch((e: unknown) => ({ ok: false, detail: toFlotillaError(e).message })) : undefined;
  const facts: DiagnoseFacts = {
    targetId, kind: c.kind, alembicIniFound: iniFound, alembicDir: c.alembic.dir,
    ...(envRun && !envRun.ok && envRun.failure ? { alembicEnvError: { kind: envRun.failure.kind, message: envRun.failure.message } } : {}),
    secretConfigured: "WEBUI_SECRET_KEY" in c.alembic.env,
    databaseExists: exists,
    heads: graph ? [...graph.heads] : [],
    branchpoints: graph ? [...graph.branchpoints] : [],
    knownRevisions: known,
    current,
    pending: pendingIds.map((id) => ({ id, message: graph?.revisions.get(id)?.message ?? "" })),
    tables,
    alembicTmpTables: tables.filter((n) => n.startsWith("_alembic_tmp_")),
    hasMigrateHistory: tables.includes("migratehistory"),
    preexistingObjects: preexisting,
    ...(integrity ? { integrity } : {}),
    holders: holders.map((h) => ({ pid: h.pid, description: h.description, ...(h.state ? { state: h.state } : {}) })),
    idleInTransaction: holders.filter((h) => h.state === "idle in transaction").length,
    appInstances: apps.map((a) => ({ id: a.app.id, state: a.state })),
    databaseBytes: exists ? await t.db.sizeBytes().catch(() => 0) : 0,
    freeBytes: await t.db.freeBytes(c.backups.dir).catch(() => Number.MAX_SAFE_INTEGER),
    ...(lastVerified ? { lastVerifiedBackupAgeMs: Date.now() - Date.parse(lastVerified.createdAt) } : {}),
    interruptedOperations: ctx.deps.journal.interrupted(targetId),
    drill: drillFacts(ctx, targetId, await t.catalog.list().catch(() => [])),
    ...(lastFailed ? { lastFailedOperation: lastFailed } : {}),
  };
  return diagnoseFacts(facts);
}

/**
 * Objects that a pending revision would create but that already exist: the
 * "duplicate column" trap left by a partial earlier run. Read from each
 * pending revision's offline SQL where Alembic can render it.
 */
async function preexistingObjects(ctx: OperationContext, t: TargetRuntime, current: string[], pending: string[], tables: string[]): Promise<DiagnoseFacts["preexistingObjects"]> {
  const found: DiagnoseFacts["preexistingObjects"] = [];
  let from: string | null = current.length === 1 ? current[0]! : null;
  const tableSet = new Set(tables);
  for (const rev of pending.slice(0, 5)) {
    const run = await t.alembic.offlineSql(from, rev);
    from = rev;
    if (!run.ok) continue;
    for (const m of run.stdout.matchAll(/CREATE TABLE "?([A-Za-z0-9_]+)"?/g)) {
      if (m[1] !== "alembic_version" && tableSet.has(m[1]!)) found.push({ revision: rev, object: m[1]!, kind: "table" });
    }
    for (const m of run.stdout.matchAll(/ALTER TABLE "?([A-Za-z0-9_]+)"? ADD (?:COLUMN )?"?([A-Za-z0-9_]+)"?/g)) {
      if (tableSet.has(m[1]!)) {
        const cols = await t.db.listColumns(m[1]!);
        if (cols.includes(m[2]!)) found.push({ revision: rev, object: `${m[1]}.${m[2]}`, kind: "column" });
      }
    }
  }
  return found;
}

export async function plan(ctx: OperationContext, targetId: string, to: string): Promise<{ current: string[]; to: string; pending: { id: string; down: string[]; message: string }[]; sql: string; sqlComplete: boolean; notes: string[]; additiveOnly: boolean }> {
  const t = ctx.target(targetId);
  const graph = await t.alembic.graph();
  const target = resolveTarget(graph, to);
  const current = (await t.db.readRevisions()) ?? [];
  const unknown = graph.unknown(current);
  if (unknown.length > 0) refuse("UNKNOWN_REVISION", ctx.skewMessage(targetId, unknown));
  const notes: string[] = [];
  if (graph.ancestorsOrSelf(current).has(target) && !current.includes(target)) {
    notes.push(`${target} is older than the database's revision ${current.join(", ")}: that is a downgrade (flotilla downgrade ${targetId} --to ${target} --accept-data-loss)`);
  }
  const pending = graph.pending(current, target);
  const parts: string[] = [];
  let sqlComplete = true;
  let from: string | null = current.length === 1 ? current[0]! : null;
  if (current.length > 1) {
    sqlComplete = false;
    notes.push("the database has several revisions applied (a branched history): offline SQL is shown only for linear histories");
  } else if (pending.length > 0) {
    const whole = await t.alembic.offlineSql(from, target);
    if (whole.ok) parts.push(whole.stdout.trim());
    else {
      // Render revision by revision, and say plainly where it becomes impossible.
      for (const rev of pending) {
        const one = await t.alembic.offlineSql(from, rev);
        if (!one.ok) {
          sqlComplete = false;
          const why = one.failure?.kind === "offline-unsupported"
            ? `revision ${rev} uses a batch operation that needs a live database connection on ${t.config.kind} (SQLite rebuilds tables by reflection), so Alembic cannot render it offline`
            : `Alembic could not render revision ${rev} offline: ${one.failure?.message ?? "unknown error"}`;
          notes.push(`${why}; SQL is shown up to ${from ?? "base"}. The migration itself runs online and is not affected.`);
          break;
        }
        parts.push(one.stdout.trim());
        from = rev;
      }
    }
  }
  const sql = parts.join("\n\n");
  const destructive = /\b(DROP\s+(TABLE|COLUMN|INDEX)|RENAME|ALTER\s+COLUMN|ALTER\s+TABLE\s+\S+\s+ALTER|UPDATE\s|DELETE\s)/i;
  const additiveOnly = sqlComplete && !destructive.test(sql.replace(/UPDATE alembic_version[^;]*;/gi, ""));
  if (!additiveOnly && pending.length > 0) {
    notes.push(sqlComplete
      ? "some pending revisions change or move existing data (UPDATE/ALTER/DROP/RENAME): old app instances may break while they run; prefer the maintenance strategy"
      : "not every pending revision could be rendered, so Flotilla cannot tell whether they are purely additive: treat them as not additive");
  }
  return { current, to: target, pending: pending.map((id) => { const n = graph.revisions.get(id)!; return { id, down: [...n.down], message: n.message }; }), sql, sqlComplete, notes, additiveOnly };
}

/** Facts for the restore-drill check: the last passing drill and the oldest verified backup. */
function drillFacts(ctx: OperationContext, targetId: string, backups: readonly BackupManifest[]): NonNullable<DiagnoseFacts["drill"]> {
  const drills = ctx.deps.journal.list(targetId, 500).filter((o) => o.kind === "drill" && (o.state === "succeeded" || o.state === "failed"));
  const pass = drills.find((o) => o.state === "succeeded");
  const oldest = backups.filter((m) => m.verified).at(-1);
  return {
    lastFailed: drills[0]?.state === "failed",
    ...(pass ? { lastPassAgeMs: Date.now() - Date.parse(pass.finishedAt || pass.startedAt) } : {}),
    ...(oldest ? { oldestVerifiedBackupAgeMs: Date.now() - Date.parse(oldest.createdAt) } : {}),
  };
}
