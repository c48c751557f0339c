import { resolveTarget } from "../core/revisions.js";
import type { OperationRow, ProgressFn } from "../core/ports.js";
import { refuse, type Emit, type OperationContext, type OpResult, type TargetRuntime } from "./context.js";

/** Recover: resolves an operation the agent was interrupted in (restore its backup, or accept the database). */

export function recover(ctx: OperationContext, req: { targetId: string; operationId: string; action: string; newOperationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  let id = "";
  let t: TargetRuntime;
  let progress: ProgressFn;
  let result: Partial<OpResult>;
  return ctx.run("recover", req.targetId, req.newOperationId, emit, { lock: false }, async (run) => {
    ({ id, t, progress, result } = run);
    // Without an operation id: the one holding the target's lock.
    const opId = req.operationId || ctx.deps.journal.lockHolder(t.config.id) || "";
    if (!opId) refuse("PRECONDITION_FAILED", `${t.config.id} has no interrupted or needs-restore operation: nothing to recover`);
    const op = ctx.deps.journal.get(opId);
    if (!op || op.targetId !== t.config.id) refuse("NOT_FOUND", `operation ${opId} is not in this agent's journal for ${t.config.id}`);
    if (op.state !== "interrupted" && op.state !== "needs-restore") refuse("PRECONDITION_FAILED", `operation ${op.id} is ${op.state}, not interrupted or needs-restore: nothing to recover`);
    if (req.action !== "restore" && req.action !== "accept") refuse("INVALID_ARGUMENT", `recover action must be "restore" or "accept", not "${req.action}"`);
    await ctx.deps.killOrphans([op.id]);
    if (req.action === "restore") {
      // Refuse while sessions still hold the database, before taking over the lock.
      await ctx.assertNotHeld(t, t.db, false);
    }
    ctx.deps.journal.transferLock(t.config.id, op.id, id);
    try {
      return await resolve(op);
    } catch (err) {
      // Whatever went wrong, the original operation keeps the target locked.
      ctx.deps.journal.transferLock(t.config.id, id, op.id);
      throw err;
    }
  });

  async function resolve(op: OperationRow): Promise<Partial<OpResult>> {
    result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
    const release = (state: "recovered"): void => ctx.deps.journal.finish(op.id, state, { message: `resolved by ${id} (${req.action})` });
    if (req.action === "accept") {
      const graph = await t.alembic.graph();
      const want = op.toRevision ? resolveTarget(graph, op.toRevision) : "";
      const now = result.revisionBefore;
      const ic = await t.db.integrityCheck();
      const leftovers = (await t.db.listTables()).filter((n) => n.startsWith("_alembic_tmp_"));
      if (!want || !now.includes(want) || !ic.ok || leftovers.length > 0) {
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
    await ctx.assertNotHeld(t, t.db, false);
    result.backup = m;
    result.revisionAfter = await ctx.restoreAndProve(t.db, m, emit, progress, signal);
    release("recovered");
    return { restored: true, effect: "restored", message: `restored ${t.config.id} from ${m.id} after ${op.state} ${op.kind} ${op.id}; verified identical to the backup` };
  }
}
