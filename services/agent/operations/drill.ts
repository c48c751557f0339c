import { FlotillaError, toFlotillaError } from "../../common/errors.js";
import type { BackupManifest, OperationRow } from "../core/ports.js";
import { refuse, sameSet, type Emit, type OperationContext, type OpResult } from "./context.js";

/**
 * Restore drills: a verified backup (the newest by default) restored into a
 * scratch place, checked against its manifest (revision, integrity, schema,
 * row counts, companion sha256s) and the target's smoke queries run on it;
 * the scratch copy is always removed. The live database is never touched and
 * the target's lock is not taken. Recorded in the journal as kind "drill".
 */
export function drill(
  ctx: OperationContext,
  req: { targetId: string; backupId: string; operationId: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("drill", req.targetId, req.operationId, emit, { lock: false }, async ({ id, t, progress, result }) => {
    let m: BackupManifest;
    if (req.backupId) {
      m = await t.catalog.get(req.backupId);
      if (!m.verified)
        refuse("BACKUP_UNVERIFIED", `backup ${m.id} has not passed verification (${m.verification}): drill a verified one (flotilla backups ${t.config.id})`);
    } else {
      const newest = await t.catalog.lastVerified();
      if (!newest) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no verified backup to drill: take one first (flotilla backup ${t.config.id})`);
      m = newest;
    }
    const db = t.db;
    if (!db.scratchFromBackup) refuse("PRECONDITION_FAILED", `the ${t.config.kind} adapter cannot restore into scratch`);
    ctx.deps.journal.update(id, { backupId: m.id });
    result.backup = m;
    result.details = { backupId: m.id };
    const failedWith = (what: string): Partial<OpResult> => ({
      status: "failed",
      errorCode: "VERIFY_FAILED",
      effect: "none",
      backup: m,
      details: { backupId: m.id },
      message: `drill of backup ${m.id} failed: ${what}. The live database was not touched`,
    });
    try {
      await ctx.verifyManifest(t, db, m, emit, progress, signal, true);
    } catch (err) {
      return failedWith(toFlotillaError(err).message);
    }
    let scratch: Awaited<ReturnType<NonNullable<typeof db.scratchFromBackup>>>;
    try {
      scratch = await ctx.step(
        emit,
        "restore-scratch",
        () => db.scratchFromBackup!(m, progress, signal),
        () => "restored into a scratch copy",
      );
    } catch (err) {
      return failedWith(`restore into scratch failed: ${toFlotillaError(err).message}`);
    }
    try {
      const copy = scratch.adapter;
      const problems: string[] = [];
      await ctx
        .step(
          emit,
          "check",
          async () => {
            const [revs, hash, counts, ic] = await Promise.all([copy.readRevisions(), copy.schemaHash(), copy.tableCounts(), copy.integrityCheck()]);
            if (!sameSet(revs ?? [], m.revisions))
              problems.push(`revision is ${(revs ?? []).join(",") || "none"}, the manifest says ${m.revisions.join(",") || "none"}`);
            if (!ic.ok) problems.push(`integrity check: ${ic.detail}`);
            if (hash !== m.schemaHash) problems.push("schema differs from the manifest");
            for (const [table, n] of Object.entries(m.tableCounts))
              if (counts[table] !== n) problems.push(`${table}: ${counts[table] ?? "missing"} rows, the manifest says ${n}`);
            for (const table of Object.keys(counts)) if (!(table in m.tableCounts)) problems.push(`unexpected table ${table}`);
            if (problems.length > 0) throw new FlotillaError("VERIFY_FAILED", problems.join("; "));
          },
          () => `revision ${m.revisions.join(",") || "none"}, integrity ok, schema and ${Object.keys(m.tableCounts).length} tables' row counts match`,
        )
        .catch((err: unknown) => {
          if (problems.length === 0) problems.push(toFlotillaError(err).message);
        });
      if (problems.length > 0) return failedWith(problems.join("; "));
      const smoke: string[] = [];
      for (const [i, sql] of (t.config.smoke ?? []).entries()) {
        if (!copy.smokeQuery) break;
        try {
          const r = await ctx.step(
            emit,
            `smoke:${i + 1}`,
            () => copy.smokeQuery!(sql),
            (x) => `${x.rows} row(s)${x.value ? `, ${x.value}` : ""}`,
          );
          smoke.push(`smoke ${i + 1}: ${r.rows} row(s)${r.value ? ` (${r.value})` : ""}`);
        } catch (err) {
          return failedWith(`smoke query ${i + 1} failed: ${toFlotillaError(err).message}`);
        }
      }
      result.revisionBefore = [...m.revisions];
      result.revisionAfter = [...m.revisions];
      return {
        effect: "none",
        details: { backupId: m.id, smoke: String(smoke.length) },
        message:
          `drill of backup ${m.id} passed: restored into scratch at ${m.revisions.join(",") || "no revision"}, integrity ok, schema and row counts match` +
          `${m.companions?.length ? `, ${m.companions.length} companion path(s) verified` : ""}${smoke.length ? `; ${smoke.join("; ")}` : ""}`,
      };
    } finally {
      await scratch.drop().catch(() => undefined);
      progress({ source: "agent", line: "drill: scratch copy removed" });
    }
  });
}

/** The newest finished drill of a target in the journal. */
export function lastDrill(ctx: OperationContext, targetId: string): OperationRow | undefined {
  return ctx.deps.journal.list(targetId, 500).find((o) => o.kind === "drill" && (o.state === "succeeded" || o.state === "failed"));
}
