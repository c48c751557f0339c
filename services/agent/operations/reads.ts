import { join } from "node:path";
import { FlotillaError, toFlotillaError } from "../../common/errors.js";
import { splitOfflineSql } from "../core/alembic-output.js";
import { estimateMs } from "../core/migration-progress.js";
import { resolveMigration } from "../core/safety-policy.js";
import { classifySql, type Compatibility } from "../core/sql-compat.js";
import type { AppState, BackupManifest, GraphView } from "../core/ports.js";
import { diagnose as diagnoseFacts, lastFailure, type DiagnoseFacts, type Finding } from "../core/diagnose.js";
import type { OperationContext, TargetRuntime } from "./context.js";

/** Read-only verbs: status, diagnose, plan. They take no lock and change nothing. */

/** Cheap status: revisions from the database, heads and pending from the cached graph. */
export async function status(
  ctx: OperationContext,
  targetId: string,
): Promise<{
  current: string[];
  currentKnown: boolean;
  heads: string[];
  pending: { id: string; down: string[]; message: string }[];
  apps: { id: string; color: string; state: AppState; detail: string }[];
  lastVerified?: BackupManifest;
  busy: string;
  interrupted: string[];
  error: string;
}> {
  const t = ctx.target(targetId);
  const errors: string[] = [];
  const [revs, graph, apps, lastVerified] = await Promise.all([
    t.db.readRevisions().catch((e: unknown) => {
      errors.push(`database: ${toFlotillaError(e).message}`);
      return null;
    }),
    t.alembic.graph().catch((e: unknown) => {
      errors.push(`alembic: ${toFlotillaError(e).message}`);
      return undefined;
    }),
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
    current,
    currentKnown,
    heads: graph ? [...graph.heads] : [],
    pending,
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
  const pendingIds =
    graph && current && graph.unknown(current).length === 0 && graph.heads.length === 1
      ? graph.pending(current, graph.heads[0]!)
      : graph && current === null && graph.heads.length === 1
        ? graph.pending([], graph.heads[0]!)
        : [];
  const preexisting = exists && graph ? await preexistingObjects(ctx, t, current ?? [], pendingIds, tables).catch(() => []) : [];
  const holders = exists ? await t.db.holders().catch(() => []) : [];
  const apps = await ctx.appStates(t);
  const lastVerified = await t.catalog.lastVerified().catch(() => undefined);
  const lastFailed = lastFailure(ctx.deps.journal.list(targetId, 50));
  const integrity = exists ? await t.db.integrityCheck().catch((e: unknown) => ({ ok: false, detail: toFlotillaError(e).message })) : undefined;
  const facts: DiagnoseFacts = {
    targetId,
    kind: c.kind,
    alembicIniFound: iniFound,
    alembicDir: c.alembic.dir,
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
async function preexistingObjects(
  ctx: OperationContext,
  t: TargetRuntime,
  current: string[],
  pending: string[],
  tables: string[],
): Promise<DiagnoseFacts["preexistingObjects"]> {
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

/** One pending revision as plan shows it (PlanResponse.revisions). */
export interface RevisionPlanView {
  id: string;
  downRevision: string;
  message: string;
  sql: string;
  rendered: boolean;
  notRenderedReason: string;
  compatibility: Compatibility;
  compatibilityReason: string;
  estimateMs: number;
}

export interface PlanView {
  current: string[];
  to: string;
  pending: { id: string; down: string[]; message: string }[];
  sql: string;
  sqlComplete: boolean;
  notes: string[];
  additiveOnly: boolean;
  revisions: RevisionPlanView[];
  upToDate: boolean;
}

/**
 * Offline SQL per revision, rendered per renderable stretch: one
 * `alembic upgrade A:B --sql` for the whole range, and when a revision
 * cannot be rendered offline, one more run starting after it. A failure
 * before any revision started (env.py) is not a revision's: every
 * remaining revision gets that reason and no further run is made.
 */
async function renderStretches(
  t: TargetRuntime,
  graph: GraphView,
  current: readonly string[],
  pending: readonly string[],
): Promise<Map<string, { sql: string } | { reason: string }>> {
  const out = new Map<string, { sql: string } | { reason: string }>();
  if (current.length > 1) {
    for (const id of pending)
      out.set(id, { reason: "the database has several revisions applied (a branched history): offline SQL is rendered only for linear histories" });
    return out;
  }
  const known = new Set(graph.revisions.keys());
  const last = pending.at(-1);
  let from: string | null = current[0] ?? null;
  let i = 0;
  while (last !== undefined && i < pending.length) {
    const run = await t.alembic.offlineSql(from, last);
    const pieces = new Map(splitOfflineSql(run.stdout, known).revisions.map((r) => [r.to, r.sql]));
    if (run.ok) {
      for (const id of pending.slice(i)) out.set(id, { sql: pieces.get(id) ?? "" });
      break;
    }
    // The revision offline mode stopped in is the last one it started.
    const started = pending.slice(i).filter((id) => pieces.has(id));
    const stopped = started.at(-1);
    const why =
      run.failure?.kind === "offline-unsupported"
        ? `it uses a batch operation that needs a live database connection on ${t.config.kind} (SQLite rebuilds tables by reflection), so Alembic cannot render it offline`
        : `Alembic could not render it offline: ${run.failure?.message ?? "unknown error"}`;
    if (stopped === undefined) {
      for (const id of pending.slice(i)) out.set(id, { reason: why });
      break;
    }
    for (const id of started.slice(0, -1)) out.set(id, { sql: pieces.get(id) ?? "" });
    out.set(stopped, { reason: why });
    from = stopped;
    i = pending.indexOf(stopped) + 1;
  }
  return out;
}

/**
 * Dry run of an upgrade: the safety policy's verdict on the wanted revision
 * (refusals are thrown as FlotillaErrors: INVALID_ARGUMENT and friends exit
 * 2 in the CLI), then every pending revision with its offline SQL where
 * Alembic can render it, its compatibility and its expected duration.
 */
export async function plan(ctx: OperationContext, targetId: string, to: string): Promise<PlanView> {
  const t = ctx.target(targetId);
  const [graph, revs] = await Promise.all([t.alembic.graph(), t.db.readRevisions()]);
  const current = revs ?? [];
  const decision = resolveMigration({ targetId, graph, requested: to, current: revs, direction: "upgrade" });
  if (!decision.ok) throw new FlotillaError(decision.code, decision.message);
  if (decision.action === "up-to-date") {
    return {
      current,
      to: decision.target,
      pending: [],
      sql: "",
      sqlComplete: true,
      notes: [decision.message],
      additiveOnly: true,
      revisions: [],
      upToDate: true,
    };
  }
  const pending = [...decision.pending];
  const estimates = new Map([...ctx.deps.journal.timings(targetId, "upgrade")].map(([id, timing]) => [id, timing.durationMs]));
  const rendered = await renderStretches(t, graph, current, pending);
  const notes: string[] = [];
  const revisions = pending.map((id): RevisionPlanView => {
    const node = graph.revisions.get(id)!;
    const r = rendered.get(id) ?? { reason: "not rendered" };
    const verdict = "sql" in r ? classifySql(r.sql) : { compatibility: "unknown" as const, reason: `not rendered offline: ${r.reason}` };
    if ("reason" in r) notes.push(`revision ${id} cannot be shown as SQL: ${r.reason}. The migration itself runs online and is not affected.`);
    return {
      id,
      downRevision: node.down.join(","),
      message: node.message,
      sql: "sql" in r ? r.sql : "",
      rendered: "sql" in r,
      notRenderedReason: "reason" in r ? r.reason : "",
      compatibility: verdict.compatibility,
      compatibilityReason: verdict.reason,
      estimateMs: estimates.get(id) ?? 0,
    };
  });
  const sql = revisions.map((r) => `-- ${r.id}: ${r.message}\n${r.rendered ? r.sql : `-- not rendered: ${r.notRenderedReason}`}`).join("\n\n");
  const sqlComplete = revisions.every((r) => r.rendered);
  const additiveOnly = revisions.every((r) => r.compatibility === "additive");
  const breaking = revisions.filter((r) => r.compatibility === "breaking");
  if (breaking.length > 0) {
    notes.push(`breaking for old app instances: ${breaking.map((r) => `${r.id} (${r.compatibilityReason})`).join("; ")}; prefer the maintenance strategy`);
  }
  if (!sqlComplete)
    notes.push(
      "not every pending revision could be rendered, so Flotilla cannot tell whether they are all additive: treat the unrendered ones as not additive",
    );
  const total = estimateMs(pending, estimates);
  if (total !== undefined) notes.push(`expected duration ${(total / 1000).toFixed(1)}s (from earlier runs or rehearsals of these revisions)`);
  return {
    current,
    to: decision.target,
    pending: pending.map((id) => {
      const n = graph.revisions.get(id)!;
      return { id, down: [...n.down], message: n.message };
    }),
    sql,
    sqlComplete,
    notes,
    additiveOnly,
    revisions,
    upToDate: false,
  };
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
