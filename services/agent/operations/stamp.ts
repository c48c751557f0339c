import { splitOfflineSql } from "../core/alembic-output.js";
import { resolveTarget } from "../core/revisions.js";
import { missingObjects, objectsCreatedBy } from "../core/sql-compat.js";
import { refuse, tail, type Emit, type OperationContext, type OpResult } from "./context.js";

const STAMP_REASONS = ["created-with-create-all", "imported-backup", "applied-by-hand"] as const;

/** Stamp: records a revision without changing the schema, for the three legitimate reasons only. */

export function stamp(
  ctx: OperationContext,
  req: { targetId: string; revision: string; operationId: string; reason: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("stamp", req.targetId, req.operationId, emit, { toRevision: req.revision }, async ({ id, t, progress, result }) => {
    if (!(STAMP_REASONS as readonly string[]).includes(req.reason)) {
      refuse(
        "STAMP_REFUSED",
        `stamp only records a revision without changing the schema, so it is never a repair for a failed migration (restore the pre-migration backup instead). Allowed reasons: ${STAMP_REASONS.join(", ")}`,
      );
    }
    if (req.revision === "head" || req.revision === "heads")
      refuse("STAMP_REFUSED", 'stamping "head" is refused: name the exact revision whose schema is provably present');
    const graph = await t.alembic.graph();
    const rev = resolveTarget(graph, req.revision);
    const before = await t.db.readRevisions();
    result.revisionBefore = before ?? [];
    const unknown = graph.unknown(before ?? []);
    let purge = false;
    if (req.reason === "created-with-create-all") {
      if (before !== null && before.length > 0)
        refuse("STAMP_REFUSED", `the database already records revision ${before.join(",")}: created-with-create-all is for databases without Alembic history`);
    } else if (req.reason === "imported-backup") {
      purge = unknown.length > 0;
    } else {
      // applied-by-hand: one step forward, after its objects were created by hand.
      const node = graph.revisions.get(rev)!;
      if (!before || !node.down.every((d) => before.includes(d))) {
        refuse(
          "STAMP_REFUSED",
          `applied-by-hand stamps exactly one revision forward: ${rev} follows ${node.down.join(",") || "base"}, but the database is at ${before?.join(",") || "no revision"}`,
        );
      }
      // Every object the revision creates must be there already: read them from its offline SQL.
      const sql = await t.alembic.offlineSql(node.down.length === 1 ? node.down[0]! : null, rev);
      if (!sql.ok || node.down.length > 1) {
        refuse(
          "STAMP_REFUSED",
          `cannot check that ${rev}'s objects exist: Alembic cannot render it offline (${sql.failure?.message ?? "a merge revision"}). ` +
            "Apply it with a migration instead, or restore a backup",
        );
      }
      const piece = splitOfflineSql(sql.stdout, new Set(graph.revisions.keys())).revisions.find((r) => r.to === rev);
      const created = objectsCreatedBy(piece?.sql ?? "");
      const [tables, indexes] = await Promise.all([t.db.listTables(), t.db.listIndexes()]);
      const columns = new Map<string, string[]>();
      for (const table of new Set(created.columns.map((c) => c.table))) columns.set(table, await t.db.listColumns(table));
      const missing = missingObjects(created, { tables, indexes, columnsOf: (table) => columns.get(table) ?? [] });
      if (missing.length > 0) {
        refuse(
          "STAMP_REFUSED",
          `${rev} creates objects the database does not have: ${missing.join(", ")}. Stamping would record a schema that is not there; ` +
            `create them by hand first, or run the migration (flotilla rollout --to ${rev})`,
        );
      }
    }
    await ctx.assertNotHeld(t, t.db, true);
    const backup = await ctx.takeBackup(t, t.db, id, "", true, emit, progress, signal);
    result.backup = backup;
    const run = await t.alembic.stamp(rev, {
      purge,
      timeoutMs: 120_000,
      ...(signal ? { signal } : {}),
      onLine: (line) => progress({ source: "alembic", line }),
    });
    result.outputTail = tail(run.stderr);
    if (!run.ok)
      return { status: "failed", errorCode: "ALEMBIC_FAILED", failureClass: run.failure?.kind ?? "", message: `stamp failed: ${run.failure?.message ?? ""}` };
    result.revisionAfter = (await t.db.readRevisions()) ?? [];
    return { message: `${t.config.id} stamped at ${rev} (reason: ${req.reason}); no schema was changed; backup ${backup.id} taken first` };
  });
}
