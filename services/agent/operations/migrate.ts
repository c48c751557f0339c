import { restoreCompanionsIfChanged } from "./app-state.js";
import { FlotillaError, toFlotillaError } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import { revisionTimeline, type TimedStep } from "../core/alembic-output.js";
import { MigrationProgress } from "../core/migration-progress.js";
import type { AlembicPort, AlembicRun, BackupManifest, DatabaseAdapter, GraphView, OperationRow, ProgressFn } from "../core/ports.js";
import {
  afterFailure,
  decideInterruptedMigration,
  guardMigration,
  onUpgradePath,
  resolveMigration,
  snapshotChanges,
  type DatabaseSnapshot,
} from "../core/safety-policy.js";
import { OPERATION_ENV, refuse, sameSet, tail, type Emit, type OperationContext, type OpResult, type RunContext, type TargetRuntime } from "./context.js";

/** Schema-moving verbs: migrate, rehearse, downgrade. Each runs Alembic once for the whole range. */

interface TrackedRun {
  readonly run: AlembicRun;
  readonly done: TimedStep[];
  readonly failedAt: TimedStep | null;
}

/**
 * One `alembic upgrade|downgrade TARGET` process for the whole range. Its
 * `Running …` lines become per-revision steps, revision n/N progress with an
 * estimate (from remembered durations), timings and the failure point. A
 * heartbeat says the run is alive when a revision prints nothing for a while.
 */
async function runAlembic(
  ctx: OperationContext,
  o: {
    t: TargetRuntime;
    db: DatabaseAdapter;
    alembic: AlembicPort;
    graph: GraphView;
    direction: "upgrade" | "downgrade";
    target: string;
    pending: readonly string[];
    emit: Emit;
    progress: ProgressFn;
    signal: AbortSignal | undefined;
    extraEnv: Record<string, string>;
  },
): Promise<TrackedRun> {
  const { emit, progress, direction, pending } = o;
  const estimates = new Map([...ctx.deps.journal.timings(o.t.config.id, direction)].map(([id, timing]) => [id, timing.durationMs]));
  const started = performance.now();
  const tracker = new MigrationProgress(pending, direction, estimates, started);
  const lines: { line: string; atMs: number }[] = [];
  let running: { revision: string; at: number } | null = null;
  let lastLine = started;
  let lastSize: number | undefined;
  const heartbeat = setInterval(() => {
    const now = performance.now();
    if (now - lastLine < ctx.deps.heartbeatMs) return;
    // Long data migrations print nothing for minutes: say that they are alive, and whether the database is moving.
    void o.db
      .sizeBytes()
      .catch(() => 0)
      .then((size) => {
        const moved =
          lastSize === undefined
            ? `database size ${Math.round(size / 1e6)} MB`
            : size !== lastSize
              ? `database size ${Math.round(size / 1e6)} MB (changing)`
              : "database size unchanged";
        lastSize = size;
        const at = tracker.now(performance.now());
        const what = at ? at.revision : `alembic ${direction}`;
        emit({
          kind: "progress",
          source: "agent",
          line: `still running ${what}: ${Math.round((performance.now() - (running?.at ?? started)) / 1000)}s elapsed, no output for ${Math.round((performance.now() - lastLine) / 1000)}s; ${moved}${at ? ` (revision ${at.index}/${at.count})` : ""}`,
          ...(at ? { revisionIndex: at.index, revisionCount: at.count, revision: at.revision, elapsedMs: Math.round(at.elapsedMs), etaMs: at.etaMs } : {}),
        });
      });
  }, ctx.deps.heartbeatMs);
  heartbeat.unref();
  const onLine = (line: string): void => {
    const now = performance.now();
    lastLine = now;
    lines.push({ line, atMs: now });
    const p = tracker.onLine(line, now);
    if (p) {
      if (running) emit({ kind: "step", name: `${direction}:${running.revision}`, state: "succeeded", detail: "", durationMs: Math.round(now - running.at) });
      running = { revision: p.revision, at: now };
      emit({ kind: "step", name: `${direction}:${p.revision}`, state: "running", detail: p.message });
      emit({
        kind: "progress",
        source: "alembic",
        line: redact(line),
        revisionIndex: p.index,
        revisionCount: p.count,
        revision: p.revision,
        elapsedMs: Math.round(p.elapsedMs),
        etaMs: p.etaMs,
      });
      return;
    }
    progress({ source: "alembic", line });
  };
  const opts = { extraEnv: o.extraEnv, timeoutMs: o.t.config.alembic.timeoutMs, ...(o.signal ? { signal: o.signal } : {}), onLine };
  const run = await (direction === "upgrade" ? o.alembic.upgrade(o.target, opts) : o.alembic.downgrade(o.target, opts)).finally(() => clearInterval(heartbeat));
  const end = performance.now();
  const timeline = revisionTimeline(lines, { atMs: end, ok: run.ok }, new Set(o.graph.revisions.keys()));
  const last = running as { revision: string; at: number } | null;
  if (last) {
    emit({
      kind: "step",
      name: `${direction}:${last.revision}`,
      state: run.ok ? "succeeded" : "failed",
      detail: run.ok ? "" : (run.failure?.message ?? ""),
      durationMs: Math.round(end - last.at),
    });
  } else if (!run.ok) {
    emit({ kind: "step", name: `${direction}:${o.target}`, state: "failed", detail: run.failure?.message ?? "", durationMs: Math.round(end - started) });
  }
  return { run, done: timeline.done, failedAt: timeline.failedAt };
}

/** Per-revision timings as Alembic's Running lines give them: `from` → `to` (a downgrade's `to` is the revision below). */
function timingsOf(steps: readonly TimedStep[]): OpResult["timings"] {
  return steps.map((s) => ({ from: s.from.join(",") || "base", to: s.to, durationMs: Math.round(s.durationMs), message: s.message }));
}

/** The revision a timed step applied (upgrade) or removed (downgrade). */
function revisionOf(s: TimedStep, direction: "upgrade" | "downgrade"): string {
  return direction === "upgrade" ? s.to : (s.from[0] ?? s.to);
}

async function snapshot(db: DatabaseAdapter, withCounts: boolean): Promise<DatabaseSnapshot> {
  const [revisions, schemaHash, tableCounts] = await Promise.all([
    db.readRevisions(),
    db.schemaHash(),
    withCounts ? db.tableCounts() : Promise.resolve(undefined),
  ]);
  return { revisions: revisions ?? [], schemaHash, ...(tableCounts ? { tableCounts } : {}) };
}

/**
 * After a failed run: read the database, and restore only when the run left
 * a change behind. When PostgreSQL sessions would block the restore, the
 * operation is held as needs-restore (the target stays locked) naming them.
 */
async function settleFailure(
  ctx: OperationContext,
  o: {
    id: string;
    t: TargetRuntime;
    db: DatabaseAdapter;
    backup: BackupManifest;
    pre: DatabaseSnapshot;
    online: boolean;
    emit: Emit;
    progress: ProgressFn;
    signal: AbortSignal | undefined;
    result: Partial<OpResult>;
    what: string;
  },
): Promise<{ effect: OpResult["effect"]; restored: boolean; sentence: string }> {
  const { t, db, backup, progress } = o;
  const after = await snapshot(db, o.pre.tableCounts !== undefined).catch(() => undefined);
  const changes = after ? snapshotChanges(o.pre, after) : ["the database could not be read after the failure"];
  const holders = t.config.kind === "postgresql" && changes.length > 0 ? await db.holders().catch(() => []) : [];
  const described = holders.map((h) => `pid ${h.pid} (${h.description}${h.state ? `, ${h.state}` : ""})`);
  const decision = afterFailure({ changes, kind: t.config.kind, holders: described });
  if (decision.action === "none") {
    o.result.revisionAfter = after?.revisions ? [...after.revisions] : [];
    progress({ source: "agent", line: `${o.what} failed and left the database unchanged (revision, schema and row counts as before): no restore needed` });
    // Files beside the database (backups.include) are not transactional: put them back if they changed.
    if (db === t.db && (await restoreCompanionsIfChanged(t, backup, progress, o.signal))) {
      return {
        effect: "restored",
        restored: true,
        sentence: `The database is unchanged (the failed run rolled back); the companion files that changed were restored from backup ${backup.id}.`,
      };
    }
    return { effect: "none", restored: false, sentence: "The database is unchanged (the failed run rolled back); no restore was needed." };
  }
  const hold = (sessions: readonly string[], why: string): { effect: OpResult["effect"]; restored: boolean; sentence: string } => {
    o.result.blockingSessions = [...sessions];
    o.result.revisionAfter = after?.revisions ? [...after.revisions] : [];
    progress({ source: "agent", line: `the database changed (${changes.join("; ")}) but cannot be restored now: ${why}` });
    return {
      effect: "needs-restore",
      restored: false,
      sentence:
        `The database changed (${changes.join("; ")}) and must be restored from backup ${backup.id}, but ${why}. ` +
        `The target stays locked as needs-restore: end those sessions, then run flotilla recover ${t.config.id} --action restore.`,
    };
  };
  if (decision.action === "hold") return hold(decision.blockingSessions, `other sessions hold it: ${decision.blockingSessions.join("; ")}`);
  progress({ source: "agent", line: `${o.what} failed with the database changed (${changes.join("; ")}); restoring backup ${backup.id}` });
  try {
    o.result.revisionAfter = await ctx.restoreAndProve(db, backup, o.emit, progress, o.signal);
    return { effect: "restored", restored: true, sentence: `The database was restored from backup ${backup.id} and verified identical to it.` };
  } catch (err) {
    const again = t.config.kind === "postgresql" ? await db.holders().catch(() => []) : [];
    if (again.length > 0)
      return hold(
        again.map((h) => `pid ${h.pid} (${h.description}${h.state ? `, ${h.state}` : ""})`),
        "other sessions hold it",
      );
    return hold([], `the restore failed: ${toFlotillaError(err).message}`);
  }
}

export function migrate(
  ctx: OperationContext,
  req: {
    targetId: string;
    toRevision: string;
    operationId: string;
    rolloutId: string;
    backupId: string;
    takeBackup: boolean;
    online: boolean;
    green: boolean;
    lockTimeoutMs: number;
  },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run(
    "migrate",
    req.targetId,
    req.operationId,
    emit,
    { toRevision: req.toRevision || "head", rolloutId: req.rolloutId },
    async ({ id, t, progress, result }) => {
      const side = req.green ? t.green : { db: t.db, alembic: t.alembic };
      if (!side) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.green database configured`);
      const { db, alembic } = side;
      // Preconditions: every refusal happens before anything changes. The facts are read at once (the
      // guards' reads are cheap and wasted only when the revision check refuses or finds nothing to do).
      const guardFacts = Promise.all([
        db.listTables(),
        req.online ? Promise.resolve([]) : db.holders(),
        req.online || req.green ? Promise.resolve([]) : ctx.appStates(t),
        req.backupId ? t.catalog.get(req.backupId) : Promise.resolve(undefined),
      ]);
      guardFacts.catch(() => undefined);
      const [graph, current] = await Promise.all([alembic.graph(), db.readRevisions()]);
      const before = current ?? [];
      result.revisionBefore = before;
      ctx.deps.journal.update(id, { revisionBefore: before });
      const decision = resolveMigration({ targetId: t.config.id, graph, requested: req.toRevision, current, direction: "upgrade" });
      if (!decision.ok) refuse(decision.code, decision.message);
      if (decision.action === "up-to-date") return { revisionAfter: before, effect: "up-to-date", message: decision.message };
      const { target, pending } = decision;

      const [tables, holders, apps, given] = await guardFacts;
      const refusal = guardMigration({
        targetId: t.config.id,
        kind: t.config.kind,
        online: req.online,
        runningApps: apps.filter((a) => a.state === "running" && (t.green === undefined || a.app.color !== "green")).map((a) => a.app.id),
        holders: holders.map((h) => `pid ${h.pid} (${h.description}${h.state ? `, ${h.state}` : ""})`),
        leftoverTables: tables.filter((n) => n.startsWith("_alembic_tmp_")),
        backup: given
          ? {
              kind: "given",
              id: given.id,
              verified: given.verified,
              verification: given.verification,
              rolloutId: given.rolloutId,
              revisions: given.revisions,
              source: given.source,
            }
          : req.takeBackup
            ? { kind: "take" }
            : { kind: "none" },
        rolloutId: req.rolloutId,
        current: before,
        displayName: db.displayName,
      });
      if (refusal) refuse(refusal.code, refusal.message);
      const backup = given ?? (await ctx.takeBackup(t, db, id, req.rolloutId, true, emit, progress, signal));
      ctx.deps.journal.update(id, { backupId: backup.id });
      result.backup = backup;
      // What the database looks like now is what the verified backup holds (taken with the app stopped);
      // under the job strategy the app keeps writing, so row counts are not compared then.
      const pre: DatabaseSnapshot = { revisions: backup.revisions, schemaHash: backup.schemaHash, ...(req.online ? {} : { tableCounts: backup.tableCounts }) };

      const extraEnv: Record<string, string> = {
        [OPERATION_ENV]: id,
        ...(t.config.kind === "postgresql" ? { PGOPTIONS: `-c lock_timeout=${req.lockTimeoutMs > 0 ? req.lockTimeoutMs : t.config.lockTimeoutMs}` } : {}),
      };
      // The post-migration integrity check gets ready while Alembic runs (SQLite: its worker thread starts now).
      let startVerify: (go: boolean) => void = () => undefined;
      const verifyGate = new Promise<boolean>((resolve) => {
        startVerify = resolve;
      });
      const earlyCheck = db.integrityCheckAfter?.(verifyGate).catch(() => null);
      let tracked: TrackedRun;
      let succeeded = false;
      try {
        tracked = await runAlembic(ctx, { t, db, alembic, graph, direction: "upgrade", target, pending, emit, progress, signal, extraEnv });
        succeeded = tracked.run.ok;
      } finally {
        // The check reads the database only after Alembic has exited, and only after a successful run.
        startVerify(succeeded);
      }
      result.timings = timingsOf(tracked.done);
      result.outputTail = tail(tracked.run.stderr);
      ctx.deps.journal.recordTimings(
        t.config.id,
        tracked.done.map((s) => ({ revision: s.to, direction: "upgrade" as const, durationMs: s.durationMs, source: "migrate" as const })),
      );

      if (!tracked.run.ok) {
        const f = tracked.run.failure;
        result.failureClass = f?.kind ?? "unknown";
        const where = tracked.failedAt
          ? `revision ${tracked.failedAt.to} (${pending.indexOf(tracked.failedAt.to) + 1} of ${pending.length})`
          : "before the first revision started";
        const settled = await settleFailure(ctx, { id, t, db, backup, pre, online: req.online, emit, progress, signal, result, what: "the migration" });
        return {
          status: "failed",
          errorCode: "MIGRATION_FAILED",
          restored: settled.restored,
          effect: settled.effect,
          failureClass: result.failureClass,
          details: { failedRevision: tracked.failedAt?.to ?? "" },
          // The generic hint of an unclassified failure says to check and restore: already done here.
          message:
            `migration of ${t.config.id} failed at ${where} (${f?.kind ?? "unknown"}): ${f?.message ?? "alembic failed"}. ${settled.sentence}` +
            (f?.hint && (f.kind !== "unknown" || settled.effect === "needs-restore") ? ` ${f.hint}` : ""),
        };
      }

      let after: string[];
      try {
        after = await ctx.step(
          emit,
          "verify",
          async () => {
            const [revs, ic] = await Promise.all([db.readRevisions(), earlyCheck?.then((r) => r ?? db.integrityCheck()) ?? db.integrityCheck()]);
            if (!(revs ?? []).includes(target))
              throw new FlotillaError("MIGRATION_FAILED", `after the migration the database reports ${(revs ?? []).join(",") || "no revision"}, not ${target}`);
            if (!ic.ok) throw new FlotillaError("MIGRATION_FAILED", `integrity check failed after the migration: ${ic.detail}`);
            return revs ?? [];
          },
          (revs) => `at ${revs.join(",")}, integrity ok`,
        );
      } catch (err) {
        // Alembic said yes but the database does not prove it: go back to the verified backup.
        const why = toFlotillaError(err).message;
        progress({ source: "agent", line: `post-migration verification failed (${why}); restoring backup ${backup.id}` });
        result.revisionAfter = await ctx.restoreAndProve(db, backup, emit, progress, signal);
        return {
          status: "failed",
          errorCode: "MIGRATION_FAILED",
          restored: true,
          effect: "restored",
          failureClass: "verify",
          message: `${why}. The database was restored from backup ${backup.id} and verified identical to it.`,
        };
      }
      result.revisionAfter = after;
      ctx.deps.journal.update(id, { revisionAfter: after });
      const total = tracked.done.reduce((a, b) => a + b.durationMs, 0);
      return {
        effect: "changed",
        message: `${t.config.id} migrated ${before.join(",") || "base"} → ${target} (${tracked.done.length} revision(s), ${(total / 1000).toFixed(1)}s); backup ${backup.id} kept${backup.appVersion ? `; app version ${backup.appVersion}` : ""}`,
      };
    },
  );
}

/**
 * Recover action "forward": an online migration (job strategy) the agent was
 * cut off in goes on from the revision the database reached, so the rows the
 * app wrote meanwhile are kept. The facts are read here and the decision is
 * `decideInterruptedMigration`'s: "accept" when already at the wanted revision,
 * "resume-forward" runs `alembic upgrade <wanted>` again and verifies it, and
 * "restore" (or a forward run that fails or does not verify) is never carried
 * out here — a restore would drop the app's writes — but thrown with effect
 * needs-restore and the policy's plain message, so the caller gives the target's
 * lock back to the interrupted operation for a person to decide.
 * Call only with the interrupted operation's lock held and its orphans killed.
 */
export async function resumeMigrationForward(
  ctx: OperationContext,
  op: OperationRow,
  run: RunContext,
  emit: Emit,
  signal?: AbortSignal,
): Promise<Partial<OpResult>> {
  const { id, t, progress, result } = run;
  const { db, alembic } = t;
  const graph = await alembic.graph();
  const decided = resolveMigration({ targetId: t.config.id, graph, requested: op.toRevision, current: op.revisionBefore, direction: "upgrade" });
  const wanted = decided.ok ? decided.target : op.toRevision;
  const [nowRead, backup, ic, tables, apps, schemaHash] = await Promise.all([
    db.readRevisions(),
    op.backupId ? t.catalog.get(op.backupId) : Promise.resolve(undefined),
    db.integrityCheck(),
    db.listTables(),
    ctx.appStates(t),
    db.schemaHash(),
  ]);
  const now = nowRead ?? [];
  result.revisionBefore = now;
  result.revisionAfter = now;
  if (backup) result.backup = backup;
  const decision = decideInterruptedMigration({
    targetId: t.config.id,
    operation: op.kind,
    online: true,
    before: op.revisionBefore,
    wanted,
    now,
    onPath: decided.ok && onUpgradePath(graph, op.revisionBefore, now, wanted),
    partial: backup !== undefined && sameSet(now, backup.revisions) && schemaHash !== backup.schemaHash,
    intact: ic.ok && !tables.some((n) => n.startsWith("_alembic_tmp_")),
    runningApps: apps.filter((a) => a.state === "running" && a.app.color !== "green").map((a) => a.app.id),
    backupId: op.backupId,
  });
  // Before anything runs this is a refusal; after a forward run it is a failure. Either way nothing is restored here.
  const needsRestore = (message: string, ran = false): never => {
    result.effect = "needs-restore";
    progress({ source: "agent", line: message });
    if (ran) throw new FlotillaError("MIGRATION_FAILED", message);
    refuse("PRECONDITION_FAILED", message);
  };
  if (decision.action === "restore") needsRestore(`interrupted ${op.kind} ${op.id}: ${decision.message}`);
  if (decision.action === "accept")
    return { effect: "changed", revisionAfter: now, message: `interrupted ${op.kind} ${op.id}: ${decision.message}; integrity verified` };

  progress({ source: "agent", line: `interrupted ${op.kind} ${op.id}: ${decision.message}` });
  const pending = graph.pending(now, wanted);
  const extraEnv: Record<string, string> = {
    [OPERATION_ENV]: id,
    ...(t.config.kind === "postgresql" ? { PGOPTIONS: `-c lock_timeout=${t.config.lockTimeoutMs}` } : {}),
  };
  const tracked = await runAlembic(ctx, { t, db, alembic, graph, direction: "upgrade", target: wanted, pending, emit, progress, signal, extraEnv });
  result.timings = timingsOf(tracked.done);
  result.outputTail = tail(tracked.run.stderr);
  ctx.deps.journal.recordTimings(
    t.config.id,
    tracked.done.map((s) => ({ revision: s.to, direction: "upgrade" as const, durationMs: s.durationMs, source: "migrate" as const })),
  );
  const [revs, check] = await Promise.all([db.readRevisions(), tracked.run.ok ? db.integrityCheck() : Promise.resolve({ ok: false, detail: "not checked" })]);
  const after = revs ?? [];
  result.revisionAfter = after;
  if (!tracked.run.ok || !after.includes(wanted) || !check.ok) {
    const why = !tracked.run.ok
      ? `going forward from ${now.join(",") || "base"} failed${tracked.failedAt ? ` at ${tracked.failedAt.to}` : ""}: ${tracked.run.failure?.message ?? "alembic failed"}`
      : `after going forward the database reports ${after.join(",") || "no revision"}, integrity ${check.ok ? "ok" : check.detail}`;
    const restore = decideInterruptedMigration({
      targetId: t.config.id,
      operation: op.kind,
      online: true,
      before: op.revisionBefore,
      wanted,
      now: after,
      onPath: false,
      partial: false,
      intact: false,
      runningApps: apps.filter((a) => a.state === "running").map((a) => a.app.id),
      backupId: op.backupId,
    });
    needsRestore(`interrupted ${op.kind} ${op.id}: ${why}; ${restore.message}`, true);
  }
  const total = tracked.done.reduce((a, b) => a + b.durationMs, 0);
  return {
    effect: "changed",
    revisionAfter: after,
    message:
      `${t.config.id} migrated forward ${now.join(",") || "base"} → ${wanted} after interrupted ${op.kind} ${op.id} ` +
      `(${tracked.done.length} revision(s), ${(total / 1000).toFixed(1)}s; verified; the app's writes kept${backup ? `; backup ${backup.id} kept` : ""})`,
  };
}

/**
 * Migrates a throwaway copy of the target (SQLite copy; PostgreSQL scratch
 * database) and reports per-revision timings and go/no-go. The target itself
 * is never touched; the timings are remembered for later estimates.
 */
export function rehearse(
  ctx: OperationContext,
  req: { targetId: string; toRevision: string; operationId: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("rehearse", req.targetId, req.operationId, emit, { toRevision: req.toRevision || "head", lock: false }, async ({ t, progress, result }) => {
    const [graph, current] = await Promise.all([t.alembic.graph(), t.db.readRevisions()]);
    result.revisionBefore = current ?? [];
    const decision = resolveMigration({ targetId: t.config.id, graph, requested: req.toRevision, current, direction: "upgrade" });
    if (!decision.ok) refuse(decision.code, decision.message);
    if (decision.action === "up-to-date") {
      return { revisionAfter: current ?? [], effect: "up-to-date", details: { verdict: "go" }, message: `${decision.message}: there is nothing to rehearse` };
    }
    const copy = await ctx.step(
      emit,
      "copy",
      () => t.db.scratchCopy(progress, signal),
      () => "throwaway copy made",
    );
    try {
      const alembic = t.alembicFor(copy.url);
      const before = (await copy.adapter.readRevisions()) ?? [];
      // The copy may have moved on since the target was read; plan for the copy itself.
      const onCopy = resolveMigration({ targetId: t.config.id, graph, requested: decision.target, current: before, direction: "upgrade" });
      if (!onCopy.ok) refuse(onCopy.code, onCopy.message);
      const pending = onCopy.ok && onCopy.action === "upgrade" ? onCopy.pending : [];
      const tracked = await runAlembic(ctx, {
        t,
        db: copy.adapter,
        alembic,
        graph,
        direction: "upgrade",
        target: decision.target,
        pending,
        emit,
        progress,
        signal,
        extraEnv: {},
      });
      result.timings = timingsOf(tracked.done);
      ctx.deps.journal.recordTimings(
        t.config.id,
        tracked.done.map((s) => ({ revision: s.to, direction: "upgrade" as const, durationMs: s.durationMs, source: "rehearse" as const })),
      );
      const total = tracked.done.reduce((a, b) => a + b.durationMs, 0);
      if (!tracked.run.ok) {
        const f = tracked.run.failure;
        return {
          status: "failed",
          errorCode: "MIGRATION_FAILED",
          effect: "none",
          failureClass: f?.kind ?? "unknown",
          outputTail: tail(tracked.run.stderr),
          details: { verdict: "no-go", failedRevision: tracked.failedAt?.to ?? "" },
          message: `no-go: the rehearsal failed at ${tracked.failedAt?.to ?? "the start"}: ${f?.message ?? "alembic failed"} (the target was not touched)`,
        };
      }
      const [ic, after] = await Promise.all([copy.adapter.integrityCheck(), copy.adapter.readRevisions()]);
      result.revisionAfter = after ?? [];
      const reached = (after ?? []).includes(decision.target);
      const go = ic.ok && reached;
      return {
        status: go ? "succeeded" : "failed",
        errorCode: go ? "" : "MIGRATION_FAILED",
        effect: "none",
        details: { verdict: go ? "go" : "no-go" },
        message: `${go ? "go" : "no-go"}: the rehearsal on a throwaway copy ${reached ? "reached" : "did not reach"} ${decision.target} in ${(total / 1000).toFixed(1)}s over ${tracked.done.length} revision(s); integrity ${ic.ok ? "ok" : ic.detail} (the target was not touched)`,
      };
    } finally {
      await copy.drop().catch(() => undefined);
    }
  });
}

export function downgrade(
  ctx: OperationContext,
  req: { targetId: string; toRevision: string; operationId: string; acceptDataLoss: boolean },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("downgrade", req.targetId, req.operationId, emit, { toRevision: req.toRevision }, async ({ id, t, progress, result }) => {
    if (!req.acceptDataLoss) {
      refuse(
        "DATA_LOSS_NOT_ACCEPTED",
        "a downgrade drops the columns and tables later revisions added, with their data; confirm with --accept-data-loss (a backup is taken first)",
      );
    }
    const [graph, current] = await Promise.all([t.alembic.graph(), t.db.readRevisions()]);
    const before = current ?? [];
    result.revisionBefore = before;
    const decision = resolveMigration({ targetId: t.config.id, graph, requested: req.toRevision, current, direction: "downgrade" });
    if (!decision.ok) refuse(decision.code, decision.message);
    if (decision.action === "up-to-date") return { revisionAfter: before, effect: "up-to-date", message: decision.message };
    await ctx.assertNotHeld(t, t.db, true);
    const backup = await ctx.takeBackup(t, t.db, id, "", true, emit, progress, signal);
    result.backup = backup;
    const pre: DatabaseSnapshot = { revisions: backup.revisions, schemaHash: backup.schemaHash, tableCounts: backup.tableCounts };
    const tracked = await runAlembic(ctx, {
      t,
      db: t.db,
      alembic: t.alembic,
      graph,
      direction: "downgrade",
      target: decision.target,
      pending: decision.pending,
      emit,
      progress,
      signal,
      extraEnv: { [OPERATION_ENV]: id, ...(t.config.kind === "postgresql" ? { PGOPTIONS: `-c lock_timeout=${t.config.lockTimeoutMs}` } : {}) },
    });
    result.timings = timingsOf(tracked.done);
    result.outputTail = tail(tracked.run.stderr);
    ctx.deps.journal.recordTimings(
      t.config.id,
      tracked.done.map((s) => ({
        revision: revisionOf(s, "downgrade"),
        direction: "downgrade" as const,
        durationMs: s.durationMs,
        source: "migrate" as const,
      })),
    );
    if (!tracked.run.ok) {
      const f = tracked.run.failure;
      const settled = await settleFailure(ctx, { id, t, db: t.db, backup, pre, online: false, emit, progress, signal, result, what: "the downgrade" });
      return {
        status: "failed",
        errorCode: "MIGRATION_FAILED",
        failureClass: f?.kind ?? "unknown",
        restored: settled.restored,
        effect: settled.effect,
        message: `downgrade failed${tracked.failedAt ? ` at ${revisionOf(tracked.failedAt, "downgrade")}` : ""}: ${f?.message ?? "alembic failed"}. ${settled.sentence}`,
      };
    }
    result.revisionAfter = (await t.db.readRevisions()) ?? [];
    return { effect: "changed", message: `${t.config.id} downgraded to ${decision.target}; backup ${backup.id} holds the data from before` };
  });
}
