import { FlotillaError } from "../../common/errors.js";
import type { GraphView } from "./ports.js";

/**
 * Resolves a requested target revision against the graph: `head` needs exactly
 * one head; an id must be known. Never accepts relative forms.
 */
export function resolveTarget(graph: GraphView, requested: string): string {
  const want = requested === "" ? "head" : requested;
  if (want === "head") {
    if (graph.heads.length > 1) {
      throw new FlotillaError(
        "MULTIPLE_HEADS",
        `the code has ${graph.heads.length} head revisions (${graph.heads.join(", ")}): "head" is ambiguous. ` +
          "Add a merge revision to the app's migrations (alembic merge heads) or name one revision explicitly",
      );
    }
    const h = graph.heads[0];
    if (!h) throw new FlotillaError("PRECONDITION_FAILED", "the code has no revisions at all: check alembic.dir points at the app's migrations");
    return h;
  }
  if (!/^[A-Za-z0-9_]{1,64}$/.test(want)) {
    throw new FlotillaError("INVALID_ARGUMENT", `"${requested}" is not a revision id: use "head" or an id from the app's history`);
  }
  if (!graph.revisions.has(want)) {
    throw new FlotillaError("INVALID_ARGUMENT", `revision ${want} is not in the app's migration history (${graph.revisions.size} revisions known)`);
  }
  return want;
}
