import { FlotillaError } from "../../common/errors.js";
import type { GraphView } from "./ports.js";

/** Every ancestor of `ids` including themselves. */
export function ancestorsOf(graph: GraphView, ids: readonly string[]): Set<string> {
  const seen = new Set<string>();
  const stack = [...ids];
  while (stack.length > 0) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    for (const d of graph.revisions.get(id)?.down ?? []) stack.push(d);
  }
  return seen;
}

/**
 * Resolves a requested target revision against the graph: `head` needs exactly
 * one head; an id must be known. Never accepts relative forms.
 */
export function resolveTarget(graph: GraphView, requested: string): string {
  const want = requested === "" ? "head" : requested;
  if (want === "head") {
    if (graph.heads.length > 1) {
      throw new FlotillaError("MULTIPLE_HEADS",
        `the code has ${graph.heads.length} head revisions (${graph.heads.join(", ")}): "head" is ambiguous. ` +
        "Add a merge revision to the app's migrations (alembic merge heads) or name one revision explicitly");
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

/** Revisions in the database that the code does not know (version skew). */
export function unknownRevisions(graph: GraphView, current: readonly string[]): string[] {
  return current.filter((c) => !graph.revisions.has(c));
}

/** Pending revisions from `current` up to `target`, in the order Alembic applies them. */
export function pendingBetween(graph: GraphView, current: readonly string[], target: string): string[] {
  const have = ancestorsOf(graph, current);
  const need = ancestorsOf(graph, [target]);
  const todo = [...need].filter((id) => !have.has(id));
  const ordered: string[] = [];
  const placed = new Set<string>(have);
  while (ordered.length < todo.length) {
    const before = ordered.length;
    for (const id of todo) {
      if (placed.has(id)) continue;
      const downs = graph.revisions.get(id)?.down ?? [];
      if (downs.every((d) => placed.has(d))) {
        ordered.push(id);
        placed.add(id);
      }
    }
    if (ordered.length === before) break;
  }
  return ordered;
}

/** Whether `target` is an ancestor of (or equal to) the current revisions: i.e. a downgrade or no-op. */
export function isBehind(graph: GraphView, current: readonly string[], target: string): boolean {
  return ancestorsOf(graph, current).has(target);
}
