import { restoreCompanionsIfChanged } from "./app-state.js";
import { FlotillaError, toFlotillaError } from "../../common/errors.js";
import type { AlembicRun, BackupManifest } from "../core/ports.js";
import { resolveTarget } from "../core/revisions.js";
import { OPERATION_ENV, refuse, sameSet, tail, type Emit, type OperationContext, type OpResult } from "./context.js";

/** Schema-moving verbs: migrate, rehearse, downgrade. */

export function migrate(ctx: OperationContext, req: { targetId: string; toRevision: string; operationId: string; rolloutId: string; backupId: string; takeBackup: boolean; online: boolean; green: boolean; lockTimeoutMs: number }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("migrate", req.targetId, req.operationId, emit, { toRevision: req.toRevision || "head", rolloutId: req.rolloutId }, async ({ id, t, progress, result }) => {
    const side = req.green ? t.green : { db: t.db, alembic: t.alembic };
    if (!side) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.green database configured`);
    const { db, alembic } = side;
    // Preconditions: every refusal happens before anything changes.
    const graph = await alembic.graph();
    const target = resolveTarget(graph, req.toRevision);
    const before = (await db.readRevisions()) ?? [];
    result.revisionBefore = before;
    ctx.deps.journal.update(id, { revisionBefore: before });
    const unknown = graph.unknown(before);
    if (unknown.length > 0) refuse("UNKNOWN_REVISION", ctx.skewMessage(t.config.id, unknown));
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
    if (!req.online) await ctx.assertNotHeld(t, db, !req.green);
    let backup: BackupManifest;
    if (req.backupId) {
      backup = await t.catalog.get(req.backupId);
      if (!backup.verified) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is not verified (${backup.verification}); a migration needs a verified backup taken in the same rollout`);
      if (req.rolloutId && backup.rolloutId !== req.rolloutId) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} was taken outside rollout ${req.rolloutId}; take a fresh one in this rollout`);
      if (!sameSet(backup.revisions, before)) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is at revision ${backup.revisions.join(",") || "none"} but the database is at ${before.join(",") || "none"}: take a fresh backup`);
      if (backup.source !== db.displayName) refuse("BACKUP_UNVERIFIED", `backup ${backup.id} is of ${backup.source}, not of ${db.displayName}`);
    } else if (req.takeBackup) {
      backup = await ctx.takeBackup(t, db, id, req.rolloutId, true, emit, progress, signal);
    } else {
      refuse("BACKUP_UNVERIFIED", "no verified backup was taken in this operation: pass the id of a verified backup taken in this rollout, or ask the agent to take one (take_backup)");
    }
    ctx.deps.journal.update(id, { backupId: backup.id });
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
        if (performance.now() - lastLine < ctx.deps.heartbeatMs) return;
        void db.sizeBytes().catch(() => 0).then((size) => {
          const moved = size !== lastSize ? `database size ${Math.round(size / 1e6)} MB (changing)` : "database size unchanged";
          lastSize = size;
          progress({ source: "agent", line: `still running ${rev}: ${Math.round((performance.now() - stepStart) / 1000)}s elapsed, no output for ${Math.round((performance.now() - lastLine) / 1000)}s; ${moved}` });
        });
      }, ctx.deps.heartbeatMs);
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
        result.revisionAfter = await ctx.restoreAndProve(db, backup, emit, progress, signal);
        restored = true;
      } else {
        result.revisionAfter = now;
        progress({ source: "agent", line: "the database is unchanged (the failed revision rolled back): no restore needed" });
        if (db === t.db) await restoreCompanionsIfChanged(t, backup, progress, signal);
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
      after = await ctx.step(emit, "verify", async () => {
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
      result.revisionAfter = await ctx.restoreAndProve(db, backup, emit, progress, signal);
      return { status: "failed", errorCode: "MIGRATION_FAILED", restored: true, failureClass: "verify", message: `${why}. The database was restored from backup ${backup.id} and verified identical to it.` };
    }
    result.revisionAfter = after;
    ctx.deps.journal.update(id, { revisionAfter: after });
    const total = timings.reduce((a, b) => a + b.durationMs, 0);
    return { message: `${t.config.id} migrated ${before.join(",") || "base"} → ${target} (${timings.length} revision(s), ${(total / 1000).toFixed(1)}s); backup ${backup.id} kept${backup.appVersion ? `; app version ${backup.appVersion}` : ""}` };
  });
}

export function rehearse(ctx: OperationContext, req: { targetId: string; toRevision: string; operationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("rehearse", req.targetId, req.operationId, emit, { toRevision: req.toRevision || "head", lock: false }, async ({ t, progress, result }) => {
    const graph = await t.alembic.graph();
    const target = resolveTarget(graph, req.toRevision);
    const copy = await ctx.step(emit, "copy", () => t.db.scratchCopy(progress, signal), () => "throwaway copy made");
    try {
      const alembic = t.alembicFor(copy.url);
      const before = (await copy.adapter.readRevisions()) ?? [];
      result.revisionBefore = before;
      const unknown = graph.unknown(before);
      if (unknown.length > 0) refuse("UNKNOWN_REVISION", ctx.skewMessage(t.config.id, unknown));
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

export function downgrade(ctx: OperationContext, req: { targetId: string; toRevision: string; operationId: string; acceptDataLoss: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("downgrade", req.targetId, req.operationId, emit, { toRevision: req.toRevision }, async ({ id, t, progress, result }) => {
    if (!req.acceptDataLoss) {
      refuse("DATA_LOSS_NOT_ACCEPTED", "a downgrade drops the columns and tables later revisions added, with their data; confirm with --accept-data-loss (a backup is taken first)");
    }
    const graph = await t.alembic.graph();
    const before = (await t.db.readRevisions()) ?? [];
    result.revisionBefore = before;
    const unknown = graph.unknown(before);
    if (unknown.length > 0) refuse("UNKNOWN_REVISION", ctx.skewMessage(t.config.id, unknown));
    const target = req.toRevision === "base" ? "base" : resolveTarget(graph, req.toRevision);
    if (target !== "base" && !graph.ancestorsOrSelf(before).has(target)) refuse("INVALID_ARGUMENT", `${target} is not older than the database's revision ${before.join(",")}; to move forward use a rollout`);
    if (target !== "base" && before.includes(target)) return { revisionAfter: before, message: `${t.config.id} is already at ${target}` };
    await ctx.assertNotHeld(t, t.db, true);
    const backup = await ctx.takeBackup(t, t.db, id, "", true, emit, progress, signal);
    result.backup = backup;
    emit({ kind: "step", name: `downgrade:${target}`, state: "running", detail: "" });
    const run = await t.alembic.downgrade(target, { extraEnv: { [OPERATION_ENV]: id }, timeoutMs: t.config.alembic.timeoutMs, ...(signal ? { signal } : {}), onLine: (line) => progress({ source: "alembic", line }) });
    result.outputTail = tail(run.stderr);
    if (!run.ok) {
      emit({ kind: "step", name: `downgrade:${target}`, state: "failed", detail: run.failure?.message ?? "", durationMs: run.durationMs });
      result.revisionAfter = await ctx.restoreAndProve(t.db, backup, emit, progress, signal);
      return { status: "failed", errorCode: "MIGRATION_FAILED", failureClass: run.failure?.kind ?? "unknown", restored: true,
        message: `downgrade failed: ${run.failure?.message ?? "alembic failed"}; the database was restored from ${backup.id} and verified` };
    }
    emit({ kind: "step", name: `downgrade:${target}`, state: "succeeded", detail: "", durationMs: run.durationMs });
    result.revisionAfter = (await t.db.readRevisions()) ?? [];
    return { message: `${t.config.id} downgraded to ${target}; backup ${backup.id} holds the data from before` };
  });
}
