import { FlotillaError } from "../../common/errors.js";
import type { HistoryRevision } from "./alembic-output.js";
import type { GraphView, RevisionNode as PortRevisionNode } from "./ports.js";

/** One node of the revision graph. */
export interface RevisionNode extends PortRevisionNode {
  readonly id: string;
  /** Parents (`down_revision`); empty for a root. */
  readonly down: readonly string[];
  /** Children, in the order the history listed them. */
  readonly up: readonly string[];
  readonly message: string;
}

/**
 * The revision graph of one Alembic project, built from parsed `alembic
 * history` output. Pure and immutable. Heads, branch points and merge points
 * are computed from the edges (the `(head)` markers of the text are not
 * trusted). Methods that take revision ids throw
 * FlotillaError('UNKNOWN_REVISION') for ids not in the graph and
 * FlotillaError('MULTIPLE_HEADS') when `head` is ambiguous; they never touch
 * a database or start a process.
 */
export class RevisionGraph implements GraphView {
  /** Every revision, in a fixed topological order (parents before children). */
  readonly revisions: ReadonlyMap<string, RevisionNode>;
  /** Revisions without children, in topological order. */
  readonly heads: readonly string[];
  /** Revisions without parents. */
  readonly bases: readonly string[];
  /** Revisions with two or more children. */
  readonly branchpoints: readonly string[];
  /** Revisions with two or more parents. */
  readonly mergepoints: readonly string[];
  /** Fingerprint of the scripts the graph was read from (given by the caller; '' when none). */
  readonly hash: string;
  private readonly nodes: ReadonlyMap<string, RevisionNode>;
  private readonly order: readonly string[];

  private constructor(nodes: Map<string, RevisionNode>, order: string[], hash: string) {
    this.nodes = nodes;
    this.revisions = nodes;
    this.order = order;
    this.hash = hash;
    this.heads = Object.freeze(order.filter((id) => nodes.get(id)!.up.length === 0));
    this.bases = Object.freeze(order.filter((id) => nodes.get(id)!.down.length === 0));
    this.branchpoints = Object.freeze(order.filter((id) => nodes.get(id)!.up.length > 1));
    this.mergepoints = Object.freeze(order.filter((id) => nodes.get(id)!.down.length > 1));
  }

  /**
   * Builds the graph. Throws FlotillaError('CONFIG_INVALID') when a revision
   * is listed twice, names a parent that is not in the list, or the edges
   * form a cycle (a broken scripts folder).
   */
  static fromHistory(revisions: readonly HistoryRevision[], options: { hash?: string } = {}): RevisionGraph {
    const down = new Map<string, readonly string[]>();
    const messages = new Map<string, string>();
    for (const r of revisions) {
      if (down.has(r.id)) throw new FlotillaError("CONFIG_INVALID", `revision ${r.id} appears twice in the Alembic history`);
      down.set(r.id, r.down);
      messages.set(r.id, r.message);
    }
    const up = new Map<string, string[]>([...down.keys()].map((id) => [id, []]));
    // History is printed newest first; walk it oldest first so children keep a stable order.
    for (const r of [...revisions].reverse()) {
      for (const p of r.down) {
        const children = up.get(p);
        if (!children) {
          throw new FlotillaError("CONFIG_INVALID", `revision ${r.id} revises ${p}, which is not in the Alembic history`);
        }
        children.push(r.id);
      }
    }
    // Kahn's algorithm, oldest-first tie-break, so the order is deterministic.
    const listed = [...revisions].reverse().map((r) => r.id);
    const remaining = new Map(listed.map((id) => [id, (down.get(id) ?? []).length]));
    const order: string[] = [];
    const ready = listed.filter((id) => remaining.get(id) === 0);
    while (ready.length > 0) {
      const id = ready.shift()!;
      order.push(id);
      for (const c of up.get(id) ?? []) {
        const left = (remaining.get(c) ?? 0) - 1;
        remaining.set(c, left);
        if (left === 0) ready.push(c);
      }
    }
    if (order.length !== listed.length) {
      throw new FlotillaError("CONFIG_INVALID", "the Alembic revisions form a cycle");
    }
    const nodes = new Map<string, RevisionNode>();
    for (const id of order) {
      nodes.set(id, { id, down: down.get(id) ?? [], up: up.get(id) ?? [], message: messages.get(id) ?? "" });
    }
    return new RevisionGraph(nodes, order, options.hash ?? "");
  }

  /** Number of revisions. */
  get size(): number {
    return this.nodes.size;
  }

  /** All ids, as a set (for parsers that need to tell ids from words). */
  ids(): ReadonlySet<string> {
    return new Set(this.order);
  }

  has(id: string): boolean {
    return this.nodes.has(id);
  }

  get(id: string): RevisionNode | undefined {
    return this.nodes.get(id);
  }

  /** The ids among `ids` that the graph does not contain (e.g. a database stamped by a newer build). */
  unknown(ids: readonly string[]): string[] {
    return ids.filter((id) => !this.nodes.has(id));
  }

  /**
   * Resolves a full id or a unique prefix (at least 4 characters) to a full
   * id; null when nothing matches. Throws FlotillaError('INVALID_ARGUMENT')
   * when a prefix matches several revisions.
   */
  resolve(idOrPrefix: string): string | null {
    if (this.nodes.has(idOrPrefix)) return idOrPrefix;
    if (idOrPrefix.length < 4) return null;
    const matches = this.order.filter((id) => id.startsWith(idOrPrefix));
    if (matches.length > 1) {
      throw new FlotillaError("INVALID_ARGUMENT", `revision prefix '${idOrPrefix}' is ambiguous: ${matches.join(", ")}`);
    }
    return matches[0] ?? null;
  }

  /** The revision itself and everything below it. */
  ancestorsOrSelf(ids: readonly string[]): Set<string> {
    const seen = new Set<string>();
    const stack = [...ids];
    while (stack.length > 0) {
      const id = stack.pop()!;
      if (seen.has(id)) continue;
      const node = this.require(id);
      seen.add(id);
      stack.push(...node.down);
    }
    return seen;
  }

  /** Everything above the revision, not including it. */
  descendants(id: string): Set<string> {
    const seen = new Set<string>();
    const stack = [...this.require(id).up];
    while (stack.length > 0) {
      const c = stack.pop()!;
      if (seen.has(c)) continue;
      seen.add(c);
      stack.push(...this.nodes.get(c)!.up);
    }
    return seen;
  }

  /**
   * Revisions an upgrade from `current` (the rows of alembic_version; empty
   * for a fresh database) to `target` would apply, parents first. `target` is
   * an id, `head` (the single head) or `heads`. Empty when the target is
   * already applied (Alembic does nothing then either).
   */
  pending(current: readonly string[], target: string): string[] {
    const applied = this.ancestorsOrSelf(current);
    const wanted = this.ancestorsOrSelf(this.targetIds(target));
    return this.order.filter((id) => wanted.has(id) && !applied.has(id));
  }

  /**
   * Revisions a downgrade from `current` to `target` (an id or `base`) would
   * undo, children first: the applied revisions that are above the target.
   * Throws FlotillaError('INVALID_ARGUMENT') when the target is not applied
   * (a downgrade cannot reach it).
   */
  downgradePath(current: readonly string[], target: string): string[] {
    const applied = this.ancestorsOrSelf(current);
    let undo: Set<string>;
    if (target === "base") {
      undo = applied;
    } else {
      if (!applied.has(this.require(target).id)) {
        throw new FlotillaError("INVALID_ARGUMENT", `cannot downgrade to ${target}: it is not applied (current: ${current.join(", ") || "none"})`);
      }
      const above = this.descendants(target);
      undo = new Set([...applied].filter((id) => above.has(id)));
    }
    return this.order.filter((id) => undo.has(id)).reverse();
  }

  /** True when `ancestor` is `id` itself or below it. */
  isAncestor(ancestor: string, id: string): boolean {
    return this.ancestorsOrSelf([id]).has(this.require(ancestor).id);
  }

  /** `head`, `heads` or an id → the concrete ids. */
  targetIds(target: string): string[] {
    if (target === "heads") return [...this.heads];
    if (target === "head") {
      const heads = [...this.heads];
      if (heads.length > 1) {
        throw new FlotillaError("MULTIPLE_HEADS", `the scripts have ${heads.length} heads (${heads.join(", ")}); name a revision or use 'heads'`);
      }
      return heads;
    }
    return [this.require(target).id];
  }

  private require(id: string): RevisionNode {
    const node = this.nodes.get(id);
    if (!node) throw new FlotillaError("UNKNOWN_REVISION", `revision '${id}' is not in the Alembic scripts`);
    return node;
  }
}
