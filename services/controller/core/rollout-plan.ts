/**
 * Pure rollout planning: selectors, waves and the steps each strategy takes
 * per target. No I/O; the engine executes what this produces.
 */
import { FlotillaError } from "../../common/errors.js";
import { waveSizes } from "../../common/rollout-request.js";
import type { RolloutTargetDoc, StepDoc, Strategy } from "./ports.js";
import type { StepName } from "./rollout-sequencer.js";

export interface InventoryTarget {
  readonly id: string;
  /** The agent whose config holds the target (runs backups and migrations). */
  readonly ownerAgent: string;
  /** Agents that host app instances of the target (may include the owner). */
  readonly appAgents: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  readonly blueGreen: boolean;
  /** Agents that host green app instances (blue-green). */
  readonly greenAgents?: readonly string[];
}

/** Wave sizes for `total` targets (the grammar and its checks live in services/common/rollout-request.ts). */
export { waveSizes, matchesSelector, selectorPairs } from "../../common/rollout-request.js";

function step(name: StepName, agentId: string, detail = ""): StepDoc {
  return { name, state: "pending", agentId, operationId: "", detail };
}

/**
 * Whether a target with nothing pending is simply up to date under this
 * strategy (no step runs). Blue-green still has work: green is cloned from
 * blue, started and switched to, even when blue is at the wanted revision.
 */
export function upToDateWhenNothingPending(strategy: Strategy): boolean {
  return strategy !== "blue-green";
}

/** The ordered steps one target takes under a strategy. */
export function stepsFor(strategy: Strategy, t: InventoryTarget, toRevision: string): StepDoc[] {
  const owner = t.ownerAgent;
  const appAgents = [...t.appAgents].sort();
  const steps: StepDoc[] = [step("precheck", owner, "revision known, single head, no interrupted operation")];
  switch (strategy) {
    case "maintenance":
      for (const a of appAgents) steps.push(step("stop", a, "stop every app instance of the target on this host"));
      steps.push(
        step("backup", owner, "backup + verify"),
        step("migrate", owner, `upgrade to ${toRevision}, one revision at a time`),
        step("verify", owner, "revision at target, integrity ok"),
      );
      for (const a of appAgents) steps.push(step("start", a));
      for (const a of appAgents) steps.push(step("health", a));
      break;
    case "job":
      steps.push(step("backup", owner, "backup + verify"), step("migrate", owner, `upgrade to ${toRevision} while instances run`), step("verify", owner));
      for (const a of appAgents) steps.push(step("restart", a, "rolling restart: stop + start, one host at a time"));
      for (const a of appAgents) steps.push(step("health", a));
      break;
    case "blue-green":
      if (!t.blueGreen)
        throw new FlotillaError(
          "INVALID_ARGUMENT",
          `target ${t.id} has no blueGreen section in its agent's config: blue-green needs a green database and a switch hook`,
        );
      steps.push(
        step("clone", owner, "consistent copy of blue to green"),
        step("migrate-green", owner, `upgrade green to ${toRevision} (backup of green first)`),
        step("verify", owner, "green at target"),
      );
      {
        const green = t.greenAgents && t.greenAgents.length > 0 ? [...t.greenAgents].sort() : appAgents;
        for (const a of green) steps.push(step("start-green", a));
        for (const a of green) steps.push(step("health-green", a));
      }
      steps.push(step("switch", owner, "run the switch hook with green; blue is kept for rollback"));
      break;
  }
  return steps;
}

/** Targets in stable order, assigned to waves, with their steps. */
export function planTargets(strategy: Strategy, targets: readonly InventoryTarget[], waves: string, toRevision: string): RolloutTargetDoc[] {
  const sorted = [...targets].sort((a, b) => a.id.localeCompare(b.id));
  const sizes = waveSizes(waves, sorted.length);
  const out: RolloutTargetDoc[] = [];
  let i = 0;
  sizes.forEach((size, wave) => {
    for (let k = 0; k < size; k++) {
      const t = sorted[i++]!;
      out.push({
        targetId: t.id,
        agentId: t.ownerAgent,
        wave,
        status: "pending",
        steps: stepsFor(strategy, t, toRevision),
        revisionBefore: [],
        revisionAfter: [],
        backupId: "",
        message: "",
      });
    }
  });
  return out;
}

/** One agent's answer to Plan for one target of a rollout about to start. */
export type PreflightAnswer =
  | { readonly targetId: string; readonly ok: true; readonly pending: number }
  | { readonly targetId: string; readonly ok: false; readonly code: string; readonly message: string };

/** Codes of a Plan refusal that the request itself caused: the whole rollout is refused. */
const REQUEST_REFUSALS = new Set(["INVALID_ARGUMENT", "MULTIPLE_HEADS", "UNKNOWN_REVISION"]);

/**
 * Whether a rollout may start, from every target's Plan answer (the agents
 * apply their safety policy there): a wanted revision that is unknown, behind,
 * on another branch or ambiguous for any target refuses the whole rollout
 * before any app is stopped. An agent that cannot answer is not a refusal
 * here (the rollout's own precheck reports it). Also names the targets that
 * are already at the wanted revision.
 */
export function preflightVerdict(answers: readonly PreflightAnswer[]): { refusal: { code: string; message: string } | null; upToDate: string[] } {
  const refused = answers.filter((a): a is Extract<PreflightAnswer, { ok: false }> => !a.ok && REQUEST_REFUSALS.has(a.code));
  const upToDate = answers.filter((a) => a.ok && a.pending === 0).map((a) => a.targetId);
  if (refused.length === 0) return { refusal: null, upToDate };
  const codes = new Set(refused.map((a) => a.code));
  const code = codes.size === 1 ? refused[0]!.code : "INVALID_ARGUMENT";
  const shown = refused
    .slice(0, 5)
    .map((a) => `${a.targetId}: ${a.message}`)
    .join("; ");
  const more = refused.length > 5 ? ` (and ${refused.length - 5} more)` : "";
  return { refusal: { code, message: `refused before anything was stopped or changed: ${shown}${more}` }, upToDate };
}
