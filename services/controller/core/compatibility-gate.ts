/**
 * The compatibility gate: strategies that run old and new application code
 * side by side (job, blue-green) are allowed only when every pending revision
 * is additive — old code keeps working on the new schema — unless the
 * operator says --allow-breaking. Pure: facts (the agents' per-revision
 * classification) in, a verdict out.
 */
import { SIDE_BY_SIDE_STRATEGIES, STRATEGIES, type Strategy } from "../../common/rollout-request.js";

export type Compatibility = "additive" | "breaking" | "unknown";

/** One pending revision of one target, as the agent classified it. */
export interface RevisionClass {
  readonly id: string;
  readonly compatibility: Compatibility;
  readonly reason: string;
}

/** The part of an agent's PlanResponse the gate reads. */
export interface PlanFacts {
  readonly pending: readonly { readonly id: string }[];
  readonly additiveOnly: boolean;
  readonly revisions: readonly { readonly id: string; readonly compatibility: string; readonly compatibilityReason: string }[];
}

/**
 * Per-revision classes from a plan. An agent that does not classify revisions
 * one by one (empty `revisions` or empty `compatibility`) is read through its
 * whole-plan `additiveOnly` verdict; anything else unclassified is "unknown".
 */
export function classesFromPlan(plan: PlanFacts): RevisionClass[] {
  if (plan.revisions.length > 0) {
    return plan.revisions.map((r) => {
      const c: Compatibility =
        r.compatibility === "additive" || r.compatibility === "breaking"
          ? r.compatibility
          : r.compatibility === "" && plan.additiveOnly
            ? "additive"
            : "unknown";
      return { id: r.id, compatibility: c, reason: r.compatibilityReason || (c === "unknown" ? "the agent did not classify this revision" : "") };
    });
  }
  return plan.pending.map((p) => ({
    id: p.id,
    compatibility: plan.additiveOnly ? "additive" : "unknown",
    reason: plan.additiveOnly ? "" : "the agent reports the pending revisions as not purely additive",
  }));
}

/** The strategies a set of pending revisions allows (without --allow-breaking). */
export function strategiesAllowed(revisions: readonly RevisionClass[]): Strategy[] {
  if (revisions.every((r) => r.compatibility === "additive")) return [...STRATEGIES];
  return STRATEGIES.filter((s) => !SIDE_BY_SIDE_STRATEGIES.includes(s));
}

export type GateVerdict =
  | { readonly ok: true /** Revisions let through by --allow-breaking (audited by the caller). */; readonly overridden: readonly RevisionClass[] }
  | { readonly ok: false; readonly message: string; readonly offending: ReadonlyMap<string, readonly RevisionClass[]> };

/** Decides whether `strategy` may run over every target's pending revisions. */
export function checkCompatibility(strategy: Strategy, byTarget: ReadonlyMap<string, readonly RevisionClass[]>, allowBreaking: boolean): GateVerdict {
  if (!SIDE_BY_SIDE_STRATEGIES.includes(strategy)) return { ok: true, overridden: [] };
  const offending = new Map<string, RevisionClass[]>();
  for (const [target, revisions] of byTarget) {
    const bad = revisions.filter((r) => r.compatibility !== "additive");
    if (bad.length > 0) offending.set(target, bad);
  }
  if (offending.size === 0) return { ok: true, overridden: [] };
  const all = [...offending.values()].flat();
  const unique = [...new Map(all.map((r) => [r.id, r])).values()];
  if (allowBreaking) return { ok: true, overridden: unique };
  const groups = new Map<string, string[]>();
  for (const r of unique) {
    const key = `${r.compatibility}${r.reason ? ` (${r.reason})` : ""}`;
    groups.set(key, [...(groups.get(key) ?? []), r.id]);
  }
  const list = [...groups].map(([why, ids]) => `${ids.join(", ")} ${ids.length === 1 ? "is" : "are"} ${why}`).join("; ");
  return {
    ok: false,
    offending,
    message:
      `strategy ${strategy} runs old and new application code side by side, but not every pending revision is additive: ${list}. ` +
      `Nothing was started. Use --strategy maintenance (stops the app while migrating), or, if you know old code copes, repeat with --allow-breaking (audited)`,
  };
}
