import { isRecoverAction, RECOVER_ACTIONS } from "../../common/recover-action.js";
import { resolveTarget } from "../core/revisions.js";
import type { OperationRow } from "../core/ports.js";
import { APPS_COLOR } from "./apps.js";
import { resumeMigrationForward } from "./migrate.js";
import { refuse, type Emit, type OperationContext, type OpResult, type RunContext } from "./context.js";

/**
 * Recover: resolves an operation the agent was interrupted in.
 *
 * - migrate, restore, downgrade, stamp, clone, move: "restore" puts back the
 *   backup the operation took (verified), "accept" keeps the database if it is
 *   provably at the wanted revision and intact.
 * - backup, verify-backup, rehearse: the database was never touched, so both
 *   actions discard what the interrupted operation left (never restore it: the
 *   app may have written rows since).
 * - migrate, "forward": an online migration (job strategy) goes on from the
 *   revision the database reached, keeping the app's writes, when the safety
 *   policy finds it on its path (see resumeMigrationForward); otherwise it is
 *   refused with effect needs-restore, saying what a restore would lose.
 * - stop-apps, start-apps: "accept" completes the interrupted action, "restore"
 *   reverts it (starts what a stop stopped, stops what a start started).
 *
 * A refused recover gives the target's lock back to the interrupted operation,
 * so it can be recovered again.
 *
 * A recover is journaled with the operation it resolves (`to_revision`
 * "recovers:ID"). When the agent is itself stopped during a recover, that
 * recover is left interrupted holding the lock; recovering it (or its
 * subject) again takes the lock over from it and resolves the subject, so a
 * second interruption needs no more than the first.
 */
const READ_ONLY_KINDS = new Set(["backup", "verify-backup", "rehearse"]);
const APPS_KINDS = new Set(["stop-apps", "start-apps"]);
/** Prefix of the journaled to_revision of a recover: the operation it resolves. */
export const RECOVERS = "recovers:";

/** The operation an interrupted recover was resolving, if `op` is one. */
function cutRecoverSubject(op: OperationRow | undefined): string | undefined {
  return op !== undefined && op.kind === "recover" && op.state === "interrupted" && op.toRevision.startsWith(RECOVERS)
    ? op.toRevision.slice(RECOVERS.length)
    : undefined;
}

export function recover(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; action: string; newOperationId: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  // Without an operation id: the one holding the target's lock (an interrupted or needs-restore operation).
  const asked = req.operationId || ctx.deps.journal.lockHolder(req.targetId) || "";
  // Recovering a recover that was cut off means recovering what it was resolving.
  const opId = cutRecoverSubject(ctx.deps.journal.get(asked)) ?? asked;
  const peek = ctx.deps.journal.get(opId);
  const appsOnly = peek !== undefined && APPS_KINDS.has(peek.kind);
  return ctx.run(
    "recover",
    req.targetId,
    req.newOperationId,
    emit,
    { lock: false, appsOnly, ...(opId ? { toRevision: `${RECOVERS}${opId}` } : {}) },
    async (run) => {
      const { id, t } = run;
      if (!opId) refuse("PRECONDITION_FAILED", `${t.config.id} has no interrupted or needs-restore operation: nothing to recover`);
      const op = ctx.deps.journal.get(opId);
      if (!op || op.targetId !== t.config.id) refuse("NOT_FOUND", `operation ${opId} is not in this agent's journal for ${t.config.id}`);
      if (op.state !== "interrupted" && op.state !== "needs-restore")
        refuse("PRECONDITION_FAILED", `operation ${op.id} is ${op.state}, not interrupted or needs-restore: nothing to recover`);
      if (!isRecoverAction(req.action))
        refuse("INVALID_ARGUMENT", `recover action must be ${RECOVER_ACTIONS.map((a) => `"${a}"`).join(", ")}, not "${req.action}"`);
      if (req.action === "forward" && op.kind !== "migrate")
        refuse("INVALID_ARGUMENT", `recover action "forward" resumes an interrupted migrate; ${op.id} is a ${op.kind}`);
      const holder = ctx.deps.journal.lockHolder(t.config.id);
      // An earlier recover of this same operation, cut off by the agent stopping, holds the lock on its behalf.
      const cut = holder !== undefined && cutRecoverSubject(ctx.deps.journal.get(holder)) === op.id ? holder : undefined;
      const heldByOp = holder === op.id || cut !== undefined;
      if (holder !== undefined && !heldByOp)
        refuse("TARGET_BUSY", `target ${t.config.id} is locked by operation ${holder}, not by ${op.id}: resolve that one first`);
      if (cut !== undefined) {
        ctx.deps.journal.transferLock(t.config.id, cut, id);
        ctx.deps.journal.finish(cut, "recovered", { message: `cut off by the agent stopping; taken over by ${id}` });
      } else if (heldByOp) {
        ctx.deps.journal.transferLock(t.config.id, op.id, id);
      }
      try {
        await ctx.deps.killOrphans(cut !== undefined ? [op.id, cut] : [op.id]);
        // Without its backup journaled the migrate never ran Alembic: nothing to go forward from (resolve releases it).
        if (req.action === "forward" && op.backupId) {
          const done = await resumeMigrationForward(ctx, op, run, emit, signal);
          ctx.deps.journal.finish(op.id, "recovered", { message: `resolved by ${id} (forward)`, revisionAfter: done.revisionAfter ?? [] });
          return done;
        }
        return await resolve(ctx, op, req.action === "accept" ? "accept" : "restore", run, emit, signal);
      } catch (err) {
        // Refused or failed: the interrupted operation keeps the lock (and stays recoverable).
        if (heldByOp && ctx.deps.journal.lockHolder(t.config.id) === id) ctx.deps.journal.transferLock(t.config.id, id, op.id);
        throw err;
      }
    },
  );
}

async function resolve(
  ctx: OperationContext,
  op: OperationRow,
  action: "restore" | "accept",
  run: RunContext,
  emit: Emit,
  signal?: AbortSignal,
): Promise<Partial<OpResult>> {
  const { id, t, progress, result } = run;
  const release = (): void => ctx.deps.journal.finish(op.id, "recovered", { message: `resolved by ${id} (${action})` });

  if (APPS_KINDS.has(op.kind)) {
    const color = op.toRevision.startsWith(APPS_COLOR) ? op.toRevision.slice(APPS_COLOR.length) : "";
    const was = op.kind === "stop-apps" ? "stop" : "start";
    const which = action === "accept" ? was : was === "stop" ? "start" : "stop";
    const done = await ctx.controlApps(t, which, color, emit, progress, signal);
    release();
    return {
      message: `interrupted ${op.kind} ${op.id} ${action === "accept" ? "completed" : "reverted"}: ${which === "stop" ? "stopped" : "started"} ${done.join(", ") || "no instances"}`,
    };
  }

  result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
  result.revisionAfter = result.revisionBefore;
  if (READ_ONLY_KINDS.has(op.kind)) {
    // Nothing was changed: what the operation was making is discarded, never restored over newer rows.
    if (op.kind === "backup" && op.backupId) await t.catalog.discard(op.backupId);
    await t.catalog.prepare().catch(() => []);
    release();
    return {
      effect: "none",
      message: `interrupted ${op.kind} ${op.id} changed nothing in the database; ${op.backupId && op.kind === "backup" ? `its backup ${op.backupId} was discarded` : "its leftovers were removed"} and the lock released`,
    };
  }

  if (action === "accept") {
    const graph = await t.alembic.graph();
    const want = op.toRevision ? resolveTarget(graph, op.toRevision) : "";
    const now = result.revisionBefore;
    const ic = await t.db.integrityCheck();
    const leftovers = (await t.db.listTables()).filter((n) => n.startsWith("_alembic_tmp_"));
    if (!want || !now.includes(want) || !ic.ok || leftovers.length > 0) {
      refuse(
        "PRECONDITION_FAILED",
        `cannot accept: the database is at ${now.join(",") || "no revision"} (wanted ${want || "unknown"}), integrity ${ic.ok ? "ok" : "failed"}${leftovers.length ? `, leftover ${leftovers.join(",")}` : ""}; recover with action "restore" instead`,
      );
    }
    release();
    return { message: `accepted ${t.config.id} at ${want} after interrupted ${op.kind} ${op.id}: revision and integrity verified` };
  }
  if (!op.backupId) {
    // A backup id is journaled only once the backup is complete and verified, before any change.
    release();
    return { effect: "none", message: `interrupted ${op.kind} ${op.id} had not taken its backup yet, so it had changed nothing; lock released` };
  }
  const m = await t.catalog.get(op.backupId);
  {
    // Checked again right before use: a backup damaged since it was taken is never restored.
    const v = await t.db.verifyBackup(m, progress, signal);
    if (!v.ok)
      refuse(
        "BACKUP_UNVERIFIED",
        `the backup of interrupted operation ${op.id} (${m.id}) does not verify: ${v.detail}. Restore another backup by hand (flotilla restore)`,
      );
  }
  await ctx.assertNotHeld(t, t.db, false);
  result.backup = m;
  result.revisionAfter = await ctx.restoreAndProve(t.db, m, emit, progress, signal);
  release();
  return {
    restored: true,
    effect: "restored",
    message: `restored ${t.config.id} from ${m.id} after ${op.state} ${op.kind} ${op.id}; verified identical to the backup`,
  };
}
