import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { FlotillaError, isUsageError, toFlotillaError, type ErrorCode } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import type { AgentConfig, AgentTarget } from "../config.js";
import type {
  AlembicPort,
  AppControlPort,
  AppInstance,
  AppState,
  BackupCatalogPort,
  BackupManifest,
  DatabaseAdapter,
  JournalPort,
  ProgressFn,
  VerifyResult,
} from "../core/ports.js";
import { saveOutput } from "./output-log.js";
import { appVersionOf, readAppVersion, restoreCompanionsOf, takeCompanions, verifyCompanionsOf } from "./app-state.js";

/** What an operation streams to its caller. */
export type OpEvent =
  | {
      kind: "progress";
      source: string;
      line: string;
      bytesDone?: number;
      bytesTotal?: number;
      /** Alembic progress: revision n of N (1-based), the revision, elapsed and estimated remaining time. */
      revisionIndex?: number;
      revisionCount?: number;
      revision?: string;
      elapsedMs?: number;
      etaMs?: number;
      /** Move progress: table n of N (1-based), rows of that table, copy rate. */
      table?: string;
      tableIndex?: number;
      tableCount?: number;
      rowsDone?: number;
      rowsTotal?: number;
      bytesPerSecond?: number;
    }
  | { kind: "step"; name: string; state: "running" | "succeeded" | "failed" | "skipped"; detail: string; durationMs?: number }
  | { kind: "result"; result: OpResult };

/** What an operation did to its database (OperationResult.effect). */
export type OpEffect = "" | "none" | "changed" | "restored" | "needs-restore" | "up-to-date";

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
  effect: OpEffect;
  blockingSessions: string[];
}

export type Emit = (e: OpEvent) => void;

/** Everything the agent knows about one target at run time. */
export interface TargetRuntime {
  readonly config: AgentTarget;
  readonly db: DatabaseAdapter;
  readonly alembic: AlembicPort;
  readonly green?: { readonly db: DatabaseAdapter; readonly alembic: AlembicPort };
  readonly catalog: BackupCatalogPort;
  /** App instances of this target configured on this host. */
  readonly apps: readonly AppInstance[];
  /** Builds an AlembicPort for another database URL of this target (rehearsal copies). */
  alembicFor(url: string): AlembicPort;
}

export interface OperationsDeps {
  readonly config: AgentConfig;
  readonly targets: ReadonlyMap<string, TargetRuntime>;
  readonly journal: JournalPort;
  readonly appControl: AppControlPort;
  readonly log: Logger;
  /** Silence after which a running Alembic step reports that it is still alive. */
  readonly heartbeatMs: number;
  readonly runHook: (argv: readonly string[], onLine: (l: string) => void, signal?: AbortSignal) => Promise<{ ok: boolean; detail: string }>;
  /** Whether a file exists (alembic.ini for diagnose). */
  readonly fileExists: (path: string) => boolean;
  /** Finds and kills child processes left by the given operations (after a crash). */
  readonly killOrphans: (operationIds: readonly string[]) => Promise<number[]>;
}

/** Set in the environment of every child an operation starts, so a restarted agent can find and stop orphans. */
export const OPERATION_ENV = "FLOTILLA_OPERATION_ID";

const OP_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** A refusal: thrown before the first change, reported as status "refused". */
export class Refusal extends FlotillaError {}

export function refuse(code: ErrorCode, message: string): never {
  throw new Refusal(code, message);
}

export function tail(text: string, lines = 30): string {
  return text.split("\n").slice(-lines).join("\n");
}

export function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join(",") === [...b].sort().join(",");
}

export interface RunContext {
  id: string;
  t: TargetRuntime;
  progress: ProgressFn;
  result: Partial<OpResult>;
}

/**
 * What every verb group shares: the target lookup, the journaled operation
 * frame, steps, backups, app control and restore-and-prove. The verbs
 * themselves live one group per file beside this one.
 */
export class OperationContext {
  constructor(readonly deps: OperationsDeps) {}

  target(id: string): TargetRuntime {
    const runtime = this.deps.targets.get(id);
    if (!runtime) {
      const known = [...this.deps.targets.keys()].join(", ");
      throw new FlotillaError("NOT_FOUND", `this agent has no target "${id}" (it has: ${known || "none"})`);
    }
    return runtime;
  }

  /**
   * The runtime of a target for app-instance operations: the full runtime when
   * the target is local, or just the app instances when this host only runs
   * apps of a target another agent owns (a shared PostgreSQL database).
   */
  appRuntime(id: string): TargetRuntime {
    const local = this.deps.targets.get(id);
    if (local) return local;
    const apps = this.deps.config.apps.filter((a) => a.target === id);
    if (apps.length === 0) return this.target(id);
    return { apps, config: { id } } as unknown as TargetRuntime;
  }

  async appStates(t: TargetRuntime): Promise<{ app: AppInstance; state: AppState; detail: string }[]> {
    return Promise.all(t.apps.map(async (app) => ({ app, ...(await this.deps.appControl.state(app)) })));
  }

  skewMessage(targetId: string, unknown: readonly string[]): string {
    return (
      `the database of ${targetId} is at revision ${unknown.join(", ")}, which the app's migrations do not contain ` +
      "(version skew: it was migrated by a newer or different build). Run the code that matches the database, or restore a backup taken before; never stamp over it"
    );
  }

  /**
   * Runs `body` as a journaled operation under the target's lock. Refusals
   * (thrown before the first change) leave nothing behind but a refused row.
   */
  async run(
    kind: string,
    targetId: string,
    requestedId: string,
    emit: Emit,
    init: { toRevision?: string; rolloutId?: string; lock?: boolean; appsOnly?: boolean },
    body: (ctx: RunContext) => Promise<Partial<OpResult> | void>,
  ): Promise<OpResult> {
    const started = performance.now();
    const id = requestedId || randomUUID();
    const base: OpResult = {
      operationId: id,
      kind,
      status: "succeeded",
      errorCode: "",
      message: "",
      revisionBefore: [],
      revisionAfter: [],
      timings: [],
      failureClass: "",
      restored: false,
      outputTail: "",
      durationMs: 0,
      details: {},
      effect: "",
      blockingSessions: [],
    };
    const finish = (r: OpResult): OpResult => {
      r.durationMs = Math.round(performance.now() - started);
      r.message = redact(r.message);
      r.outputTail = redact(r.outputTail);
      saveOutput(this.deps.config.dataDir, r.operationId, r.outputTail);
      emit({ kind: "result", result: r });
      return r;
    };
    if (!OP_ID.test(id))
      return finish({ ...base, status: "refused", errorCode: "INVALID_ARGUMENT", message: `operation id "${id}" is not valid (letters, digits, . _ : -)` });
    let t: TargetRuntime;
    try {
      t = init.appsOnly ? this.appRuntime(targetId) : this.target(targetId);
      this.deps.journal.begin(
        { id, targetId, kind, ...(init.toRevision ? { toRevision: init.toRevision } : {}), ...(init.rolloutId ? { rolloutId: init.rolloutId } : {}) },
        init.lock !== false,
      );
    } catch (err) {
      const fe = toFlotillaError(err);
      return finish({ ...base, status: "refused", errorCode: fe.code, message: fe.message });
    }
    const log = this.deps.log.child({ op: id, kind, target: targetId });
    log.info("operation started");
    const progress: ProgressFn = (p) =>
      emit({
        kind: "progress",
        source: p.source ?? "agent",
        line: redact(p.line),
        ...(p.bytesDone !== undefined ? { bytesDone: p.bytesDone } : {}),
        ...(p.bytesTotal !== undefined ? { bytesTotal: p.bytesTotal } : {}),
      });
    const partial: Partial<OpResult> = {};
    try {
      const extra = await body({ id, t, progress, result: partial });
      const r: OpResult = { ...base, ...partial, ...(extra ?? {}) };
      const state = r.status === "succeeded" ? "succeeded" : r.status === "refused" ? "refused" : "failed";
      // A changed database that could not be restored keeps the target locked until Recover.
      if (r.effect === "needs-restore") this.deps.journal.hold(id, { errorCode: r.errorCode, message: redact(r.message), revisionAfter: r.revisionAfter });
      else this.deps.journal.finish(id, state, { errorCode: r.errorCode, message: redact(r.message), revisionAfter: r.revisionAfter });
      log.info({ status: r.status, code: r.errorCode, effect: r.effect }, "operation finished");
      return finish(r);
    } catch (err) {
      const fe = toFlotillaError(err);
      // Anything thrown as a refusal, or a usage-class error, happened before the first change.
      const refused = err instanceof Refusal || isUsageError(fe.code);
      const r: OpResult = { ...base, ...partial, status: refused ? "refused" : "failed", errorCode: fe.code, message: fe.message };
      if (refused && r.effect === "") r.effect = "none";
      this.deps.journal.finish(id, refused ? "refused" : "failed", { errorCode: fe.code, message: redact(fe.message), revisionAfter: r.revisionAfter });
      if (refused) log.info({ code: fe.code }, "operation refused");
      else log.error({ err: fe }, "operation failed");
      return finish(r);
    }
  }

  step<T>(emit: Emit, name: string, fn: () => Promise<T>, detail: (v: T) => string = () => ""): Promise<T> {
    const s = performance.now();
    emit({ kind: "step", name, state: "running", detail: "" });
    return fn().then(
      (v) => {
        emit({ kind: "step", name, state: "succeeded", detail: detail(v), durationMs: Math.round(performance.now() - s) });
        return v;
      },
      (e: unknown) => {
        emit({ kind: "step", name, state: "failed", detail: redact(toFlotillaError(e).message), durationMs: Math.round(performance.now() - s) });
        throw e;
      },
    );
  }

  // ---------------------------------------------------------------- backups

  async takeBackup(
    t: TargetRuntime,
    db: DatabaseAdapter,
    opId: string,
    rolloutId: string,
    verify: boolean,
    emit: Emit,
    progress: ProgressFn,
    signal?: AbortSignal,
  ): Promise<BackupManifest> {
    await t.catalog.prepare();
    const size = await db.sizeBytes().catch(() => 0);
    const free = await db.freeBytes(t.config.backups.dir).catch(() => Number.MAX_SAFE_INTEGER);
    if (free < size * 1.1 + 16 * 1024 * 1024) {
      refuse(
        "PRECONDITION_FAILED",
        `not enough free space in ${t.config.backups.dir}: ${Math.round(free / 1e6)} MB free, the database is ${Math.round(size / 1e6)} MB. Free some space or prune old backups`,
      );
    }
    const { id, path } = t.catalog.newBackup();
    let manifest: BackupManifest;
    try {
      const { proof, ...artifact } = await this.step(
        emit,
        "backup",
        () => db.backup(path, progress, signal),
        (a) => `${id}: ${a.sizeBytes} bytes, sha256 ${a.sha256.slice(0, 12)}…`,
      );
      const companions =
        (t.config.backups.include ?? []).length === 0 || db !== t.db
          ? {}
          : await this.step(
              emit,
              "backup-companions",
              () => takeCompanions(t, db, id, progress, signal),
              (c) =>
                `${c.companions?.length ?? 0} path(s), ${c.companionBytes ?? 0} bytes, ${c.companionNewBytes ?? 0} written (the rest shared with the previous backup)`,
            );
      const appVersion = await readAppVersion(this, t, signal);
      manifest = {
        ...artifact,
        id,
        targetId: t.config.id,
        kind: t.config.kind,
        createdAt: new Date().toISOString(),
        source: db.displayName,
        operationId: opId,
        rolloutId,
        verified: false,
        verifiedAt: "",
        verification: "not verified yet",
        ...companions,
        ...appVersionOf(appVersion),
      };
      await t.catalog.save(manifest);
      // The backup step's own check of the finished file is this verification: no second read of it.
      if (verify) manifest = await this.verifyManifest(t, db, manifest, emit, progress, signal, false, proof);
    } catch (err) {
      // Disk full, a failed verification, a cancel: the folder keeps only complete, verified backups.
      await t.catalog.discard(id);
      throw err;
    }
    // Recorded once the backup is complete (and verified when asked): recover restores only such a backup.
    this.deps.journal.update(opId, { backupId: id });
    const recent = this.deps.journal.list(t.config.id, 200);
    // Protected: backups of running or interrupted operations, of the latest migration (a rollback restores it),
    // and a rollout's backups until that rollout has migrated this target (a gated or paused rollout still needs them; 7 days at most).
    const lastMigrate = recent.find((o) => o.kind === "migrate" && o.backupId !== "");
    const migrated = new Set(recent.filter((o) => o.kind === "migrate" && o.rolloutId !== "" && o.state !== "running").map((o) => o.rolloutId));
    const awaiting = (await t.catalog.list())
      .filter((m) => m.rolloutId !== "" && !migrated.has(m.rolloutId) && Date.now() - Date.parse(m.createdAt) < 7 * 86_400_000)
      .map((m) => m.id);
    const protect = new Set<string>([
      id,
      ...recent.filter((o) => o.state === "interrupted" || o.state === "needs-restore" || o.state === "running").map((o) => o.backupId),
      ...(lastMigrate ? [lastMigrate.backupId] : []),
      ...awaiting,
    ]);
    const pruned = await t.catalog.prune(t.config.backups.keep, protect, t.config.backups.keepDays);
    if (pruned.length > 0) progress({ source: "backup", line: `retention: removed ${pruned.length} old backup(s) (keep ${t.config.backups.keep})` });
    return manifest;
  }

  /**
   * `full`: companion files shared with earlier backups are re-hashed too (explicit verifications, drills).
   * `proof`: the check the backup step just ran on the finished artifact (BackupArtifact.proof), used instead of reading it again.
   */
  async verifyManifest(
    t: TargetRuntime,
    db: DatabaseAdapter,
    m: BackupManifest,
    emit: Emit,
    progress: ProgressFn,
    signal?: AbortSignal,
    full = true,
    proof?: VerifyResult,
  ): Promise<BackupManifest> {
    const v = await this.step(
      emit,
      "verify-backup",
      async () => {
        const main = proof ?? (await db.verifyBackup(m, progress, signal));
        const files = await verifyCompanionsOf(m, full, signal);
        return { ok: main.ok && files.ok, detail: [main.detail, files.detail].filter((x) => x !== "").join("; ") };
      },
      (r) => r.detail,
    );
    const updated: BackupManifest = { ...m, verified: v.ok, verifiedAt: new Date().toISOString(), verification: v.detail };
    await t.catalog.save(updated);
    if (!v.ok) throw new FlotillaError("VERIFY_FAILED", `backup ${m.id} failed verification: ${v.detail}`);
    return updated;
  }

  /** Restores a verified backup and proves the database equals it. */
  async restoreAndProve(db: DatabaseAdapter, m: BackupManifest, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<string[]> {
    await this.step(
      emit,
      "restore",
      async () => {
        await db.restore(m, progress, signal);
        await restoreCompanionsOf(m, progress, signal);
      },
      () => `from ${m.id}${m.companions?.length ? ` with ${m.companions.length} companion path(s)` : ""}`,
    );
    return this.step(
      emit,
      "verify-restore",
      async () => {
        const [revs, hash, counts] = await Promise.all([db.readRevisions(), db.schemaHash(), db.tableCounts()]);
        const problems: string[] = [];
        if (!sameSet(revs ?? [], m.revisions)) problems.push(`revision is ${(revs ?? []).join(",") || "none"}, backup has ${m.revisions.join(",") || "none"}`);
        if (hash !== m.schemaHash) problems.push("schema differs from the backup");
        for (const [table, n] of Object.entries(m.tableCounts))
          if (counts[table] !== n) problems.push(`${table}: ${counts[table] ?? "missing"} rows, backup has ${n}`);
        for (const table of Object.keys(counts)) if (!(table in m.tableCounts)) problems.push(`unexpected table ${table}`);
        if (problems.length > 0) throw new FlotillaError("RESTORE_FAILED", `the restored database does not match backup ${m.id}: ${problems.join("; ")}`);
        return revs ?? [];
      },
      () => "schema, row counts and revision match the backup",
    );
  }

  // ---------------------------------------------------------------- apps

  async assertNotHeld(t: TargetRuntime, db: DatabaseAdapter, checkApps: boolean): Promise<void> {
    if (checkApps) {
      const running = (await this.appStates(t)).filter((a) => a.state === "running" && (t.green === undefined || a.app.color !== "green"));
      if (running.length > 0) {
        refuse(
          "APP_STILL_RUNNING",
          `app instance(s) ${running.map((a) => a.app.id).join(", ")} of ${t.config.id} are still running: stop them first (the maintenance strategy does this), or use the job strategy for additive migrations`,
        );
      }
    }
    const holders = await db.holders();
    if (holders.length > 0) {
      const who = holders
        .slice(0, 5)
        .map((h) => `pid ${h.pid} (${h.description}${h.state ? `, ${h.state}` : ""})`)
        .join("; ");
      refuse(
        "APP_STILL_RUNNING",
        `${db.displayName} is still held by ${holders.length} other ${t.config.kind === "sqlite" ? "process(es)" : "session(s)"}: ${who}. Stop the app on every host before migrating`,
      );
    }
  }

  async controlApps(t: TargetRuntime, which: "stop" | "start", color: string, emit: Emit, progress: ProgressFn, signal?: AbortSignal): Promise<string[]> {
    const apps = t.apps.filter((a) => color === "" || a.color === color);
    const done: string[] = [];
    for (const app of apps) {
      const r = await this.step(
        emit,
        `${which}:${app.id}`,
        () => (which === "stop" ? this.deps.appControl.stop(app, progress, signal) : this.deps.appControl.start(app, progress, signal)),
        (x) => x.detail,
      );
      if (!r.ok) throw new FlotillaError(which === "stop" ? "APP_STILL_RUNNING" : "PRECONDITION_FAILED", r.detail);
      done.push(app.id);
    }
    return done;
  }
}
