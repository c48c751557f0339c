import { resolveTarget } from "../core/revisions.js";
import { refuse, type Emit, type OperationContext, type OpResult } from "./context.js";

/** Recover: resolves an operation the agent was interrupted in (restore its backup, or accept the database). */

export function recover(ctx: OperationContext, req: { targetId: string; operationId: string; action: string; newOperationId: string }, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return ctx.run("recover", req.targetId, req.newOperationId, emit, { lock: false }, async ({ id, t, progress, result }) => {
    const op = ctx.deps.journal.get(req.operationId);
    if (!op || op.targetId !== t.config.id) refuse("NOT_FOUND", `operation ${req.operationId} is not in this agent's journal for ${t.config.id}`);
    if (op.state !== "interrupted") refuse("PRECONDITION_FAILED", `operation ${op.id} is ${op.state}, not interrupted: nothing to recover`);
    if (req.action !== "restore" && req.action !== "accept") refuse("INVALID_ARGUMENT", `recover action must be "restore" or "accept", not "${req.action}"`);
    ctx.deps.journal.transferLock(t.config.id, op.id, id);
    await ctx.deps.killOrphans([op.id]);
    result.revisionBefore = (await t.db.readRevisions().catch(() => null)) ?? [];
    const release = (state: "recovered"): void => ctx.deps.journal.finish(op.id, state, { message: `resolved by ${id} (${req.action})` });
    if (req.action === "accept") {
      const graph = await t.alembic.graph();
      const want = op.toRevision ? resolveTarget(graph, op.toRevision) : "";
      const now = result.revisionBefore;
      const ic = await t.db.integrityCheck();
      const leftovers = (await t.db.listTables()).filter((n) => n.startsWith("_alembic_tmp_"));
      if (!want || !now.includes(want) || !ic.ok || leftovers.length > 0) {
        ctx.deps.journal.transferLock(t.config.id, id, op.id);
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
    return { restored: true, message: `restored ${t.config.id} from ${m.id} after interrupted ${op.kind} ${op.id}; verified identical to the backup` };
  });
}
