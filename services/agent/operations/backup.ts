import { appVersionNotes, readAppVersion } from "./app-state.js";
import type { BackupManifest } from "../core/ports.js";
import { refuse, sameSet, type Emit, type OperationContext, type OpResult, type TargetRuntime } from "./context.js";

/** Backup verbs: take, verify, list and restore backups. */

export function backup(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; rolloutId: string; verify: boolean },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("backup", req.targetId, req.operationId, emit, { rolloutId: req.rolloutId }, async ({ id, t, progress }) => {
    const before = (await t.db.readRevisions()) ?? [];
    const m = await ctx.takeBackup(t, t.db, id, req.rolloutId, req.verify, emit, progress, signal);
    return {
      backup: m,
      revisionBefore: before,
      revisionAfter: before,
      message: `backup ${m.id} taken${m.verified ? " and verified" : ""}${m.companions?.length ? ` with ${m.companions.length} companion path(s)` : ""}${m.appVersion ? ` (app version ${m.appVersion})` : ""}`,
    };
  });
}

export function verifyBackup(
  ctx: OperationContext,
  req: { targetId: string; backupId: string; operationId: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("verify-backup", req.targetId, req.operationId, emit, { lock: false }, async ({ t, progress }) => {
    const m = await t.catalog.get(req.backupId);
    const updated = await ctx.verifyManifest(t, t.db, m, emit, progress, signal);
    return { backup: updated, message: `backup ${m.id} verified: ${updated.verification}` };
  });
}

export async function listBackups(ctx: OperationContext, targetId: string): Promise<BackupManifest[]> {
  return ctx.target(targetId).catalog.list();
}

export function restore(
  ctx: OperationContext,
  req: { targetId: string; backupId: string; operationId: string; manageApps: boolean },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("restore", req.targetId, req.operationId, emit, {}, async ({ id, t, progress, result }) => {
    const m = await t.catalog.get(req.backupId);
    if (!m.verified)
      refuse(
        "BACKUP_UNVERIFIED",
        `backup ${m.id} has not passed verification (${m.verification}); verify it first or pick a verified one (flotilla backups ${t.config.id})`,
      );
    // Verified once is not enough: the file may have been damaged since. Check it again before anything changes.
    const now = await ctx.step(
      emit,
      "verify-backup",
      () => t.db.verifyBackup(m, progress, signal),
      (v) => v.detail,
    );
    if (!now.ok)
      refuse(
        "BACKUP_UNVERIFIED",
        `backup ${m.id} no longer verifies (${now.detail}): it was damaged after it was taken; the database was not touched. Pick another backup (flotilla backups ${t.config.id})`,
      );
    ctx.deps.journal.update(id, { backupId: m.id });
    result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
    const stopped = req.manageApps ? await ctx.controlApps(t, "stop", "", emit, progress, signal) : [];
    await ctx.assertNotHeld(t, t.db, !req.manageApps);
    const after = await ctx.restoreAndProve(t.db, m, emit, progress, signal);
    result.revisionAfter = after;
    const notes = await restoreNotes(ctx, t, m, result.revisionBefore, signal);
    for (const line of notes) progress({ source: "agent", line: `warning: ${line}` });
    if (stopped.length > 0) await ctx.controlApps(t, "start", "", emit, progress, signal);
    return {
      backup: m,
      restored: true,
      details: { ...(m.appVersion ? { appVersion: m.appVersion } : {}), ...(notes.length ? { warnings: notes.join("\n") } : {}) },
      message: `restored ${t.config.id} from ${m.id}${m.companions?.length ? " with its companion files" : ""}; database verified at ${after.join(", ") || "no revision"}${notes.length ? `. ${notes.join(". ")}` : ""}`,
    };
  });
}

/** App-version warnings for a restore of `m` over a database that was at `before`. */
async function restoreNotes(ctx: OperationContext, t: TargetRuntime, m: BackupManifest, before: readonly string[], signal?: AbortSignal): Promise<string[]> {
  const current = await readAppVersion(ctx, t, signal);
  let older = false;
  if (before.length > 0 && !sameSet(before, m.revisions)) {
    const graph = await t.alembic.graph().catch(() => undefined);
    older =
      graph !== undefined &&
      graph.unknown(before).length === 0 &&
      graph.unknown(m.revisions).length === 0 &&
      m.revisions.every((r) => graph.ancestorsOrSelf(before).has(r));
  }
  return appVersionNotes(m, current, older);
}
