import type { BackupManifest } from "../core/ports.js";
import { refuse, type Emit, type OperationContext, type OpResult } from "./context.js";

/** Backup verbs: take, verify, list and restore backups. */

export function backup(ctx: OperationContext, req: { targetId: string; operationId: string; rolloutId: string; verify: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("backup", req.targetId, req.operationId, emit, { rolloutId: req.rolloutId }, async ({ id, t, progress }) => {
    const before = (await t.db.readRevisions()) ?? [];
    const m = await ctx.takeBackup(t, t.db, id, req.rolloutId, req.verify, emit, progress, signal);
    return { backup: m, revisionBefore: before, revisionAfter: before, message: `backup ${m.id} taken${m.verified ? " and verified" : ""}` };
  });
}

export function verifyBackup(ctx: OperationContext, req: { targetId: string; backupId: string; operationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("verify-backup", req.targetId, req.operationId, emit, { lock: false }, async ({ t, progress }) => {
    const m = await t.catalog.get(req.backupId);
    const updated = await ctx.verifyManifest(t, t.db, m, emit, progress, signal);
    return { backup: updated, message: `backup ${m.id} verified: ${updated.verification}` };
  });
}

export async function listBackups(ctx: OperationContext, targetId: string): Promise<BackupManifest[]> {
  return ctx.target(targetId).catalog.list();
}

export function restore(ctx: OperationContext, req: { targetId: string; backupId: string; operationId: string; manageApps: boolean }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("restore", req.targetId, req.operationId, emit, {}, async ({ id, t, progress, result }) => {
    const m = await t.catalog.get(req.backupId);
    if (!m.verified) refuse("BACKUP_UNVERIFIED", `backup ${m.id} has not passed verification (${m.verification}); verify it first or pick a verified one (flotilla backups ${t.config.id})`);
    ctx.deps.journal.update(id, { backupId: m.id });
    result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
    const stopped = req.manageApps ? await ctx.controlApps(t, "stop", "", emit, progress, signal) : [];
    await ctx.assertNotHeld(t, t.db, !req.manageApps);
    const after = await ctx.restoreAndProve(t.db, m, emit, progress, signal);
    result.revisionAfter = after;
    if (stopped.length > 0) await ctx.controlApps(t, "start", "", emit, progress, signal);
    return { backup: m, message: `restored ${t.config.id} from ${m.id}; database verified at ${after.join(", ") || "no revision"}`, restored: true };
  });
}
