import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import { FlotillaError, isUsageError, toFlotillaError, type ErrorCode } from "../common/errors.js";
import { redact } from "../common/redact.js";
import type { AgentApp, AgentConfig, AgentTarget } from "./config.js";
import type { AppControl, AppState } from "./adapters/app-control.js";
import type { BackupCatalog, BackupManifest } from "./adapters/backup-catalog.js";
import type { SqliteJournal } from "./adapters/sqlite-journal.js";
import { killOrphans } from "./adapters/orphans.js";
import type { AlembicPort, AlembicRun, DatabaseAdapter, ProgressFn } from "./core/ports.js";
import { resolveTarget } from "./core/revisions.js";
import { diagnose, lastFailure, type DiagnoseFacts, type Finding } from "./core/diagnose.js";

/** What an operation streams to its caller. */
export type OpEvent =
  | { kind: "progress"; source: string; line: string; bytesDone?: number; bytesTotal?: number }
  | { kind: "step"; name: string; state: "running" | "succeeded" | "failed" | "skipped"; detail: string; durationMs?: number }
  | { kind: "result"; result: OpResult };

export interface OpResult {
  operationId: string;
  kind: string;
  status: "succeeded" | "failed" | "refused";
  errorCode: string;
  message: string;
  revisionBefore: string[];
  revisionAfter: string[];
  backup?: BackupManifest;
  timings: { from: string; to: string; durationMs: number; message: string }[];
  failureClass: string;
  restored: boolean;
  outputTail: string;
  durationMs: number;
  details: Record<string, string>;
}

export type Emit = (e: OpEvent) => void;

/** Everything the agent knows about one target at run time. */
export interface TargetRuntime {
  readonly config: AgentTarget;
  readonly db: DatabaseAdapter;
  readonly alembic: AlembicPort;
  readonly green?: { readonly db: DatabaseAdapter; readonly alembic: AlembicPort };
  readonly catalog: BackupCatalog;
  /** App instances of this target configured on this host. */
  readonly apps: readonly AgentApp[];
  /** Builds an AlembicPort for another database URL of this target (rehearsal copies). */
  alembicFor(url: string): AlembicPort;
}

export interface OperationsDeps {
  readonly config: AgentConfig;
  readonly targets: ReadonlyMap<string, TargetRuntime>;
  readonly journal: SqliteJournal;
  readonly appControl: AppControl;
  readonly log: Logger;
  /** Silence after which a running Alembic step reports that it is still alive. */
  readonly heartbeatMs: number;
  readonly runHook: (argv: readonly string[], onLine: (l: string) => void, signal?: AbortSignal) => Promise<{ ok: boolean; detail: string }>;
}

/** Set in the environment of every child an operation starts, so a restarted agent can find and stop orphans. */
export const OPERATION_ENV = "FLOTILLA_OPERATION_ID";

const STAMP_REASONS = ["created-with-create-all", "imported-backup", "applied-by-hand"] as const;
const OP_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

class Refusal extends FlotillaError {}

function refuse(code: ErrorCode, message: string): never {
  throw new Refusal(code, message);
}

function tail(text: string, lines = 30): string {
  return text.split("\n").slice(-lines).join("\n");
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join(",") === [...b].sort().join(",");
}

/**
 * The agent's operations. Each runs under the target's lock, is journaled
 * before it acts, streams progress through `emit`, and always ends with one
 * result event (refusals and failures are results, not exceptions).
 */
export class AgentOperations {
  constructor(private readonly d: OperationsDeps) {}

  target(id: string): TargetRuntime {
    const t = this.d.targets.get(id);
    if (!t) {
      const known = [...this.d.targets.keys()].join(", ");
      throw new FlotillaError("NOT_FOUND", `this agent has no target "${id}" (it has: ${known || "none"})`);
    }
    return t;
  }

  /**
   * The runtime of a target for app-instance operations: the full runtime when
   * the target is local, or just the app instances when this host only runs
   * apps of a target another agent owns (a shared PostgreSQL database).
   */
  appRuntime(id: string): TargetRuntime {
    const local = this.d.targets.get(id);
    if (local) return local;
    const apps = this.d.config.apps.filter((a) => a.target === id);
    if (apps.length === 0) return this.target(id);
    return { apps, config: { id } } as unknown as TargetRuntime;
  }

  // ---------------------------------------------------------------- reads

  async appStates(t: TargetRuntime): Promise<{ app: AgentApp; state: AppState; detail: string }[]> {
    return Promise.all(t.apps.map(async (app) => ({ app, ...(await this.d.appControl.state(app)) })));
  }

  /** Cheap status: revisions from the database, heads and pending from the cached graph. */
  async status(targetId: string): Promise<{
    current: string[]; currentKnown: boolean; heads: string[]; pending: { id: string; down: string[]; message: string }[];
    apps: { id: string; color: string; state: AppState; detail: string }[]; lastVerified?: BackupManifest; busy: string; interrupted: string[]; error: string;
  }> {
    const t = this.target(targetId);
    const errors: string[] = [];
    const [revs, graph, apps, lastVerified] = await Promise.all([
      t.db.readRevisions().catch((e: unknown) => { errors.push(`database: ${toFlotillaError(e).message}`); return null; }),
      t.alembic.graph().catch((e: unknown) => { errors.push(`alembic: ${toFlotillaError(e).message}`); return undefined; }),
      this.appStates(t),
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
      busy: this.d.journal.lockHolder(targetId) ?? "",
      interrupted: this.d.journal.interrupted(targetId),
      error: errors.join("; "),
    };
  }

  async diagnose(targetId: string): Promise<{ findings: Finding[]; problems: boolean }> {
    const t = this.target(targetId);
    const c = t.config;
    const iniFound = existsSync(join(c.alembic.dir, "alembic.ini"));
    const exists = await t.db.exists().catch(() => false);
    const envRun = iniFound ? await t.alembic.checkEnv().catch(() => undefined) : undefined;
    const graph = envRun?.ok ? await t.alembic.graph().catch(() => undefined) : undefined;
    const current = exists ? await t.db.readRevisions().catch(() => null) : null;
    const tables = exists ? await t.db.listTables().catch(() => [] as string[]) : [];
    const known = graph ? [...graph.revisions.keys()] : [];
    const pendingIds = graph && current && graph.unknown(current).length === 0 && graph.heads.length === 1
      ? graph.pending(current, graph.heads[0]!) : graph && current === null && graph.heads.length === 1 ? graph.pending([], graph.heads[0]!) : [];
    const preexisting = exists && graph ? await this.preexistingObjects(t, current ?? [], pendingIds, tables).catch(() => []) : [];
    const holders = exists ? await t.db.holders().catch(() => []) : [];
    const apps = await this.appStates(t);
    const lastVerified = await t.catalog.lastVerified().catch(() => undefined);
    const lastFailed = lastFailure(this.d.journal.list(targetId, 50));
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
      interruptedOperations: this.d.journal.interrupted(targetId),
      ...(lastFailed ? { lastFailedOperation: lastFailed } : {}),
    };
    return diagnose(facts);
  }

  /**
   * Objects that a pending revision would create but that already exist: the
   * "duplicate column" trap left by a partial earlier run. Read from each
   * pending revision's offline SQL where Alembic can render it.
   */
  private async preexistingObjects(t: TargetRuntime, current: string[], pending: string[], tables: string[]): Promise<DiagnoseFacts["preexistingObjects"]> {
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

  async plan(targetId: string, to: string): Promise<{ current: string[]; to: string; pending: { id: string; down: string[]; message: string }[]; sql: string; sqlComplete: boolean; notes: string[]; additiveOnly: boolean }> {
    const t = this.target(targetId);
    const graph = await t.alembic.graph();
    const target = resolveTarget(graph, to);
    const current = (await t.db.readRevisions()) ?? [];
    const unknown = graph.unknown(current);
    if (unknown.length > 0) refuse("UNKNOWN_REVISION", this.skewMessage(targetId, unknown));
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

  private skewMessage(targetId: string, unknown: string[]): string {
    return `the database of ${targetId} is at revision ${unknown.join(", ")}, which the app's migrations do not contain ` +
      "(version skew: it was migrated by a newer or different build). Run the code that matches the database, or restore a backup taken before; never stamp over it";
  }

  // ---------------------------------------------------------------- the operation frame

  /**
   * Runs `body` as a journaled operation under the target's lock. Refusals
   * (thrown before the first change) leave nothing behind but a refused row.
   */
  private async run(
    kind: string, targetId: string, requestedId: string, emit: Emit,
    init: { toRevision?: string; rolloutId?: string; lock?: boolean; appsOnly?: boolean },
    body: (ctx: { id: string; t: TargetRuntime; progress: ProgressFn; result: Partial<OpResult> }) => Promise<Partial<OpResult> | void>,
  ): Promise<OpResult> {
    const started = performance.now();
    const id = requestedId || randomUUID();
    const base: OpResult = {
      operationId: id, kind, status: "succeeded", errorCode: "", message: "", revisionBefore: [], revisionAfter: [], timings: [],
      failureClass: "", restored: false, outputTail: "", durationMs: 0, details: {},
    };
    const finish = (r: OpResult): OpResult => {
      r.durationMs = Math.round(performance.now() - started);
      r.message = redact(r.message);
      r.outputTail = redact(r.outputTail);
      emit({ kind: "result", result: r });
      return r;
    };
    if (!OP_ID.test(id)) return finish({ ...base, status: "refused", errorCode: "INVALID_ARGUMENT", message: `operation id "${id}" is not valid (letters, digits, . _ : -)` });
    let t: TargetRuntime;
    try {
      t = init.appsOnly ? this.appRuntime(targetId) : this.target(targetId);
      this.d.journal.begin({ id, targetId, kind, ...(init.toRevision ? { toRevision: init.toRevision } : {}), ...(init.rolloutId ? { rolloutId: init.rolloutId } : {}) }, init.lock !== false);
    } catch (err) {
      const fe = toFlotillaError(err);
      return finish({ ...base, status: "refused", errorCode: fe.code, message: fe.message });
    }
    const log = this.d.log.child({ op: id, kind, target: targetId });
    log.info("operation started");
    const progress: ProgressFn = (p) => emit({ kind: "progress", source: p.source ?? "agent", line: redact(p.line), ...(p.bytesDone !== undefined ? { bytesDone: p.bytesDone } : {}), ...(p.bytesTotal !== undefined ? { bytesTotal: p.bytesTotal } : {}) });
    const partial: Partial<OpResult> = {};
    try {
      const extra = await body({ id, t, progress, result: partial });
      const r: OpResult = { ...base, ...partial, ...(extra ?? {}) };
      const state = r.status === "succeeded" ? "succeeded" : r.status === "refused" ? "refused" : "failed";
      this.d.journal.finish(id, state, { errorCode: r.errorCode, message: redact(r.message), revisionAfter: r.revisionAfter });
      log.info({ status: r.status, code: r.errorCode }, "operation finished");
      return finish(r);
    } catch (err) {
      const fe = toFlotillaError(err);
      // Anything thrown as a refusal, or a usage-class error, happened before the first change.
      const refused = err instanceof Refusal || isUsageError(fe.code);
      const r: OpResult = { ...base, ...partial, status: refused ? "refused" : "failed", errorCode: fe.code, message: fe.message };
      this.d.journal.finish(id, refused ? "refused" : "failed", { errorCode: fe.code, message: redact(fe.message), revisionAfter: r.revisionAfter });
      if (refused) log.info({ code: fe.code }, "operation refused");
      else log.error({ err: fe }, "operation failed");
      return finish(r);
    }
  }

  private step<T>(emit: Emit, name: string, fn: () => Promise<T>, detail: (v: T) => string = () => ""): Promise<T> {
    const s = performance.now();
    emit({ kind: "step", name, state: "running", detail: "" });
    return fn().then(
      (v) => { emit({ kind: "step", name, state: "succeeded", detail: detail(v), durationMs: Math.round(performance.now() - s) }); return v; },
      (e: unknown) => { emit({ kind: "step", name, state: "failed", detail: redact(toFlotillaError(e).message), durationMs: Math.round(performance.now() - s) }); throw e; },
    );
  }

  // ---------------------------------------------------------------- backups

  private async takeBackup(t: TargetRuntime, db: DatabaseAdapter, opId: string, rolloutId: string, verify: boolean, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<BackupManifest> {
    await t.catalog.prepare();
    const size = await db.sizeBytes().catch(() => 0);
    const free = await db.freeBytes(t.config.backups.dir).catch(() => Number.MAX_SAFE_INTEGER);
    if (free < size * 1.1 + 16 * 1024 * 1024) {
      refuse("PRECONDITION_FAILED", `not enough free space in ${t.config.backups.dir}: ${Math.round(free / 1e6)} MB free, the database is ${Math.round(size / 1e6)} MB. Free some space or prune old backups`);
    }
    const { id, path } = t.catalog.newBackup();
    const artifact = await this.step(emit, "backup", () => db.backup(path, progress, signal), (a) => `${id}: ${a.sizeBytes} bytes, sha256 ${a.sha256.slice(0, 12)}…`);
    let manifest: BackupManifest = {
      ...artifact, id, targetId: t.config.id, kind: t.config.kind, createdAt: new Date().toISOString(), source: db.displayName,
      operationId: opId, rolloutId, verified: false, verifiedAt: "", verification: "not verified yet",
    };
    await t.catalog.save(manifest);
    this.d.journal.update(opId, { backupId: id });
    if (verify) manifest = await this.verifyManifest(t, db, manifest, emit, progress, signal);
    const protect = new Set<string>([id, ...this.d.journal.list(t.config.id, 200).filter((o) => o.state === "interrupted" || o.state === "running").map((o) => o.backupId)]);
    const pruned = await t.catalog.prune(t.config.backups.keep, protect);
    if (pruned.length > 0) progress({ source: "backup", line: `retention: removed ${pruned.length} old backup(s) (keep ${t.config.backups.keep})` });
    return manifest;
  }

  private async verifyManifest(t: TargetRuntime, db: DatabaseAdapter, m: BackupManifest, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<BackupManifest> {
    const v = await this.step(emit, "verify-backup", () => db.verifyBackup(m, progress, signal), (r) => r.detail);
    const updated: BackupManifest = { ...m, verified: v.ok, verifiedAt: new Date().toISOString(), verification: v.detail };
    await t.catalog.save(updated);
    if (!v.ok) throw new FlotillaError("VERIFY_FAILED", `backup ${m.id} failed verification: ${v.detail}`);
    return updated;
  }

  backup(req: { targetId: string; operationId: string; rolloutId: string; verify: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("backup", req.targetId, req.operationId, emit, { rolloutId: req.rolloutId }, async ({ id, t, progress }) => {
      const before = (await t.db.readRevisions()) ?? [];
      const m = await this.takeBackup(t, t.db, id, req.rolloutId, req.verify, emit, progress, signal);
      return { backup: m, revisionBefore: before, revisionAfter: before, message: `backup ${m.id} taken${m.verified ? " and verified" : ""}` };
    });
  }

  verifyBackup(req: { targetId: string; backupId: string; operationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("verify-backup", req.targetId, req.operationId, emit, { lock: false }, async ({ t, progress }) => {
      const m = await t.catalog.get(req.backupId);
      const updated = await this.verifyManifest(t, t.db, m, emit, progress, signal);
      return { backup: updated, message: `backup ${m.id} verified: ${updated.verification}` };
    });
  }

  async listBackups(targetId: string): Promise<BackupManifest[]> {
    return this.target(targetId).catalog.list();
  }

  // ---------------------------------------------------------------- apps

  private async assertNotHeld(t: TargetRuntime, db: DatabaseAdapter, checkApps: boolean): Promise<void> {
    if (checkApps) {
      const running = (await this.appStates(t)).filter((a) => a.state === "running" && (t.green === undefined || a.app.color !== "green"));
      if (running.length > 0) {
        refuse("APP_STILL_RUNNING", `app instance(s) ${running.map((a) => a.app.id).join(", ")} of ${t.config.id} are still running: stop them first (the maintenance strategy does this), or use the job strategy for additive migrations`);
      }
    }
    const holders = await db.holders();
    if (holders.length > 0) {
      const who = holders.slice(0, 5).map((h) => `pid ${h.pid} (${h.description}${h.state ? `, ${h.state}` : ""})`).join("; ");
      refuse("APP_STILL_RUNNING", `${db.displayName} is still held by ${holders.length} other ${t.config.kind === "sqlite" ? "process(es)" : "session(s)"}: ${who}. Stop the app on every host before migrating`);
    }
  }

  private async controlApps(t: TargetRuntime, which: "stop" | "start", color: string, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<string[]> {
    const apps = t.apps.filter((a) => color === "" || a.color === color);
    const done: string[] = [];
    for (const app of apps) {
      const r = await this.step(emit, `${which}:${app.id}`, () => (which === "stop" ? this.d.appControl.stop(app, progress, signal) : this.d.appControl.start(app, progress, signal)), (x) => x.detail);
      if (!r.ok) throw new FlotillaError(which === "stop" ? "APP_STILL_RUNNING" : "PRECONDITION_FAILED", r.detail);
      done.push(app.id);
    }
    return done;
  }

  stopApps(req: { targetId: string; operationId: string; color: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("stop-apps", req.targetId, req.operationId, emit, { lock: false, appsOnly: true }, async ({ t, progress }) => {
      const done = await this.controlApps(t, "stop", req.color, emit, progress, signal);
      return { message: done.length ? `stopped ${done.join(", ")}` : "no app instances of this target on this host", details: { apps: done.join(",") } };
    });
  }

  startApps(req: { targetId: string; operationId: string; color: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("start-apps", req.targetId, req.operationId, emit, { lock: false, appsOnly: true }, async ({ t, progress }) => {
      const done = await this.controlApps(t, "start", req.color, emit, progress, signal);
      return { message: done.length ? `started ${done.join(", ")}` : "no app instances of this target on this host", details: { apps: done.join(",") } };
    });
  }

  async health(targetId: string, color: string): Promise<{ apps: { id: string; color: string; state: AppState; detail: string }[]; healthy: boolean }> {
    const t = this.appRuntime(targetId);
    const states = (await this.appStates(t)).filter((a) => color === "" || a.app.color === color);
    // An instance without a health URL is "unknown": its start command succeeding is all we can know.
    return { apps: states.map((a) => ({ id: a.app.id, color: a.app.color, state: a.state, detail: a.detail })), healthy: states.every((a) => a.state === "running" || (a.state === "unknown" && !a.app.health)) };
  }

  // ---------------------------------------------------------------- restore

  /** Restores a verified backup and proves the database equals it. */
  private async restoreAndProve(db: DatabaseAdapter, m: BackupManifest, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<string[]> {
    await this.step(emit, "restore", () => db.restore(m, progress, signal), () => `from ${m.id}`);
    return this.step(emit, "verify-restore", async () => {
      const [revs, hash, counts] = await Promise.all([db.readRevisions(), db.schemaHash(), db.tableCounts()]);
      const problems: string[] = [];
      if (!sameSet(revs ?? [], m.revisions)) problems.push(`revision is ${(revs ?? []).join(",") || "none"}, backup has ${m.revisions.join(",") || "none"}`);
      if (hash !== m.schemaHash) problems.push("schema differs from the backup");
      for (const [table, n] of Object.entries(m.tableCounts)) if (counts[table] !== n) problems.push(`${table}: ${counts[table] ?? "missing"} rows, backup has ${n}`);
      for (const table of Object.keys(counts)) if (!(table in m.tableCounts)) problems.push(`unexpected table ${table}`);
      if (problems.length > 0) throw new FlotillaError("RESTORE_FAILED", `the restored database does not match backup ${m.id}: ${problems.join("; ")}`);
      return revs ?? [];
    }, () => "schema, row counts and revision match the backup");
  }

  restore(req: { targetId: string; backupId: string; operationId: string; manageApps: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("restore", req.targetId, req.operationId, emit, {}, async ({ id, t, progress, result }) => {
      const m = await t.catalog.get(req.backupId);
      if (!m.verified) refuse("BACKUP_UNVERIFIED", `backup ${m.id} has not passed verification (${m.verification}); verify it first or pick a verified one (flotilla backups ${t.config.id})`);
      this.d.journal.update(id, { backupId: m.id });
      result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
      const stopped = req.manageApps ? await this.controlApps(t, "stop", "", emit, progress, signal) : [];
      await this.assertNotHeld(t, t.db, !req.manageApps);
      const after = await this.restoreAndProve(t.db, m, emit, progress, signal);
      result.revisionAfter = after;
      if (stopped.length > 0) await this.controlApps(t, "start", "", emit, progress, signal);
      return { backup: m, message: `restored ${t.config.id} from ${m.id}; database verified at ${after.join(", ") || "no revision"}`, restored: true };
    });
  }

  // ---------------------------------------------------------------- migrate

  migrate(req: { targetId: string; toRevision: string; operationId: string; rolloutId: string; backupId: string; takeBackup: boolean; online: boolean; green: boolean; lockTimeoutMs: number }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("migrate", req.targetId, req.operationId, emit, { toRevision: req.toRevision || "head", rolloutId: req.rolloutId }, async ({ id, t, progress, result }) => {
      const side = req.green ? t.green : { db: t.db, alembic: t.alembic };
      if (!side) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.green database configured`);
      const { db, alembic } = side;
      // Preconditions: every refusal happens before anything changes.
      const graph = await alembic.graph();
      const target = resolveTarget(graph, req.toRevision);
      const before = (await db.readRevisions()) ?? [];
      result.revisionBefore = before;
      this.d.journal.update(id, { revisionBefore: before });
      const unknown = graph.unknown(before);
      if (unknown.length > 0) refuse("UNKNOWN_REVISION", this.skewMessage(t.config.id, unknown));
      if (before.length > 0 && graph.ancestorsOrSelf(before).has(target) && !before.includes(target)) {
        refuse("INVALID_ARGUMENT", `${target} is older than the database's revision ${before.join(", ")}: use flotilla downgrade ${t.config.id} --to ${target} --accept-data-loss`);
      }
      const pending = graph.pending(before, target);
      if (pending.length === 0) {
        return { revisionAfter: before, message: `${t.config.id} is already at ${target}; nothing to do` };
      }
      if (!req.backupId && !req.takeBackup) {
        refuse("BACKUP_UNVERIFIED", "no verified backup was taken in this operation: pass the id of a verified backup taken in this rollout, or ask the agent to take one (take_backup)");
      }
      const leftovers = (await db.listTables()).filter((n) => n.startsWith("_alembic_tmp_"));
      if (leftovers.length > 0) {
        refuse("PRECONDITION_FAILED", `leftover batch table(s) ${leftovers.join(", ")} from an earlier failed migration: the next attempt would fail with "table ... already exists". Restore the pre-migration backup (flotilla backups ${t.config.id}; flotilla restore) or run flotilla diagnose ${t.config.id}`);
      }
      if (!req.online) await this.assertNotHeld(t, db, !req.green);
      let backup: BackupManifest;
      if (req.backupId) {
        backup = await t.catalog.get(req.backupId);
        if (!backup.verified) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is not verified (${backup.verification}); a migration needs a verified backup taken in the same rollout`);
        if (req.rolloutId && backup.rolloutId !== req.rolloutId) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} was taken outside rollout ${req.rolloutId}; take a fresh one in this rollout`);
        if (!sameSet(backup.revisions, before)) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is at revision ${backup.revisions.join(",") || "none"} but the database is at ${before.join(",") || "none"}: take a fresh backup`);
        if (backup.source !== db.displayName) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is of ${backup.source}, not of ${db.displayName}`);
      } else if (req.takeBackup) {
        backup = await this.takeBackup(t, db, id, req.rolloutId, true, emit, progress, signal);
      } else {
        refuse("BACKUP_UNVERIFIED", "no verified backup was taken in this operation: pass the id of a verified backup taken in this rollout, or ask the agent to take one (take_backup)");
      }
      this.d.journal.update(id, { backupId: backup.id });
      result.backup = backup;
      const preSchema = await db.schemaHash();

      // Apply one revision at a time: per-revision timing and a precise failure point.
      const extraEnv: Record<string, string> = {
        [OPERATION_ENV]: id,
        ...(t.config.kind === "postgresql" ? { PGOPTIONS: `-c lock_timeout=${req.lockTimeoutMs > 0 ? req.lockTimeoutMs : t.config.lockTimeoutMs}` } : {}),
      };
      const timings: OpResult["timings"] = [];
      let failed: { run: AlembicRun; rev: string } | undefined;
      let outputTail = "";
      for (const rev of pending) {
        const msg = graph.revisions.get(rev)?.message ?? "";
        emit({ kind: "step", name: `upgrade:${rev}`, state: "running", detail: msg });
        // Long data migrations print nothing for minutes: say that they are alive, and whether the database is moving.
        const stepStart = performance.now();
        let lastLine = stepStart;
        let lastSize = await db.sizeBytes().catch(() => 0);
        const heartbeat = setInterval(() => {
          if (performance.now() - lastLine < this.d.heartbeatMs) return;
          void db.sizeBytes().catch(() => 0).then((size) => {
            const moved = size !== lastSize ? `database size ${Math.round(size / 1e6)} MB (changing)` : "database size unchanged";
            lastSize = size;
            progress({ source: "agent", line: `still running ${rev}: ${Math.round((performance.now() - stepStart) / 1000)}s elapsed, no output for ${Math.round((performance.now() - lastLine) / 1000)}s; ${moved}` });
          });
        }, this.d.heartbeatMs);
        heartbeat.unref();
        const run = await alembic.upgrade(rev, {
          extraEnv, timeoutMs: t.config.alembic.timeoutMs, ...(signal ? { signal } : {}),
          onLine: (line) => { lastLine = performance.now(); progress({ source: "alembic", line }); },
        }).finally(() => clearInterval(heartbeat));
        outputTail = tail(run.stderr);
        const from = timings.at(-1)?.to ?? (before.join(",") || "base");
        if (!run.ok) {
          emit({ kind: "step", name: `upgrade:${rev}`, state: "failed", detail: run.failure?.message ?? "", durationMs: run.durationMs });
          failed = { run, rev };
          break;
        }
        timings.push({ from, to: rev, durationMs: run.durationMs, message: msg });
        emit({ kind: "step", name: `upgrade:${rev}`, state: "succeeded", detail: msg, durationMs: run.durationMs });
      }
      result.timings = timings;
      result.outputTail = outputTail;

      if (failed) {
        const f = failed.run.failure;
        result.failureClass = f?.kind ?? "unknown";
        const now = (await db.readRevisions().catch(() => null)) ?? [];
        const schemaNow = await db.schemaHash().catch(() => "");
        const untouched = sameSet(now, before) && schemaNow === preSchema;
        let restored = false;
        if (!untouched) {
          progress({ source: "agent", line: `migration failed at ${failed.rev} with the database changed (${t.config.kind === "sqlite" ? "SQLite DDL is not transactional" : "earlier revisions committed"}); restoring backup ${backup.id}` });
          result.revisionAfter = await this.restoreAndProve(db, backup, emit, progress, signal);
          restored = true;
        } else {
          result.revisionAfter = now;
          progress({ source: "agent", line: "the database is unchanged (the failed revision rolled back): no restore needed" });
        }
        return {
          status: "failed", errorCode: "MIGRATION_FAILED", restored, failureClass: result.failureClass,
          message: `migration of ${t.config.id} failed at revision ${failed.rev} (${f?.kind ?? "unknown"}): ${f?.message ?? "alembic failed"}. ` +
            (restored ? `The database was restored from backup ${backup.id} and verified identical to it.` : "The database is unchanged.") +
            (f?.hint ? ` ${f.hint}` : ""),
        };
      }

      let after: string[];
      try {
        after = await this.step(emit, "verify", async () => {
          const revs = (await db.readRevisions()) ?? [];
          if (!revs.includes(target)) throw new FlotillaError("MIGRATION_FAILED", `after the migration the database reports ${revs.join(",") || "no revision"}, not ${target}`);
          const ic = await db.integrityCheck();
          if (!ic.ok) throw new FlotillaError("MIGRATION_FAILED", `integrity check failed after the migration: ${ic.detail}`);
          return revs;
        }, (revs) => `at ${revs.join(",")}, integrity ok`);
      } catch (err) {
        // Alembic said yes but the database does not prove it: go back to the verified backup.
        const why = toFlotillaError(err).message;
        progress({ source: "agent", line: `post-migration verification failed (${why}); restoring backup ${backup.id}` });
        result.revisionAfter = await this.restoreAndProve(db, backup, emit, progress, signal);
        return { status: "failed", errorCode: "MIGRATION_FAILED", restored: true, failureClass: "verify", message: `${why}. The database was restored from backup ${backup.id} and verified identical to it.` };
      }
      result.revisionAfter = after;
      this.d.journal.update(id, { revisionAfter: after });
      const total = timings.reduce((a, b) => a + b.durationMs, 0);
      return { message: `${t.config.id} migrated ${before.join(",") || "base"} → ${target} (${timings.length} revision(s), ${(total / 1000).toFixed(1)}s); backup ${backup.id} kept` };
    });
  }

  rehearse(req: { targetId: string; toRevision: string; operationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("rehearse", req.targetId, req.operationId, emit, { toRevision: req.toRevision || "head", lock: false }, async ({ t, progress, result }) => {
      const graph = await t.alembic.graph();
      const target = resolveTarget(graph, req.toRevision);
      const copy = await this.step(emit, "copy", () => t.db.scratchCopy(progress, signal), () => "throwaway copy made");
      try {
        const alembic = t.alembicFor(copy.url);
        const before = (await copy.adapter.readRevisions()) ?? [];
        result.revisionBefore = before;
        const unknown = graph.unknown(before);
        if (unknown.length > 0) refuse("UNKNOWN_REVISION", this.skewMessage(t.config.id, unknown));
        const timings: OpResult["timings"] = [];
        for (const rev of graph.pending(before, target)) {
          const run = await alembic.upgrade(rev, { timeoutMs: t.config.alembic.timeoutMs, ...(signal ? { signal } : {}), onLine: (line) => progress({ source: "alembic", line }) });
          if (!run.ok) {
            result.timings = timings;
            return { status: "failed", errorCode: "MIGRATION_FAILED", failureClass: run.failure?.kind ?? "unknown", outputTail: tail(run.stderr),
              message: `rehearsal failed at ${rev}: ${run.failure?.message ?? "alembic failed"} (the live database was not touched)` };
          }
          timings.push({ from: timings.at(-1)?.to ?? (before.join(",") || "base"), to: rev, durationMs: run.durationMs, message: graph.revisions.get(rev)?.message ?? "" });
        }
        const ic = await copy.adapter.integrityCheck();
        result.revisionAfter = (await copy.adapter.readRevisions()) ?? [];
        const total = timings.reduce((a, b) => a + b.durationMs, 0);
        return { timings, status: ic.ok ? "succeeded" : "failed", errorCode: ic.ok ? "" : "MIGRATION_FAILED",
          message: `rehearsal on a throwaway copy reached ${target} in ${(total / 1000).toFixed(1)}s over ${timings.length} revision(s); integrity ${ic.ok ? "ok" : ic.detail}` };
      } finally {
        await copy.drop().catch(() => undefined);
      }
    });
  }

  downgrade(req: { targetId: string; toRevision: string; operationId: string; acceptDataLoss: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("downgrade", req.targetId, req.operationId, emit, { toRevision: req.toRevision }, async ({ id, t, progress, result }) => {
      if (!req.acceptDataLoss) {
        refuse("DATA_LOSS_NOT_ACCEPTED", "a downgrade drops the columns and tables later revisions added, with their data; confirm with --accept-data-loss (a backup is taken first)");
      }
      const graph = await t.alembic.graph();
      const before = (await t.db.readRevisions()) ?? [];
      result.revisionBefore = before;
      const unknown = graph.unknown(before);
      if (unknown.length > 0) refuse("UNKNOWN_REVISION", this.skewMessage(t.config.id, unknown));
      const target = req.toRevision === "base" ? "base" : resolveTarget(graph, req.toRevision);
      if (target !== "base" && !graph.ancestorsOrSelf(before).has(target)) refuse("INVALID_ARGUMENT", `${target} is not older than the database's revision ${before.join(",")}; to move forward use a rollout`);
      if (target !== "base" && before.includes(target)) return { revisionAfter: before, message: `${t.config.id} is already at ${target}` };
      await this.assertNotHeld(t, t.db, true);
      const backup = await this.takeBackup(t, t.db, id, "", true, emit, progress, signal);
      result.backup = backup;
      emit({ kind: "step", name: `downgrade:${target}`, state: "running", detail: "" });
      const run = await t.alembic.downgrade(target, { extraEnv: { [OPERATION_ENV]: id }, timeoutMs: t.config.alembic.timeoutMs, ...(signal ? { signal } : {}), onLine: (line) => progress({ source: "alembic", line }) });
      result.outputTail = tail(run.stderr);
      if (!run.ok) {
        emit({ kind: "step", name: `downgrade:${target}`, state: "failed", detail: run.failure?.message ?? "", durationMs: run.durationMs });
        result.revisionAfter = await this.restoreAndProve(t.db, backup, emit, progress, signal);
        return { status: "failed", errorCode: "MIGRATION_FAILED", failureClass: run.failure?.kind ?? "unknown", restored: true,
          message: `downgrade failed: ${run.failure?.message ?? "alembic failed"}; the database was restored from ${backup.id} and verified` };
      }
      emit({ kind: "step", name: `downgrade:${target}`, state: "succeeded", detail: "", durationMs: run.durationMs });
      result.revisionAfter = (await t.db.readRevisions()) ?? [];
      return { message: `${t.config.id} downgraded to ${target}; backup ${backup.id} holds the data from before` };
    });
  }

  stamp(req: { targetId: string; revision: string; operationId: string; reason: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("stamp", req.targetId, req.operationId, emit, { toRevision: req.revision }, async ({ id, t, progress, result }) => {
      if (!(STAMP_REASONS as readonly string[]).includes(req.reason)) {
        refuse("STAMP_REFUSED", `stamp only records a revision without changing the schema, so it is never a repair for a failed migration (restore the pre-migration backup instead). Allowed reasons: ${STAMP_REASONS.join(", ")}`);
      }
      if (req.revision === "head" || req.revision === "heads") refuse("STAMP_REFUSED", "stamping \"head\" is refused: name the exact revision whose schema is provably present");
      const graph = await t.alembic.graph();
      const rev = resolveTarget(graph, req.revision);
      const before = await t.db.readRevisions();
      result.revisionBefore = before ?? [];
      const unknown = graph.unknown(before ?? []);
      let purge = false;
      if (req.reason === "created-with-create-all") {
        if (before !== null && before.length > 0) refuse("STAMP_REFUSED", `the database already records revision ${before.join(",")}: created-with-create-all is for databases without Alembic history`);
      } else if (req.reason === "imported-backup") {
        purge = unknown.length > 0;
      } else {
        // applied-by-hand: one step forward, after its objects were created by hand.
        const node = graph.revisions.get(rev)!;
        if (!before || !node.down.every((d) => before.includes(d))) {
          refuse("STAMP_REFUSED", `applied-by-hand stamps exactly one revision forward: ${rev} follows ${node.down.join(",") || "base"}, but the database is at ${before?.join(",") || "no revision"}`);
        }
      }
      await this.assertNotHeld(t, t.db, true);
      const backup = await this.takeBackup(t, t.db, id, "", true, emit, progress, signal);
      result.backup = backup;
      const run = await t.alembic.stamp(rev, { purge, timeoutMs: 120_000, ...(signal ? { signal } : {}), onLine: (line) => progress({ source: "alembic", line }) });
      result.outputTail = tail(run.stderr);
      if (!run.ok) return { status: "failed", errorCode: "ALEMBIC_FAILED", failureClass: run.failure?.kind ?? "", message: `stamp failed: ${run.failure?.message ?? ""}` };
      result.revisionAfter = (await t.db.readRevisions()) ?? [];
      return { message: `${t.config.id} stamped at ${rev} (reason: ${req.reason}); no schema was changed; backup ${backup.id} taken first` };
    });
  }

  // ---------------------------------------------------------------- blue-green

  clone(req: { targetId: string; operationId: string; rolloutId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("clone", req.targetId, req.operationId, emit, { rolloutId: req.rolloutId }, async ({ t, progress, result }) => {
      if (!t.green) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.green database configured`);
      const held = await t.green.db.holders();
      if (held.length > 0) refuse("APP_STILL_RUNNING", `the green database ${t.green.db.displayName} is in use (pid ${held.map((h) => h.pid).join(", ")}): stop the green instances first`);
      result.revisionBefore = (await t.db.readRevisions()) ?? [];
      await this.step(emit, "clone", () => t.db.cloneTo(t.green!.db, progress, signal), () => `copied to ${t.green!.db.displayName}`);
      const [a, b] = await Promise.all([t.db.readRevisions(), t.green.db.readRevisions()]);
      result.revisionAfter = b ?? [];
      const ic = await t.green.db.integrityCheck();
      if (!ic.ok) throw new FlotillaError("VERIFY_FAILED", `the green copy failed its integrity check: ${ic.detail}`);
      return { message: `cloned ${t.config.id} (at ${(a ?? []).join(",") || "none"}) to green ${t.green.db.displayName}` };
    });
  }

  switchTraffic(req: { targetId: string; operationId: string; color: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("switch", req.targetId, req.operationId, emit, { lock: false }, async ({ t, progress }) => {
      if (req.color !== "blue" && req.color !== "green") refuse("INVALID_ARGUMENT", `switch color must be blue or green, not "${req.color}"`);
      const sw = t.config.blueGreen?.switch;
      if (!sw) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.switch hook configured`);
      const r = await this.step(emit, `switch:${req.color}`, () => this.d.runHook([...sw, req.color], (line) => progress({ source: "hook", line }), signal), (x) => x.detail);
      if (!r.ok) throw new FlotillaError("PRECONDITION_FAILED", `switch hook failed: ${r.detail}`);
      return { message: `traffic for ${t.config.id} switched to ${req.color}` };
    });
  }

  // ---------------------------------------------------------------- recovery

  recover(req: { targetId: string; operationId: string; action: string; newOperationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return this.run("recover", req.targetId, req.newOperationId, emit, { lock: false }, async ({ id, t, progress, result }) => {
      const op = this.d.journal.get(req.operationId);
      if (!op || op.targetId !== t.config.id) refuse("NOT_FOUND", `operation ${req.operationId} is not in this agent's journal for ${t.config.id}`);
      if (op.state !== "interrupted") refuse("PRECONDITION_FAILED", `operation ${op.id} is ${op.state}, not interrupted: nothing to recover`);
      if (req.action !== "restore" && req.action !== "accept") refuse("INVALID_ARGUMENT", `recover action must be "restore" or "accept", not "${req.action}"`);
      this.d.journal.transferLock(t.config.id, op.id, id);
      await killOrphans([op.id]);
      result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
      const release = (state: "recovered"): void => this.d.journal.finish(op.id, state, { message: `resolved by ${id} (${req.action})` });
      if (req.action === "accept") {
        const graph = await t.alembic.graph();
        const want = op.toRevision ? resolveTarget(graph, op.toRevision) : "";
        const now = result.revisionBefore;
        const ic = await t.db.integrityCheck();
        const leftovers = (await t.db.listTables()).filter((n) => n.startsWith("_alembic_tmp_"));
        if (!want || !now.includes(want) || !ic.ok || leftovers.length > 0) {
          this.d.journal.transferLock(t.config.id, id, op.id);
          refuse("PRECONDITION_FAILED", `cannot accept: the database is at ${now.join(",") || "no revision"} (wanted ${want || "unknown"}), integrity ${ic.ok ? "ok" : "failed"}${leftovers.length ? `, leftover ${leftovers.join(",")}` : ""}; recover with action "restore" instead`);
        }
        release("recovered");
        result.revisionAfter = now;
        return { message: `accepted ${t.config.id} at ${want} after interrupted ${op.kind} ${op.id}: revision and integrity verified` };
      }
      if (!op.backupId) {
        // Nothing had been changed yet if no backup had been recorded (backup comes before any change).
        release("recovered");
        result.revisionAfter = result.revisionBefore;
        return { message: `interrupted ${op.kind} ${op.id} had not taken its backup yet, so it had changed nothing; lock released` };
      }
      const m = await t.catalog.get(op.backupId);
      if (!m.verified) {
        const v = await t.db.verifyBackup(m, progress, signal);
        if (!v.ok) refuse("BACKUP_UNVERIFIED", `the backup of interrupted operation ${op.id} (${m.id}) does not verify: ${v.detail}. Restore another backup by hand (flotilla restore)`);
      }
      await this.assertNotHeld(t, t.db, false);
      result.backup = m;
      result.revisionAfter = await this.restoreAndProve(t.db, m, emit, progress, signal);
      release("recovered");
      return { restored: true, message: `restored ${t.config.id} from ${m.id} after interrupted ${op.kind} ${op.id}; verified identical to the backup` };
    });
  }

  getOperation(id: string): ReturnType<SqliteJournal["get"]> {
    return this.d.journal.get(id);
  }

  listOperations(targetId: string | undefined, limit: number): ReturnType<SqliteJournal["list"]> {
    return this.d.journal.list(targetId, limit);
  }
}
